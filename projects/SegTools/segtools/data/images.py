"""Reading images whole: a file that cannot be decoded completely is refused, by name."""

import numpy as np
from detectron2.data.detection_utils import convert_PIL_to_numpy
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageReadError", "read_image"]


class ImageReadError(OSError):
    """An image that is missing, not an image, truncated, empty or holds non-finite pixels."""


def read_image(path: str, format: str = "BGR") -> np.ndarray:
    """
    Read the image at `path` completely, turned by its EXIF orientation (as Detectron2's reader
    does).

    OpenCV decodes a truncated JPEG with a warning on the terminal and grey below the cut;
    Pillow refuses it, so the image is decoded here by Pillow and checked before conversion.

    Args:
        format: "BGR" or "RGB" (uint8), or another Pillow mode.

    Returns:
        (H, W, 3) uint8 array in `format`.

    Raises:
        ImageReadError: naming the file and what is wrong with it.
    """
    try:
        with Image.open(path) as image:
            image.load()  # decodes it all: a truncated file raises here
            image = ImageOps.exif_transpose(image)
    except FileNotFoundError:
        raise ImageReadError(f"image not found: {path}") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path} is a folder, not an image") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"cannot read the image {path}: not an image file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"cannot read the image {path}: {e}") from None
    if image.width == 0 or image.height == 0:
        raise ImageReadError(f"the image {path} is empty ({image.width}x{image.height} px)")
    if image.mode in ("F", "I", "I;16", "I;16B", "I;16L"):
        values = np.asarray(image)
        if not np.isfinite(values).all():
            raise ImageReadError(
                f"the image {path} has {np.count_nonzero(~np.isfinite(values))} pixels that are "
                "not finite numbers (NaN or infinite)"
            )
    return np.ascontiguousarray(convert_PIL_to_numpy(image, format))
