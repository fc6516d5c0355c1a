"""
Training and evaluation of every registered project's models with Detectron2's training loop,
on one process, several processes (`--num-gpus`, on GPUs or CPUs) or several machines.
"""

import os
from unittest import mock

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.engine import defaults as detectron2_defaults
from detectron2.utils import comm

from .atomic_io import atomic_write_json
from .config import get_project_cfg
from .data import CheckedDatasetMapper, check_dataset_files, prepare_dataset
from .evaluation import build_evaluator

__all__ = ["Trainer", "launch_from_command_line", "main", "prepare_datasets", "setup"]

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
    Detectron2's DefaultTrainer with the evaluator the test set's metadata asks for, data
    mappers whose read errors name the image, every evaluation written to
    OUTPUT_DIR/evaluation_results.json, and DistributedDataParallel on CPUs too.
    """

    def __init__(self, cfg):
        with mock.patch.object(
            detectron2_defaults, "create_ddp_model", _create_ddp_model_on_any_device
        ):
            super().__init__(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_evaluator(cfg, dataset_name, output_folder)

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


def setup(args):
    """The frozen config of `args` (Detectron2's argument parser), logging set up."""
    cfg = get_project_cfg(args.config_file, args.opts)
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


def main(args):
    """Train, or evaluate with `--eval-only`; returns the last evaluation's results."""
    cfg = setup(args)
    if cfg.MODEL.DEVICE == "cpu" and comm.get_local_size() > 1:
        # Each process would take every core: share them instead of oversubscribing.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
    prepare_datasets([*cfg.DATASETS.TEST, *([] if args.eval_only else cfg.DATASETS.TRAIN)])

    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return Trainer.test(cfg, model)

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    # The evaluation after the last iteration, which DefaultTrainer.train keeps but returns only
    # when TEST.EXPECTED_RESULTS is set.
    return getattr(trainer, "_last_eval_results", None)


def launch_from_command_line(argv=None) -> None:
    """Parse Detectron2's training arguments and run :func:`main` on every process."""
    args = default_argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
