#!/usr/bin/env python3
"""
Train and evaluate every model of this repository with Detectron2's training loop.

    python train_net.py --config-file configs/LosNet/losnet_MV3S_ore_synthetic.yaml
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file CONFIG --num-gpus 8 [--resume] [KEY VALUE ...]

The evaluator follows the test dataset's metadata (COCO, LVIS or Cityscapes); every evaluation
also writes its results to OUTPUT_DIR/evaluation_results.json.
"""

import os

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.utils import comm

from losnet import add_losnet_config
from segtools.atomic_io import atomic_write_json
from segtools.data import CheckedDatasetMapper, check_dataset_files
from segtools.evaluation import build_evaluator

# The config keys of every project; a new project adds its add_*_config here.
PROJECT_CONFIGS = (add_losnet_config,)


class Trainer(DefaultTrainer):
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


def get_project_cfg(config_file: str, opts=()):
    """A config with every project's keys, merged from `config_file` and KEY VALUE `opts`."""
    cfg = get_cfg()
    for add_project_config in PROJECT_CONFIGS:
        add_project_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


def setup(args):
    cfg = get_project_cfg(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    # Name a missing dataset now, with its expected layout, rather than deep in a data loader.
    for dataset_name in (*cfg.DATASETS.TEST, *([] if args.eval_only else cfg.DATASETS.TRAIN)):
        check_dataset_files(dataset_name)

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


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()  # pragma: no cover
