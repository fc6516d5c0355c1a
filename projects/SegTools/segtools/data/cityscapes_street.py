"""Cityscapes fine instances restricted to the five street classes of the street-scene paper."""

import inspect

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import cityscapes as d2_cityscapes

from .layout import check_dataset_files

__all__ = ["STREET5_CLASSES", "ensure_cityscapes_supported", "load_cityscapes_street_instances"]

# Paper order (Liu & Kong 2024, Table 3): car, pedestrian (Cityscapes "person"), truck, bus, rider.
STREET5_CLASSES = ("car", "person", "truck", "bus", "rider")

# Detectron2 commit 4823082a (2024-12-19) made its Cityscapes loader and evaluators import a
# Meta-internal copy of cityscapesscripts; c69939aa is the last commit without it.
_INTERNAL_MODULE = "deeplearning.projects.cityscapesApi"
SUPPORTED_DETECTRON2_COMMIT = "c69939aa"


def ensure_cityscapes_supported() -> None:
    """Fail early, with the fix, if the installed Detectron2 imports the Meta-internal module."""
    if _INTERNAL_MODULE in inspect.getsource(d2_cityscapes):
        raise ImportError(
            f"The installed detectron2 ({d2_cityscapes.__file__}) imports '{_INTERNAL_MODULE}', "
            "a Meta-internal module that is not public, in its Cityscapes loader and evaluators "
            "(changed in commit 4823082a). Install detectron2 at commit "
            f"{SUPPORTED_DETECTRON2_COMMIT} or earlier, as README.md ('Install') shows."
        )


def load_cityscapes_street_instances(full_dataset_name: str) -> list:
    """
    Load a builtin Cityscapes instance split and keep only the five street classes.

    Args:
        full_dataset_name: e.g. "cityscapes_fine_instance_seg_val" (Detectron2's 8 classes).

    Returns:
        Detectron2 dataset dicts whose "category_id" indexes :data:`STREET5_CLASSES`; instances
        of the other classes (train, motorcycle, bicycle) are dropped, images are all kept.
    """
    ensure_cityscapes_supported()
    check_dataset_files(full_dataset_name)
    full_classes = MetadataCatalog.get(full_dataset_name).thing_classes
    to_street = {full_classes.index(name): i for i, name in enumerate(STREET5_CLASSES)}
    dataset_dicts = DatasetCatalog.get(full_dataset_name)
    for record in dataset_dicts:
        record["annotations"] = [
            {**anno, "category_id": to_street[anno["category_id"]]}
            for anno in record["annotations"]
            if anno["category_id"] in to_street
        ]
    return dataset_dicts
