"""Pictures of predictions and of dataset annotations, drawn with Detectron2's Visualizer."""

import gc
from types import SimpleNamespace

import cv2
import numpy as np
from detectron2.utils.visualizer import ColorMode, GenericMask, VisImage, Visualizer
from matplotlib.transforms import Affine2D

from ..data.images import read_image

__all__ = ["draw_dataset_grid", "draw_detections"]

# Above this many instances, labels would hide the particles: masks only.
_MAX_LABELLED = 50

# Pixels of the picture one matplotlib canvas draws at a time. matplotlib renders an image through
# RGBA and float intermediates, tens of bytes per pixel: a whole 8001 x 6001 photo took 7-10 GB.
# A larger picture is drawn in horizontal strips of this many pixels (at least a row each).
_STRIP_PIXELS = 4_000_000


def _image_polygons(detection) -> list:
    """
    The outlines Detectron2 draws for `detection`'s mask, as [x0, y0, x1, y1, ...] arrays in image
    pixels, traced over the mask's box only.
    """
    # A one-pixel margin: GenericMask refuses masks two pixels wide (it would read them as
    # polygon arrays), and outlines of a mask that fills its box close inside the margin.
    mask = np.pad(detection.mask, 1)
    origin = np.array(detection.mask_origin, dtype=np.float64) - 1
    return [
        (polygon.reshape(-1, 2) + origin).reshape(-1)
        for polygon in GenericMask(mask, *mask.shape).polygons
    ]


class _BoxMask:
    """A particle's mask kept over its box, whose nonzero() gives image rows and columns."""

    def __init__(self, detection):
        self._detection = detection

    def nonzero(self) -> tuple:
        rows, columns = np.nonzero(self._detection.mask)
        x, y = self._detection.mask_origin
        return rows + y, columns + x


class _OutlinedMask(GenericMask):
    """
    Detectron2's mask of one particle, built from its outlines, that knows its area and its pixels
    without a whole-frame mask.

    GenericMask rasterises the mask over the whole frame and keeps it: 12 MB per particle on a
    4000 x 3000 photo, more than memory holds for a dense belt. The Visualizer asks every mask its
    area (to draw the large ones first), here the pixel count of the box mask, and a labelled mask
    its pixels (to place the label at their median), here those of the box mask.
    """

    def __init__(self, detection, polygons: list, height: int, width: int):
        super().__init__(polygons, height, width)
        self._detection = detection

    def area(self) -> int:
        return self._detection.area

    @property
    def mask(self) -> _BoxMask:
        return _BoxMask(self._detection)


def _default_font_size(height: int, width: int) -> float:
    """
    Visualizer's default font size for a (height, width) image at scale 1 (Visualizer.__init__):
    its outlines' width and its labels' size follow it.
    """
    return max(np.sqrt(height * width) // 90, 10)


class _Recorder(Visualizer):
    """
    Detectron2's drawing of instances on a (height, width) picture that draws nothing but keeps
    the polygons and labels overlay_instances would draw, in order, with their colours, places
    and sizes, for strips of the picture to draw.
    """

    def __init__(self, height: int, width: int, metadata):
        super().__init__(np.zeros((1, 1, 3), np.uint8), metadata, instance_mode=ColorMode.IMAGE)
        self.output = SimpleNamespace(height=height, width=width, scale=1.0)
        self._default_font_size = _default_font_size(height, width)
        self.polygons = []  # (segment (N, 2), color, edge_color, alpha)
        self.texts = []  # (text, (x, y), draw_text keywords)

    def draw_polygon(self, segment, color, edge_color=None, alpha=0.5):
        self.polygons.append((segment, color, edge_color, alpha))
        return self.output

    def draw_text(self, text, position, **kwargs):
        self.texts.append((text, position, kwargs))
        return self.output


def _pixels(visimage: VisImage) -> Affine2D:
    """
    The transform from `visimage`'s image coordinates to its canvas pixels (x right, y down), as
    matplotlib draws them: VisImage makes its figure 1e-2 pixel larger than the image and the
    image keeps its aspect, so the two differ by up to 1e-2 pixel, which changes antialiased edges.
    """
    visimage.ax.apply_aspect()
    canvas_height = int(visimage.fig.bbox.height)
    flip = Affine2D().scale(1, -1).translate(0, canvas_height)
    return Affine2D((visimage.ax.transData + flip).get_matrix())


def _frame_pixels(height: int, width: int) -> Affine2D:
    """_pixels of the VisImage of a (height, width) picture, without its pixels."""
    frame = VisImage.__new__(VisImage)
    frame.img, frame.scale, frame.width, frame.height = None, 1.0, width, height
    frame._setup_figure(np.zeros((1, 1, 3), np.uint8))  # the axes and limits of the picture
    return _pixels(frame)


def draw_detections(image: np.ndarray, detections: list, metadata) -> np.ndarray:
    """
    Args:
        image: (H, W, 3) BGR image.
        detections: list[Detection] of this image (see `detections.py`).
        metadata: Detectron2 metadata with `thing_classes`, for the labels.

    Returns:
        (H, W, 3) BGR picture with each instance's mask (and, for a few instances, its label),
        Detectron2's Visualizer.overlay_instances drawing. Masks too small to give an outline (a
        pixel or two) are not drawn.

    Memory stays bounded on any photo: Detectron2 chooses the colours, the order (largest first)
    and the labels' places and sizes once for the whole picture, then a picture of more than
    _STRIP_PIXELS pixels is drawn in horizontal strips, each by a Visualizer with the whole
    picture's line width and font size, given the outlines and labels that reach into it. A
    particle or label across a seam is drawn in both strips, each clipping it at the seam, so the
    strips join into the whole-frame drawing.
    """
    height, width = image.shape[:2]
    outlined = [(d, polygons) for d in detections if (polygons := _image_polygons(d))]
    labels = None
    if len(outlined) <= _MAX_LABELLED:
        classes = getattr(metadata, "thing_classes", None)
        labels = [
            f"{classes[d.category_id] if classes else d.category_id + 1} {d.score:.0%}"
            for d, _ in outlined
        ]
    recorder = _Recorder(height, width, metadata)
    masks = [_OutlinedMask(d, polygons, height, width) for d, polygons in outlined]
    recorder.overlay_instances(masks=masks, labels=labels, alpha=0.4)
    del masks, outlined

    y_min = np.array([segment[:, 1].min() for segment, *_ in recorder.polygons])
    y_max = np.array([segment[:, 1].max() for segment, *_ in recorder.polygons])
    text_y = np.array([position[1] for _, position, _ in recorder.texts])
    rows = min(height, max(1, _STRIP_PIXELS // width))
    frame_pixels = _frame_pixels(height, width)
    picture = np.empty_like(image)
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        strip = Visualizer(image[top:bottom, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
        strip._default_font_size = recorder._default_font_size  # the whole picture's widths
        # Where the whole picture's canvas would draw, in the strip's image coordinates.
        into_strip = frame_pixels + Affine2D().translate(0, -top) + _pixels(strip.output).inverted()
        # How far a drawing outside the strip reaches into it, in rows: an outline by half its
        # width (a 15th of the font size), a label (its top at its place, its font within the
        # default size) by its box.
        font_rows = strip._default_font_size * strip.output.dpi / 72
        outline_reach = font_rows / 15 + 2
        reaching = (y_max > top - outline_reach) & (y_min < bottom + outline_reach)
        for i in np.flatnonzero(reaching):
            segment, color, edge_color, alpha = recorder.polygons[i]
            strip.draw_polygon(into_strip.transform(segment), color, edge_color, alpha)
        reaching = (text_y > top - 3 * font_rows) & (text_y < bottom + font_rows)
        for i in np.flatnonzero(reaching):
            text, position, kwargs = recorder.texts[i]
            strip.draw_text(text, tuple(into_strip.transform(position)), **kwargs)
        picture[top:bottom] = strip.output.get_image()[:, :, ::-1]
        del strip
        gc.collect()  # matplotlib's figure, canvas and axes hold each other: free the strip now
    return picture


def draw_dataset_grid(records: list, metadata, scale: float = 1.0) -> np.ndarray:
    """
    Args:
        records: Detectron2 dataset dicts (file_name and annotations).
        metadata: Detectron2 metadata of their dataset.
        scale: size of the drawn images relative to the originals.

    Returns:
        (H, W, 3) BGR picture: per record a column, its image above its drawn annotations.

    Raises:
        ImageReadError: if an image cannot be read whole.
    """
    columns = []
    for record in records:
        image = read_image(record["file_name"])
        visualizer = Visualizer(image[:, :, ::-1], metadata, scale, ColorMode.IMAGE)
        drawn = visualizer.draw_dataset_dict(record).get_image()[:, :, ::-1]
        raw = cv2.resize(image, (drawn.shape[1], drawn.shape[0]))
        columns.append(np.vstack([raw, drawn]))
    height = max(c.shape[0] for c in columns)
    return np.hstack([np.pad(c, ((0, height - c.shape[0]), (0, 0), (0, 0))) for c in columns])
