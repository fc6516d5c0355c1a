"""Small helpers to build COCO-format instance annotations from binary masks."""

import numpy as np
import pycocotools.mask as mask_util

__all__ = ["encode_mask", "decode_segmentation", "annotation_from_mask"]


def encode_mask(mask: np.ndarray) -> dict:
    """
    Args:
        mask: (H, W) boolean or {0, 1} array.

    Returns:
        A compressed COCO RLE dict whose "counts" is a str, so it can be written to JSON.
    """
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """
    Rasterise a COCO "segmentation" (polygon list, uncompressed or compressed RLE).

    Returns:
        (height, width) boolean mask.
    """
    if isinstance(segmentation, list):
        if not segmentation:
            return np.zeros((height, width), dtype=bool)
        rle = mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_util.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    return mask_util.decode(rle).astype(bool)


def annotation_from_mask(mask: np.ndarray, category_id: int = 1, **extra) -> dict:
    """
    A COCO annotation (without "id" and "image_id") whose box and area are exact for `mask`.

    Args:
        mask: (H, W) boolean array with at least one True pixel.
        extra: additional per-annotation keys, written as given.
    """
    # Row and column projections find the box far faster than np.nonzero over the whole mask.
    rows = np.flatnonzero(mask.any(axis=1))
    columns = np.flatnonzero(mask.any(axis=0))
    x0, y0, x1, y1 = columns[0], rows[0], columns[-1] + 1, rows[-1] + 1
    return {
        "category_id": category_id,
        "segmentation": encode_mask(mask),
        "area": int(np.count_nonzero(mask)),
        "bbox": [int(x0), int(y0), int(x1 - x0), int(y1 - y0)],
        "iscrowd": 0,
        **extra,
    }
