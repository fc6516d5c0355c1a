"""
Training and evaluation of every registered project's models with Detectron2's training loop,
on one process, several processes (`--num-gpus`, on GPUs or CPUs) or several machines.

Weights are loaded by these rules:

* A file that is not a checkpoint is refused, naming it; so is a checkpoint that provides none of
  the model's parameters (with their shapes): it is surely another model's, and the run would
  silently go on with random weights. MODEL.WEIGHTS "" trains from scratch on purpose.
* `--eval-only` evaluates the weights of MODEL.WEIGHTS (or, with `--resume`, the run's last
  checkpoint) only if they are a checkpoint of exactly this model: every parameter and buffer
  present with its shape, nothing unknown. `--allow-partial-weights` loads what matches instead.
* Training from MODEL.WEIGHTS loads what matches and logs the rest, as Detectron2 does: a
  backbone pretraining, or a checkpoint with another number of classes, is a normal start for
  fine-tuning.
* `--resume` continues from the run's last checkpoint (OUTPUT_DIR/last_checkpoint) as Detectron2
  does; without one it starts from MODEL.WEIGHTS as above.

After training, a config with SEGTOOLS.COUNT_CALIBRATION.DATASET calibrates the final weights'
score threshold for counting on that dataset (segtools.calibration).

Every user mistake (config value, device, dataset, weights) stops the tool with one line; with
several processes it is checked in the launching process, before the workers are started.
"""

import argparse
import functools
import os
from unittest import mock

import torch
from detectron2.config import CfgNode
from detectron2.data import (
    DatasetCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import (
    DefaultTrainer,
    default_argument_parser,
    default_setup,
    hooks,
    launch,
)
from detectron2.engine import defaults as detectron2_defaults
from detectron2.modeling import build_model
from detectron2.utils import comm

from .atomic_io import atomic_write_json
from .calibration import calibrate_count
from .checkpoint import CheckedCheckpointer
from .cli import UsageError, run_tool
from .config import check_device, get_project_cfg
from .data import CheckedDatasetMapper, check_dataset_files, prepare_dataset
from .evaluation import build_evaluator
from .projects import inference_keys
from .solver import build_optimizer
from .weight_average import WeightAverageHook

__all__ = [
    "Trainer",
    "argument_parser",
    "check_before_launch",
    "launch_from_command_line",
    "main",
    "prepare_datasets",
    "setup",
]

_create_ddp_model = detectron2_defaults.create_ddp_model


def _create_ddp_model_on_any_device(model, **kwargs):
    """
    Detectron2's `create_ddp_model`, but without pinning a GPU for a model on the CPU:
    DistributedDataParallel takes `device_ids` only for GPU modules, and Detectron2 always
    passes the local rank.
    """
    if next(model.parameters()).device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return _create_ddp_model(model, **kwargs)


class Trainer(DefaultTrainer):
    """
    Detectron2's DefaultTrainer with the evaluator the test set's metadata asks for, the
    optimizer SEGTOOLS.SOLVER.OPTIMIZER names, data
    mappers whose read errors name the image, every evaluation written to
    OUTPUT_DIR/evaluation_results.json, DistributedDataParallel on CPUs too, the initial
    weights checked as the module docstring says, and with SEGTOOLS.SOLVER.EMA_DECAY the average
    of the weights in checkpoints and evaluations (segtools.weight_average).
    """

    def __init__(self, cfg):
        with (
            mock.patch.object(
                detectron2_defaults, "create_ddp_model", _create_ddp_model_on_any_device
            ),
            mock.patch.object(
                detectron2_defaults,
                "DetectionCheckpointer",
                functools.partial(CheckedCheckpointer, allow_partial=True),
            ),
        ):
            super().__init__(cfg)

    def build_hooks(self):
        hook_list = super().build_hooks()
        decay = self.cfg.SEGTOOLS.SOLVER.EMA_DECAY
        if decay == 0:
            return hook_list
        average = WeightAverageHook(
            decay, self.cfg.SOLVER.CHECKPOINT_PERIOD, self.cfg.TEST.EVAL_PERIOD
        )
        self.checkpointer.add_checkpointable("weight_average", average)
        # The average is in the model from before the checkpointer to after the evaluation.
        seeing = [
            i
            for i, hook in enumerate(hook_list)
            if isinstance(hook, (hooks.PeriodicCheckpointer, hooks.EvalHook))
        ]
        hook_list.insert(seeing[-1] + 1, average.restorer)
        hook_list.insert(seeing[0], average)
        return hook_list

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=CheckedDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        mapper = CheckedDatasetMapper(cfg, is_train=False)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process():
            path = os.path.join(cfg.OUTPUT_DIR, "evaluation_results.json")
            atomic_write_json(path, results, indent=2)
        return results


def argument_parser() -> argparse.ArgumentParser:
    """Detectron2's `default_argument_parser`, and `--allow-partial-weights`."""
    parser = default_argument_parser()
    parser.add_argument(
        "--allow-partial-weights",
        action="store_true",
        help="with --eval-only: evaluate with the weights that match the model, the others as "
        "initialised, instead of refusing a checkpoint whose parameters do not all match (one "
        "of which none match is refused still; training always starts from what matches). "
        "Flags go before the KEY VALUE config overrides.",
    )
    return parser


def _checked_cfg(args) -> CfgNode:
    """The config of `args`, its overrides, values and MODEL.DEVICE checked."""
    # The overrides take the rest of the command line: a flag there would reach yacs as a key.
    flags = [opt for opt in args.opts if opt.startswith("--")]
    if flags:
        raise UsageError(f"{flags[0]} follows the KEY VALUE config overrides: give flags first")
    cfg = get_project_cfg(args.config_file, args.opts)
    check_device(cfg)
    return cfg


def _dataset_names(cfg: CfgNode, eval_only: bool) -> list:
    """
    The datasets a run reads: DATASETS.TEST, and unless `eval_only` DATASETS.TRAIN and the
    count calibration's dataset.
    """
    keys = {"DATASETS.TEST": cfg.DATASETS.TEST}
    if not eval_only:
        keys["DATASETS.TRAIN"] = cfg.DATASETS.TRAIN
        calibration = cfg.SEGTOOLS.COUNT_CALIBRATION.DATASET
        keys["SEGTOOLS.COUNT_CALIBRATION.DATASET"] = [calibration] if calibration else []
        if calibration:
            try:
                inference_keys(cfg.MODEL.META_ARCHITECTURE)
            except KeyError as e:
                raise UsageError(f"SEGTOOLS.COUNT_CALIBRATION.DATASET: {e.args[0]}") from None
    names = []
    for key, datasets in keys.items():
        for name in datasets:
            if name not in DatasetCatalog:
                raise UsageError(
                    f"{key}: {name!r} is not a registered dataset (see datasets/README.md)"
                )
            names.append(name)
    return names


def _calibrate_final_weights(cfg: CfgNode, model) -> None:
    """Count-calibrate OUTPUT_DIR/model_final.pth, the weights of `model` after training."""
    weights = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    # Only the main process writes checkpoints: every process follows what it finds.
    if not comm.all_gather(os.path.isfile(weights))[0]:
        raise FileNotFoundError(f"{weights}: no final checkpoint to calibrate (SOLVER.MAX_ITER 0?)")
    state = getattr(model, "module", model).state_dict()
    calibration = cfg.SEGTOOLS.COUNT_CALIBRATION
    calibrate_count(cfg, state, weights, calibration.DATASET, calibration.SIZE_BINS)


def setup(args):
    """The frozen config of `args` (:func:`argument_parser`), checked; logging set up."""
    cfg = _checked_cfg(args)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def prepare_datasets(dataset_names) -> None:
    """
    Make every dataset ready before any process reads it: check that the files are where the
    layout puts them (the error names the missing paths, before anything is generated), then the
    first process of each machine generates what is generated on first use while the others
    wait.
    """
    for name in dataset_names:
        check_dataset_files(name)
    if comm.get_local_rank() == 0:
        for name in dataset_names:
            prepare_dataset(name)
    comm.synchronize()


def _load_run_weights(model, cfg: CfgNode, args) -> None:
    """
    Load into `model` the weights a run starts from (with `--resume` the run's last checkpoint,
    if there is one, else MODEL.WEIGHTS) by the rules of the module docstring.
    """
    allow_partial = not args.eval_only or args.allow_partial_weights
    checkpointer = CheckedCheckpointer(model, cfg.OUTPUT_DIR, allow_partial=allow_partial)
    resuming = args.resume and checkpointer.has_checkpoint()
    if args.eval_only and not resuming and not cfg.MODEL.WEIGHTS:
        raise UsageError(
            "--eval-only needs trained weights: MODEL.WEIGHTS is empty (give MODEL.WEIGHTS "
            "path/to/model_final.pth)"
        )
    checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)


def check_before_launch(args) -> None:
    """
    Check in the launching process what every worker process would otherwise stop at, each
    with its own traceback: the config, MODEL.DEVICE, the datasets' files, and the weights
    (loaded into the model built on the CPU).
    """
    cfg = _checked_cfg(args)
    for name in _dataset_names(cfg, args.eval_only):
        check_dataset_files(name)
    cfg.MODEL.DEVICE = "cpu"
    _load_run_weights(build_model(cfg), cfg, args)


def main(args):
    """
    Train, or evaluate with `--eval-only`; returns the last evaluation's results.

    Args:
        args: from :func:`argument_parser` (Detectron2's `default_argument_parser` suffices
            for training).
    """
    cfg = setup(args)
    if cfg.MODEL.DEVICE == "cpu" and comm.get_local_size() > 1:
        # Each process would take every core: share them instead of oversubscribing.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
    prepare_datasets(_dataset_names(cfg, args.eval_only))

    if args.eval_only:
        model = Trainer.build_model(cfg)
        _load_run_weights(model, cfg, args)
        return Trainer.test(cfg, model)

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    if cfg.SEGTOOLS.COUNT_CALIBRATION.DATASET:
        _calibrate_final_weights(cfg, trainer.model)
    # The evaluation after the last iteration, which DefaultTrainer.train keeps but returns only
    # when TEST.EXPECTED_RESULTS is set.
    return getattr(trainer, "_last_eval_results", None)


def _launch(argv) -> None:
    args = argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    if args.num_gpus * args.num_machines > 1:
        check_before_launch(args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


def launch_from_command_line(argv=None) -> int:
    """
    Parse the training arguments (:func:`argument_parser`) and run :func:`main` on every
    process.

    Returns:
        The exit code: 0, 2 after a user's mistake (printed in one line), 128 + the signal
        number after SIGINT or SIGTERM (see :func:`segtools.cli.run_tool`).
    """
    return run_tool(_launch, argv)
