"""Where datasets live on disk, and a clear error when they are not there."""

import os

from detectron2.data import MetadataCatalog

__all__ = ["DATASETS_ENV", "datasets_root", "check_dataset_files", "DatasetLayoutError"]

# Detectron2's own builtin datasets are read from the same variable, so one root serves all.
DATASETS_ENV = "DETECTRON2_DATASETS"

# Metadata keys that hold paths a dataset needs, as set by Detectron2's and our registrations.
_PATH_KEYS = ("json_file", "image_root", "image_dir", "gt_dir")

# Section of datasets/README.md that documents each dataset family (longest prefix wins).
_README_SECTIONS = {
    "coco_": "COCO",
    "lvis_": "LVIS",
    "cityscapes_": "Cityscapes",
    "ore_synthetic_": "Synthetic ore",
    "ore_": "Ore (tiled)",
}


class DatasetLayoutError(FileNotFoundError):
    """A registered dataset's files are not where the layout in datasets/README.md puts them."""


def datasets_root() -> str:
    """The datasets root: $DETECTRON2_DATASETS, or ./datasets as in Detectron2."""
    return os.path.expanduser(os.getenv(DATASETS_ENV, "datasets"))


def _readme_section(dataset_name: str) -> str:
    prefixes = sorted((p for p in _README_SECTIONS if dataset_name.startswith(p)), key=len)
    return _README_SECTIONS[prefixes[-1]] if prefixes else "Custom datasets"


def check_dataset_files(dataset_name: str) -> None:
    """
    Raise :class:`DatasetLayoutError` if a path recorded in the dataset's metadata is missing.

    The message names the environment variable, the root it points to, each expected path
    (relative to the root, as laid out in datasets/README.md) and whether it was found.
    Datasets whose metadata records no paths (registered in code), and datasets generated on
    first use (metadata `generated_on_first_use`), pass unchecked.
    """
    metadata = MetadataCatalog.get(dataset_name)
    if getattr(metadata, "generated_on_first_use", False):
        return
    paths = [getattr(metadata, key) for key in _PATH_KEYS if hasattr(metadata, key)]
    missing = [p for p in paths if not os.path.exists(p)]
    if not missing:
        return
    root = os.path.abspath(datasets_root())
    lines = []
    for path in paths:
        shown = os.path.relpath(os.path.abspath(path), root)
        shown = path if shown.startswith("..") else shown
        lines.append(f"  {shown}  ({'MISSING' if path in missing else 'found'})")
    raise DatasetLayoutError(
        f"Dataset '{dataset_name}' is not where it is expected. Datasets are read from "
        f"${DATASETS_ENV} (now {root!r}); this one needs:\n"
        + "\n".join(lines)
        + f"\nSee datasets/README.md, section '{_readme_section(dataset_name)}', for the layout "
        f"and how to prepare it, or set {DATASETS_ENV} to the folder that holds it."
    )
