from detectron2.data import DatasetMapper

__all__ = ["ImageReadError", "CheckedDatasetMapper"]


class ImageReadError(OSError):
    """An image of a dataset is missing, unreadable or truncated."""


class CheckedDatasetMapper(DatasetMapper):
    """
    Detectron2's :class:`DatasetMapper` whose image-reading errors name the file (PIL's message
    for a truncated image does not).
    """

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except OSError as e:
            raise ImageReadError(f"Cannot read image {dataset_dict['file_name']}: {e}") from e
