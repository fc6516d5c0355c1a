from . import registration as _  # noqa: F401  (registers the datasets)
from .coco_input import CocoFormatError
from .images import ImageReadError, read_image
from .layout import DATASETS_ENV, DatasetLayoutError, check_dataset_files, datasets_root
from .mapper import CheckedDatasetMapper
from .registration import ORE_CLASSES, ORE_SPLITS, SYNTHETIC_ORE_SPLITS, prepare_dataset

__all__ = [
    "CheckedDatasetMapper",
    "CocoFormatError",
    "ImageReadError",
    "DATASETS_ENV",
    "DatasetLayoutError",
    "ORE_CLASSES",
    "ORE_SPLITS",
    "SYNTHETIC_ORE_SPLITS",
    "check_dataset_files",
    "datasets_root",
    "prepare_dataset",
    "read_image",
]
