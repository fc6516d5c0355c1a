"""Shared by the tests: the repository root, LosNet configs and batches, the scripts as modules."""

import importlib.util
import os
from pathlib import Path

import torch
from detectron2.config import get_cfg
from detectron2.data.datasets import register_coco_instances
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Instances

from losnet import add_losnet_config
from segtools.data.synthetic_ore import generate_synthetic_ore

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = str(REPO_ROOT / "configs/LosNet/Base-LosNet.yaml")


def losnet_cfg(*opts, config_file=BASE_CONFIG):
    cfg = get_cfg()
    add_losnet_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def build_losnet(*opts, config_file=BASE_CONFIG, seed=0):
    torch.manual_seed(seed)
    return build_model(losnet_cfg(*opts, config_file=config_file))


def rectangle_instances(height, width, boxes):
    """Instances whose masks are the given (x0, y0, x1, y1) rectangles, class 0."""
    masks = torch.zeros((len(boxes), height, width), dtype=torch.bool)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes, strict=True):
        mask[y0:y1, x0:x1] = True
    instances = Instances((height, width))
    instances.gt_masks = BitMasks(masks)
    instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
    instances.gt_classes = torch.zeros(len(boxes), dtype=torch.long)
    return instances


def training_batch():
    """Two images: one with three objects (one thinner than a pixel-wide box), one empty."""
    generator = torch.Generator().manual_seed(0)
    return [
        {
            "image": torch.rand(3, 96, 128, generator=generator) * 255,
            "instances": rectangle_instances(
                96, 128, [(10, 8, 50, 40), (60, 30, 120, 90), (5, 70, 6, 71)]
            ),
        },
        {
            "image": torch.rand(3, 64, 80, generator=generator) * 255,
            "instances": rectangle_instances(64, 80, []),
        },
    ]


def load_script(name: str):
    """Import scripts/<name>.py as a module, to call its main() in the test process."""
    path = REPO_ROOT / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_random_losnet(path, *opts, seed=0):
    """Write the weights of an untrained LosNet (Base config + `opts`) as a checkpoint file."""
    model = build_losnet(*opts, seed=seed)
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def register_four_synthetic_images(folder, name):
    """
    Register synthetic ore images 0-3 of seed 0 (64 x 64 px: sparse, medium and dense belts under
    three lightings, 30 particles of 9-16 px, partly hidden ones showing as little as 20 px),
    written to `folder`, as the COCO dataset `name`: the overfitting tests' set.
    """
    json_file = generate_synthetic_ore(folder, 4, seed=0, size=(64, 64), show_progress=False)
    register_coco_instances(name, {}, json_file, os.path.join(str(folder), "images"))
