"""COCO RLE of a mask given over its box equals the RLE of the whole frame."""

import numpy as np
import pytest

from segtools.data.coco_format import encode_mask

HEIGHT, WIDTH = 23, 31


@pytest.mark.parametrize(
    "origin, shape",
    [
        ((0, 0), (HEIGHT, WIDTH)),  # the box is the frame
        ((0, 0), (5, 7)),  # first pixel of the frame set
        ((WIDTH - 6, HEIGHT - 4), (4, 6)),  # last pixel of the frame set
        ((9, 3), (11, 13)),  # inside
        ((0, 10), (13, 1)),  # one column at the left border
        ((12, 0), (1, 19)),  # one row at the top border
    ],
)
def test_box_mask_rle_equals_frame_rle(origin, shape):
    rng = np.random.default_rng(sum(origin) + sum(shape))
    mask = rng.random(shape) < 0.6
    mask[0, 0] = mask[-1, -1] = True  # a tight box: its corners may be set
    x0, y0 = origin
    frame = np.zeros((HEIGHT, WIDTH), dtype=bool)
    frame[y0 : y0 + shape[0], x0 : x0 + shape[1]] = mask

    assert encode_mask(mask, origin, (HEIGHT, WIDTH)) == encode_mask(frame)


def test_box_outside_the_frame_or_origin_without_frame_is_named():
    mask = np.ones((4, 4), dtype=bool)
    with pytest.raises(ValueError, match=r"at \(x, y\) = \(29, 0\) does not fit a 31 x 23 frame"):
        encode_mask(mask, (29, 0), (HEIGHT, WIDTH))
    with pytest.raises(ValueError, match="needs the frame_size"):
        encode_mask(mask, (1, 2))
