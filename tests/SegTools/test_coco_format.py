"""
COCO masks given or decoded over their box equal those of the whole frame; COCO input files are
checked with messages naming file, entry, key and value.
"""

import re

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest

from segtools.data.coco_format import (
    Placement,
    decode_in_box,
    decode_segmentation,
    encode_mask,
    frame_runs,
    mask_box,
    place_segmentation,
)
from segtools.data.coco_input import (
    CocoFormatError,
    check_distinct_names,
    check_ground_truth,
    check_results,
    read_coco_json,
    read_image,
)
from segtools.data.images import ImageReadError

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


def _frame_with(height: int, width: int, *boxes, pixels=()) -> np.ndarray:
    """(height, width) mask with the (x0, y0, x1, y1) `boxes` and the (x, y) `pixels` set."""
    frame = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        frame[y0:y1, x0:x1] = True
    for x, y in pixels:
        frame[y, x] = True
    return frame


def _runs(frame: np.ndarray) -> list:
    """COCO's uncompressed counts of a frame, found independently: column-major, zeros first."""
    flat = frame.ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], changes, [flat.size]))).tolist()
    return [0, *runs] if flat[0] else runs


ADVERSARIAL_FRAMES = {
    # Ones down whole columns: one run spans several columns.
    "full columns": _frame_with(23, 31, (4, 0, 9, 23)),
    # A run leaving the bottom of a column and going on at the top of the next.
    "wrapping run": _frame_with(23, 31, (6, 20, 7, 23), (7, 0, 8, 3)),
    "every border": _frame_with(23, 31, (0, 5, 31, 6), (12, 0, 13, 23)),
    "whole frame": np.ones((23, 31), dtype=bool),
    "pixel top left": _frame_with(23, 31, pixels=[(0, 0)]),
    "pixel bottom right": _frame_with(23, 31, pixels=[(30, 22)]),
    "pixel top right": _frame_with(23, 31, pixels=[(30, 0)]),
    "pixel bottom left": _frame_with(23, 31, pixels=[(0, 22)]),
    "scattered pieces": np.random.default_rng(5).random((23, 31)) < 0.3,
    "empty": np.zeros((23, 31), dtype=bool),
    # Runs over 2^19 pixels take 5 chunks of the string, and differences turn negative.
    "long runs": _frame_with(1000, 1100, (0, 0, 1, 2), (549, 500, 551, 501), pixels=[(1099, 999)]),
}


def _in_frame(box_mask, height: int, width: int) -> np.ndarray:
    frame = np.zeros((height, width), dtype=bool)
    x0, y0 = box_mask.mask_origin
    frame[y0 : y0 + box_mask.mask.shape[0], x0 : x0 + box_mask.mask.shape[1]] = box_mask.mask
    return frame


def _assert_box_decode_is_exact(segmentation, height: int, width: int) -> None:
    """decode_in_box gives pycocotools' full decode, over the tight box of its pixels."""
    box_mask = decode_in_box(segmentation, height, width)
    expected = decode_segmentation(segmentation, height, width)
    np.testing.assert_array_equal(_in_frame(box_mask, height, width), expected)
    box = mask_box(expected)
    if box is None:
        assert box_mask.mask.shape == (0, 0)
    else:
        x0, y0, x1, y1 = box
        assert (box_mask.mask_origin, box_mask.mask.shape) == ((x0, y0), (y1 - y0, x1 - x0))


@pytest.mark.parametrize("counts", ["list", "str", "bytes"])
@pytest.mark.parametrize("name", list(ADVERSARIAL_FRAMES))
def test_rle_decoded_in_box_equals_full_decode(name, counts):
    frame = ADVERSARIAL_FRAMES[name]
    height, width = frame.shape
    compressed = encode_mask(frame)
    assert frame_runs(compressed, height, width).tolist() == _runs(frame)
    segmentation = {
        "list": {"size": [height, width], "counts": _runs(frame)},
        "str": compressed,
        "bytes": {**compressed, "counts": compressed["counts"].encode("ascii")},
    }[counts]

    _assert_box_decode_is_exact(segmentation, height, width)


@pytest.mark.parametrize(
    "counts",
    [
        [1, 2, 0, 1, 3, 0, 13],  # runs of ones that abut in a column, and one of no pixel
        [0, 20],
        [19, 1],
        [0, 1, 18, 1],
    ],
)
def test_uncompressed_runs_of_any_length_decode_in_box_as_in_full(counts):
    _assert_box_decode_is_exact({"size": [5, 4], "counts": counts}, 5, 4)


@pytest.mark.parametrize(
    "polygons",
    [
        [[-5.5, 3.0, 10.2, 3.0, 10.2, 12.7, -5.5, 12.7]],  # over the left border
        [[25.0, -4.0, 40.0, 10.0, 20.0, 15.5]],  # over the top and right borders
        [[3.3, 20.1, 9.9, 30.0, 1.0, 28.0]],  # over the bottom border
        [[-9.0, -9.0, 50.0, -9.0, 50.0, 40.0, -9.0, 40.0]],  # around the whole image
        [[40.0, 2.0, 50.0, 2.0, 45.0, 9.0], [2.0, 2.0, 6.0, 2.0, 4.0, 5.0]],  # one outside
        [[12.0, 12.0, 12.4, 12.0, 12.2, 12.3]],  # smaller than a pixel
        [],
    ],
)
def test_polygons_decoded_in_box_equal_full_decode(polygons):
    _assert_box_decode_is_exact(polygons, 23, 31)


def _frame_of(rows: slice, columns: slice) -> np.ndarray:
    frame = np.zeros((HEIGHT, WIDTH), dtype=bool)
    frame[rows, columns] = True
    return frame


@pytest.mark.parametrize(
    "polygon, expected",
    [
        # Vertices at 3e8 and beyond made pycocotools take all memory or crash.
        ([5, 3, 1e9, 3, 1e9, 12, 5, 12], _frame_of(slice(3, 12), slice(5, None))),
        ([5, 3, -1e9, 3, -1e9, 12, 5, 12], _frame_of(slice(3, 12), slice(None, 5))),
        ([10, 5, 3e8, 5, 10, 3e8], _frame_of(slice(5, None), slice(10, None))),
        ([-1e9, -1e9, 1e9, -1e9, 0, 1e9], _frame_of(slice(None), slice(None))),
    ],
)
def test_polygons_reaching_far_out_are_clipped_to_the_image(polygon, expected):
    np.testing.assert_array_equal(decode_segmentation([polygon], HEIGHT, WIDTH), expected)
    _assert_box_decode_is_exact([polygon], HEIGHT, WIDTH)


def test_clipping_keeps_the_even_odd_fill_of_a_self_intersecting_ring():
    # The loop above the image overlaps the ring's own body: pycocotools leaves the overlap
    # empty (even-odd), and so must the clipped ring. Its cut edges are vertical, so pycocotools
    # digitises them alike and the masks are equal pixel for pixel.
    ring = [2, 2, 40, 2, 40, 10, 20, 10, 20, -30, 10, -30, 10, 15, 2, 15]
    unclipped = mask_util.decode(mask_util.frPyObjects([ring], HEIGHT, WIDTH))[:, :, 0]
    clipped = decode_segmentation([ring], HEIGHT, WIDTH)
    np.testing.assert_array_equal(clipped, unclipped.astype(bool))
    assert (clipped[5, 15], clipped[0, 15], clipped[5, 5]) == (False, True, True)


def test_non_finite_polygon_coordinates_are_refused_by_the_decoder():
    with pytest.raises(ValueError, match="polygon coordinates must be finite"):
        decode_segmentation([[1, 1, float("nan"), 1, 5, 4]], HEIGHT, WIDTH)


@pytest.mark.parametrize(
    "segmentation, placement, box",
    [
        ([[2, 2, 8, 2, 8, 9, 2, 9]], Placement.INSIDE, (2, 2, 8, 9)),
        ([[-5, 3, 10, 3, 10, 12, -5, 12]], Placement.CLIPPED, (0, 3, 10, 12)),
        ([[5, 3, 1e9, 3, 1e9, 12, 5, 12]], Placement.CLIPPED, (5, 3, WIDTH, 12)),
        ([], Placement.EMPTY, None),
        ([[]], Placement.EMPTY, None),
        ({"size": [HEIGHT, WIDTH], "counts": [HEIGHT * WIDTH]}, Placement.EMPTY, None),
        ([[1, 1, 5, 1, 9, 1]], Placement.TOO_THIN, None),  # no area
        ([[1, 1.1, 9, 1.1, 9, 1.2]], Placement.TOO_THIN, None),  # between pixel centres
        ([[100, 3, 140, 3, 120, 12]], Placement.OUTSIDE, None),
        ([[-1e9, -50, -40, -50, -45, -1e9]], Placement.OUTSIDE, None),
    ],
)
def test_placement_of_a_segmentation(segmentation, placement, box):
    got, box_mask = place_segmentation(segmentation, HEIGHT, WIDTH)
    assert got is placement
    assert mask_box(_in_frame(box_mask, HEIGHT, WIDTH)) == box


@pytest.mark.parametrize(
    "segmentation, message",
    [
        ({"size": [2, 3], "counts": [2, 3]}, "got 2 runs summing to 5"),
        ({"size": [2, 3], "counts": [7, -1]}, "must be >= 0 and sum to 2 x 3 = 6 pixels"),
        ({"size": [2, 3], "counts": "5"}, "got 1 runs summing to 5"),
        ({"size": [2, 3], "counts": "1k"}, "not a compressed COCO RLE string"),  # "k": more follows
        ({"size": [2, 3], "counts": "1 "}, "not a compressed COCO RLE string"),  # below "0"
        ({"size": [2, 3], "counts": "1é"}, "not a compressed COCO RLE string"),  # not ASCII
        ({"size": [2, 3], "counts": "kkkkkkk0"}, "not a compressed COCO RLE string"),  # 8 chunks
    ],
)
def test_runs_that_do_not_cover_the_frame_are_refused(segmentation, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        frame_runs(segmentation, 2, 3)


def _ground_truth() -> dict:
    """A valid training set: two 6 x 8 images, a compressed and an uncompressed RLE, a polygon."""
    mask = _frame_with(6, 8, (1, 1, 4, 3))
    image = {"file_name": "a.png", "height": 6, "width": 8}
    return {
        "images": [{"id": 1, **image}, {"id": 2, **image, "file_name": "b.png"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "segmentation": encode_mask(mask)},
            {
                "id": 11,
                "image_id": 2,
                "category_id": 1,
                "segmentation": {"size": [6, 8], "counts": [7, 2, 4, 2, 4, 2, 27]},
            },
            {"id": 12, "image_id": 2, "category_id": 1, "segmentation": [[1, 1, 5, 1, 5, 4]]},
        ],
        "categories": [{"id": 1, "name": "ore"}],
    }


def _set(*keys_and_value):
    """An edit of the ground truth: set data[k0][k1]... to the value."""
    *keys, value = keys_and_value

    def edit(data):
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value

    return edit


def _delete(*keys):
    def edit(data):
        for key in keys[:-1]:
            data = data[key]
        del data[keys[-1]]

    return edit


SEGMENTATION = ("annotations", 0, "segmentation")


@pytest.mark.parametrize(
    "edit, message",
    [
        (_delete("categories"), "'categories' is missing: expected a list"),
        (_set("annotations", {}), "'annotations' = {}: expected a list"),
        (_set("images", 1, 5), "images[1] = 5: expected a JSON object"),
        (
            _set("images", 1, "id", 1),
            "images[1]['id'] = 1: expected an id that no earlier image has",
        ),
        (_set("images", 0, "height", 0), "images[0]['height'] = 0: expected an integer > 0"),
        (_set("images", 0, "width", True), "images[0]['width'] = True: expected an integer > 0"),
        (_delete("images", 1, "file_name"), "images[1]['file_name'] is missing: expected a string"),
        (_delete("categories", 0, "id"), "categories[0]['id'] is missing: expected an id"),
        (
            _set("annotations", 2, "image_id", 3),
            "annotations[2]['image_id'] = 3: expected the id of an entry of 'images'",
        ),
        (
            _set("annotations", 0, "category_id", 2),
            "annotations[0]['category_id'] = 2: expected the id of an entry of 'categories'",
        ),
        (
            _delete("annotations", 1, "id"),
            "annotations[1]['id'] is missing: expected an id that no earlier annotation has",
        ),
        (
            _set("annotations", 1, "id", 10),
            "annotations[1]['id'] = 10: expected an id that no earlier annotation has",
        ),
        (
            _delete(*SEGMENTATION),
            "annotations[0]['segmentation'] is missing: expected a segmentation",
        ),
        (
            _set(*SEGMENTATION, 5),
            "annotations[0]['segmentation'] = 5: expected a list of polygons or an RLE dict",
        ),
        (
            _set(*SEGMENTATION, [[1, 1, 5, 1, 5, 4], [1, 1, 2]]),
            "annotations[0]['segmentation'][1] = [1, 1, 2]: expected a polygon of x, y pairs, an "
            "even count of numbers",
        ),
        (
            _set(*SEGMENTATION, [[1, "2", 5, 1, 5, 4]]),
            "annotations[0]['segmentation'][0] = [1, '2', 5, 1, 5, 4]: expected a polygon, a list "
            "of numbers [x0, y0, x1, y1, ...]",
        ),
        (
            _set(*SEGMENTATION, [[1, 1, 5, 1]]),
            "annotations[0]['segmentation'][0] = [1, 1, 5, 1]: expected a polygon of at least 3 "
            "points",
        ),
        (
            _set(*SEGMENTATION, "size", [8, 6]),
            "annotations[0]['segmentation']['size'] = [8, 6]: expected the image's [6, 8]",
        ),
        (
            _delete(*SEGMENTATION, "size"),
            "annotations[0]['segmentation']['size'] is missing: expected [height, width], "
            "integers > 0",
        ),
        (
            _set(*SEGMENTATION, [[1, 1, 5, 1, float("nan"), 4]]),
            "annotations[0]['segmentation'][0][4] = nan: expected a finite coordinate",
        ),
        (
            _set(*SEGMENTATION, [[1, 1, 5, 1, 5, 4], [1, 1, 5, -float("inf"), 5, 4]]),
            "annotations[0]['segmentation'][1][3] = -inf: expected a finite coordinate",
        ),
        (
            _set("annotations", 1, "segmentation", "counts", [7, 2, 4, 2, 4, 2, 28]),
            "annotations[1]['segmentation']['counts'] = [7, 2, 4, 2, 4, 2, ...]: RLE runs must "
            "be >= 0 and sum to 6 x 8 = 48 pixels, got 7 runs summing to 49",
        ),
        (
            _set("annotations", 1, "segmentation", "counts", [50, -2]),
            "annotations[1]['segmentation']['counts'] = [50, -2]: expected a string or a list of "
            "integers in [0, 2**32)",
        ),
        (
            _set("annotations", 1, "segmentation", "counts", [2**70]),
            "annotations[1]['segmentation']['counts'] = [1180591620717411303424]: expected a "
            "string or a list of integers in [0, 2**32)",
        ),
        (
            _set("images", 1, "height", 2**29),  # x 8 = 2**32 pixels
            "images[1] = {'file_name': 'b.png', 'height': 536870912, 'id': 2, 'width': 8}: "
            "expected fewer than 2**32 pixels, a COCO RLE's most",
        ),
        (
            _set(*SEGMENTATION, "counts", "724000g"),  # truncated: "g" says that more follows
            "annotations[0]['segmentation']['counts'] = '724000g': not a compressed COCO RLE "
            "string",
        ),
    ],
)
def test_ground_truth_errors_name_file_entry_key_and_value(edit, message):
    data = _ground_truth()
    check_ground_truth(data, "gt.json", training_set=True)
    edit(data)
    with pytest.raises(CocoFormatError) as error:
        check_ground_truth(data, "gt.json", training_set=True)
    assert str(error.value) == f"gt.json: {message}"


def test_ground_truth_needs_no_training_keys_and_may_allow_degenerate_polygons():
    data = _ground_truth()
    for annotation in data["annotations"]:
        del annotation["id"], annotation["category_id"]
    del data["categories"], data["images"][0]["file_name"]
    check_ground_truth(data, "gt.json")
    data["annotations"][2]["segmentation"] = [[1, 1, 5, 1], []]
    check_ground_truth(data, "gt.json", min_polygon_points=0)
    with pytest.raises(CocoFormatError, match="at least 3 points"):
        check_ground_truth(data, "gt.json")
    with pytest.raises(CocoFormatError, match=re.escape("gt.json: the file = []: expected a dict")):
        check_ground_truth([], "gt.json")


def _results() -> list:
    rle = encode_mask(_frame_with(6, 8, (1, 1, 4, 3)))
    return [
        {"image_id": 7, "score": 0.9, "segmentation": rle},
        {"image_id": 7, "score": 1, "segmentation": [[1, 1, 5, 1, 5, 4]]},
        {"image_id": 8, "score": 0.5, "segmentation": encode_mask(_frame_with(5, 5, (0, 0, 1, 1)))},
        {"image_id": 9, "score": 0.5, "segmentation": [[1, 1, 5, 1, 5, 4]]},  # no size known
    ]


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set(0, "x"), "[0] = 'x': expected a JSON object"),
        (_delete(0, "image_id"), "[0]['image_id'] is missing: expected an id"),
        (_set(1, "score", "high"), "[1]['score'] = 'high': expected a finite number"),
        (_set(1, "score", None), "[1]['score'] = None: expected a finite number"),
        (_set(1, "score", float("nan")), "[1]['score'] = nan: expected a finite number"),
        (
            _set(2, "segmentation", {"size": [0, 0], "counts": []}),
            "[2]['segmentation']['size'] = [0, 0]: expected [height, width], integers > 0",
        ),
        (
            _set(2, "segmentation", {"size": [2**16, 2**16], "counts": [2**31, 2**31]}),
            "[2]['segmentation']['size'] = [65536, 65536]: expected fewer than 2**32 pixels, a "
            "COCO RLE's most",
        ),
        (
            _set(2, "image_id", 7),
            "[2]['segmentation']['size'] = [5, 5]: an earlier entry of image_id 7 has size [6, 8]",
        ),
        (
            _set(3, "segmentation", [[1, 1, 5, 1]]),
            "[3]['segmentation'][0] = [1, 1, 5, 1]: expected a polygon of at least 3 points",
        ),
    ],
)
def test_results_errors_name_file_entry_key_and_value(edit, message):
    results = _results()
    assert check_results(results, "res.json") == {7: (6, 8), 8: (5, 5)}
    edit(results)
    with pytest.raises(CocoFormatError) as error:
        check_results(results, "res.json")
    assert str(error.value) == f"res.json: {message}"


def test_integer_ids_when_asked():
    data = _ground_truth()
    data["images"][1]["id"] = "b"
    for annotation in data["annotations"][1:]:
        annotation["image_id"] = "b"
    check_ground_truth(data, "gt.json")
    with pytest.raises(CocoFormatError) as error:
        check_ground_truth(data, "gt.json", integer_ids=True)
    assert str(error.value) == (
        "gt.json: images[1]['id'] = 'b': expected an integer id that no earlier image has"
    )
    results = _results()
    results[3]["image_id"] = 2**63
    check_results(results, "res.json")
    with pytest.raises(CocoFormatError) as error:
        check_results(results, "res.json", integer_ids=True)
    assert str(error.value) == (f"res.json: [3]['image_id'] = {2**63}: expected an integer id")


def test_results_must_be_a_list():
    with pytest.raises(CocoFormatError, match=re.escape("res.json: the file = {}: expected a")):
        check_results({}, "res.json")


def test_distinct_names():
    images = [{"id": 1, "file_name": "a/x.png"}, {"id": 2, "file_name": "b/x.jpg"}]

    def stem(image):
        return image["file_name"][2:3]

    check_distinct_names(images[:1], stem, "gt.json", "prefix")
    with pytest.raises(CocoFormatError) as error:
        check_distinct_names(images, stem, "gt.json", "prefix")
    assert str(error.value) == (
        "gt.json: images[1] = {'file_name': 'b/x.jpg', 'id': 2}: its prefix 'x' would be that of "
        "images[0]"
    )


def test_files_that_cannot_be_read(tmp_path):
    missing = str(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match=re.escape(f"COCO file not found: {missing}")):
        read_coco_json(missing)
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(CocoFormatError, match=re.escape(f"{broken} is not valid JSON: Expecting")):
        read_coco_json(str(broken))
    binary = tmp_path / "photo.json"
    binary.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(CocoFormatError) as error:
        read_coco_json(str(binary))
    assert str(error.value) == (
        f"{binary} is not valid JSON: 'utf-8' codec can't decode byte 0x89 in position 0: "
        "invalid start byte"
    )

    photo = str(tmp_path / "photo.png")
    cv2.imwrite(photo, np.zeros((6, 8, 3), dtype=np.uint8))
    assert read_image(photo, (6, 8), "gt.json", "images[0]").shape == (6, 8, 3)
    with pytest.raises(CocoFormatError) as error:
        read_image(photo, (6, 9), "gt.json", "images[0]")
    assert str(error.value) == (
        f"gt.json: images[0] gives [height, width] = [6, 9] but the image {photo} is [6, 8]"
    )
    with pytest.raises(ImageReadError) as error:
        read_image(str(broken), (6, 8), "gt.json", "images[0]")
    assert str(error.value) == f"cannot read the image {broken}: not an image file"
    # OpenCV reads a truncated JPEG with grey below the cut; it must be refused.
    noise = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    ok, jpeg = cv2.imencode(".jpg", noise)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(jpeg.tobytes()[: jpeg.size // 2])
    assert ok and cv2.imread(str(truncated)) is not None
    with pytest.raises(ImageReadError, match=re.escape(f"{truncated}: image file is truncated")):
        read_image(str(truncated), (60, 80), "gt.json", "images[0]")
