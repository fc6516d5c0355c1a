from detectron2.data import DatasetMapper

from .images import ImageReadError

__all__ = ["CheckedDatasetMapper"]


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
