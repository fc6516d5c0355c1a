"""Small helpers to build COCO-format instance annotations from binary masks."""

import numpy as np
import pycocotools.mask as mask_util

__all__ = ["encode_mask", "decode_segmentation", "annotation_from_mask", "mask_box"]


def encode_mask(mask: np.ndarray, origin=(0, 0), frame_size=None) -> dict:
    """
    Args:
        mask: (h, w) boolean or {0, 1} array.
        origin: (x, y) pixel of the frame where mask[0, 0] lies.
        frame_size: (height, width) of the frame the RLE describes, zero outside `mask`;
            default: the mask is the frame.

    Returns:
        A compressed COCO RLE dict whose "counts" is a str, so it can be written to JSON.
    """
    if frame_size is None:
        if tuple(origin) != (0, 0):
            raise ValueError(f"An origin {origin} needs the frame_size")
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    else:
        rle = _encode_in_frame(mask, origin, frame_size)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _encode_in_frame(mask: np.ndarray, origin, frame_size) -> dict:
    """
    The RLE of a frame holding `mask` at `origin`, without building the frame: a particle's mask
    over its box is a few KB where the 4000 x 3000 frame would be 12 MB.
    """
    height, width = (int(v) for v in frame_size)
    x0, y0 = (int(v) for v in origin)
    h, w = mask.shape
    if x0 < 0 or y0 < 0 or x0 + w > width or y0 + h > height:
        raise ValueError(
            f"A {w} x {h} mask at (x, y) = ({x0}, {y0}) does not fit a {width} x {height} frame"
        )
    # COCO runs go down the columns. Only columns x0 .. x0 + w hold ones: find the runs of that
    # strip, then lengthen its first and last zero runs by the empty columns before and after.
    strip = np.zeros((height, w), dtype=np.uint8)
    strip[y0 : y0 + h] = mask
    pixels = strip.ravel(order="F")
    changes = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    runs = np.diff(np.concatenate(([0], changes, [pixels.size])))
    if pixels.size and pixels[0]:
        runs = np.concatenate(([0], runs))  # counts start with a run of zeros
    runs[0] += x0 * height
    zeros_after = (width - x0 - w) * height
    if len(runs) % 2:  # the last run is of zeros
        runs[-1] += zeros_after
    elif zeros_after:
        runs = np.append(runs, zeros_after)
    return mask_util.frPyObjects({"counts": runs.tolist(), "size": [height, width]}, height, width)


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


def mask_box(mask: np.ndarray):
    """
    (x0, y0, x1, y1) of the set pixels of a (H, W) mask, end-exclusive, or None if it is empty.
    """
    # Row and column projections find the box far faster than np.nonzero over the whole mask.
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) == 0:
        return None
    columns = np.flatnonzero(mask.any(axis=0))
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


def annotation_from_mask(mask: np.ndarray, category_id: int = 1, **extra) -> dict:
    """
    A COCO annotation (without "id" and "image_id") whose box and area are exact for `mask`.

    Args:
        mask: (H, W) boolean array with at least one True pixel.
        extra: additional per-annotation keys, written as given.
    """
    x0, y0, x1, y1 = mask_box(mask)
    return {
        "category_id": category_id,
        "segmentation": encode_mask(mask),
        "area": int(np.count_nonzero(mask)),
        "bbox": [int(x0), int(y0), int(x1 - x0), int(y1 - y0)],
        "iscrowd": 0,
        **extra,
    }
