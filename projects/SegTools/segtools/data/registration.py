"""
Registration of the datasets this repository adds to Detectron2's catalog.

COCO 2017, LVIS v1 and Cityscapes keep Detectron2's own builtin registrations (same names, same
``$DETECTRON2_DATASETS`` root); this module only adds:

* ``ore_train`` / ``ore_val``: tiles of large ore photos (``datasets/prepare_ore_tiles.py``);
* ``ore_synthetic_train`` / ``ore_synthetic_val`` / ``ore_synthetic_test``: the synthetic ore set,
  generated on first use; choices (schedules, thresholds, PSD settings) are made on val, and test
  is held out for the reported numbers;
* ``cityscapes_street5_train`` / ``cityscapes_street5_val``: Cityscapes fine instances restricted to
  the five street classes of the street-scene SOLOv2 paper.
"""

import os
from dataclasses import dataclass

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .cityscapes_street import STREET5_CLASSES, load_cityscapes_street_instances
from .layout import check_dataset_files, datasets_root
from .synthetic_ore import ensure_synthetic_ore

__all__ = [
    "ORE_CLASSES",
    "ORE_SPLITS",
    "SYNTHETIC_ORE_SPLITS",
    "SyntheticOreSpec",
    "prepare_dataset",
    "register_all",
]

ORE_CLASSES = ["ore"]

# Per-particle keys that ore annotations may carry besides the COCO ones.
ORE_EXTRA_KEYS = ["true_diameter_px", "visible_fraction", "touches_border", "source_id"]

# Every split stores `images/` and `annotations.json` in its own folder under the root.
ORE_SPLITS = {"ore_train": "ore/train", "ore_val": "ore/val"}


@dataclass(frozen=True)
class SyntheticOreSpec:
    """What `make_synthetic_ore.py` is asked to produce for a registered split."""

    folder: str
    num_images: int
    seed: int
    size: tuple  # (width, height)


SYNTHETIC_ORE_SPLITS = {
    "ore_synthetic_train": SyntheticOreSpec("ore_synthetic/train", 256, seed=0, size=(320, 320)),
    "ore_synthetic_val": SyntheticOreSpec("ore_synthetic/val", 64, seed=1, size=(320, 320)),
    "ore_synthetic_test": SyntheticOreSpec("ore_synthetic/test", 64, seed=2, size=(320, 320)),
}

_CITYSCAPES_STREET_SPLITS = {
    "cityscapes_street5_train": "cityscapes_fine_instance_seg_train",
    "cityscapes_street5_val": "cityscapes_fine_instance_seg_val",
}


def _load_ore(dataset_name: str):
    check_dataset_files(dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    return load_coco_json(meta.json_file, meta.image_root, dataset_name, ORE_EXTRA_KEYS)


def prepare_dataset(dataset_name: str) -> None:
    """
    Generate a dataset that is generated on first use (synthetic ore) if its folder is missing
    or holds a set of another generator version; other datasets are left as they are.
    """
    spec = SYNTHETIC_ORE_SPLITS.get(dataset_name)
    if spec is not None:
        folder = os.path.dirname(MetadataCatalog.get(dataset_name).json_file)
        ensure_synthetic_ore(folder, spec.num_images, spec.seed, spec.size)


def _load_synthetic_ore(dataset_name: str):
    prepare_dataset(dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    return load_coco_json(meta.json_file, meta.image_root, dataset_name, ORE_EXTRA_KEYS)


def _ore_metadata(root: str, folder: str) -> dict:
    return {
        "json_file": os.path.join(root, folder, "annotations.json"),
        "image_root": os.path.join(root, folder, "images"),
        "thing_classes": list(ORE_CLASSES),
        "evaluator_type": "coco",
    }


def register_all(root: str) -> None:
    """Register every dataset this repository adds, with files under `root`."""
    for name, folder in ORE_SPLITS.items():
        DatasetCatalog.register(name, lambda name=name: _load_ore(name))
        MetadataCatalog.get(name).set(**_ore_metadata(root, folder))

    for name, spec in SYNTHETIC_ORE_SPLITS.items():
        DatasetCatalog.register(name, lambda name=name: _load_synthetic_ore(name))
        MetadataCatalog.get(name).set(
            **_ore_metadata(root, spec.folder), generated_on_first_use=True
        )

    for name, full_name in _CITYSCAPES_STREET_SPLITS.items():
        full_meta = MetadataCatalog.get(full_name)
        DatasetCatalog.register(
            name, lambda full_name=full_name: load_cityscapes_street_instances(full_name)
        )
        MetadataCatalog.get(name).set(
            thing_classes=list(STREET5_CLASSES),
            image_dir=full_meta.image_dir,
            gt_dir=full_meta.gt_dir,
            evaluator_type="cityscapes_instance_subset",
        )


register_all(datasets_root())
