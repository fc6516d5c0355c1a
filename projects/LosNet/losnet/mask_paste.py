"""
Pasting LosNet's low-resolution mask logits into output-sized boolean masks.

The dynamic mask head predicts every instance's mask over the whole padded image at the mask
features' stride and upsamples it (x4 in the paper) for its loss. Doing both over the whole image
for every detection costs R x H x W bilinear samples per image (a third of LosNet's CPU latency at
640 x 800 with 100 detections); here each mask is upsampled and sampled only over its box, as
Detectron2's `paste_masks_in_image` does for Mask R-CNN: a few percent of that on ore images, with
the same values inside the box.
"""

import math

import torch
import torch.nn.functional as F
from detectron2.layers import cat

__all__ = ["PASTE_REGIONS", "paste_masks", "upsample_logits"]

# "box": each mask over its box widened by one mask cell; "image": every mask over the whole
# output (the slower original, kept to measure what the box costs in accuracy).
PASTE_REGIONS = ("box", "image")
# Mask probabilities above this value are foreground.
MASK_THRESHOLD = 0.5
# "image" pastes this many instances at a time, to bound memory.
_IMAGE_PASTE_CHUNK = 32


def paste_masks(
    mask_logits: torch.Tensor,
    boxes: torch.Tensor,
    stride: int,
    input_size: tuple[int, int],
    output_size: tuple[int, int],
    region: str = "box",
    upsample: int = 1,
) -> torch.Tensor:
    """
    Args:
        mask_logits: (R, h, w) logits over the padded input, one cell per `stride` pixels.
        boxes: (R, 4) XYXY boxes in output pixels.
        stride: input pixels per cell of `mask_logits`.
        input_size: (height, width) of the image the network saw, without padding.
        output_size: (height, width) of the masks to return.
        region: one of :data:`PASTE_REGIONS`.
        upsample: the masks are the logits upsampled by this factor (bilinear, align_corners
            False, as :class:`DynamicMaskHead` does), one cell per `stride / upsample` pixels.

    Returns:
        (R, output_height, output_width) boolean masks. With "box", pixels outside each box
        widened by one upsampled mask cell are background.
    """
    if region == "image":
        return _paste_over_image(mask_logits, stride, input_size, output_size, upsample)
    return _paste_over_boxes(mask_logits, boxes, stride, input_size, output_size, upsample)


def upsample_logits(mask_logits: torch.Tensor, factor: int) -> torch.Tensor:
    """
    (R, h, w) logits -> (R, h * factor, w * factor), bilinear with align_corners=False: upsampled
    cell k sits at (k + 0.5) / factor coarse cells, as coarse cell i sits at i + 0.5, so the cell
    centres stay aligned. The dynamic mask head's upsampling for its loss, and pasting's.
    """
    if factor == 1:
        return mask_logits
    return F.interpolate(
        mask_logits[:, None], scale_factor=factor, mode="bilinear", align_corners=False
    )[:, 0]


def _paste_over_image(mask_logits, stride, input_size, output_size, upsample) -> torch.Tensor:
    # All at once while tracing for export, where the number of chunks would be frozen.
    chunks = (mask_logits,) if torch.jit.is_tracing() else mask_logits.split(_IMAGE_PASTE_CHUNK)
    masks = []
    for logits in chunks:
        probs = F.interpolate(
            upsample_logits(logits, upsample).sigmoid()[:, None],
            scale_factor=stride // upsample,
            mode="bilinear",
            align_corners=False,
        )[:, :, : input_size[0], : input_size[1]]
        if tuple(input_size) != tuple(output_size):
            probs = F.interpolate(probs, size=output_size, mode="bilinear", align_corners=False)
        masks.append(probs[:, 0] > MASK_THRESHOLD)
    if not masks:
        return mask_logits.new_zeros((0, *output_size), dtype=torch.bool)
    return cat(masks)


def _sampling_grid(ys, xs, stride, scale, crop_origin, crop_size) -> torch.Tensor:
    """
    grid_sample coordinates (len(ys), len(xs), 2) of output pixel centres in a crop of the mask
    whose first cell is `crop_origin` (row, column): output pixel u maps to input position
    (u + 0.5) x `scale` (input / output, per axis), which lies in mask cell (u + 0.5) x scale /
    stride (cells span [i, i + 1), the convention of align_corners=False).
    """
    cells_y = (ys + 0.5) * (scale[0] / stride) - crop_origin[0]
    cells_x = (xs + 0.5) * (scale[1] / stride) - crop_origin[1]
    grid_y = cells_y * (2 / crop_size[0]) - 1
    grid_x = cells_x * (2 / crop_size[1]) - 1
    return torch.stack(torch.meshgrid(grid_x, grid_y, indexing="xy"), dim=-1)


def _paste_regions(boxes, stride, scale, output_size) -> torch.Tensor:
    """(R, 4) integer [x0, y0, x1, y1) output pixel ranges: boxes widened by one mask cell."""
    cell_x, cell_y = stride / scale[1], stride / scale[0]
    widened = boxes + boxes.new_tensor([-cell_x, -cell_y, cell_x, cell_y])
    regions = torch.cat([widened[:, :2].floor(), widened[:, 2:].ceil()], dim=1)
    limits = boxes.new_tensor([output_size[1], output_size[0]] * 2)
    return torch.minimum(regions.clamp(min=0), limits).long()


def _cells_under(first: int, last: int, stride: int, scale: float, cells: int) -> tuple:
    """
    [start, end) of the mask cells that bilinear sampling reads for output pixels first..last:
    a sample at cell position c reads cells floor(c - 0.5) and the next, clamped to the mask;
    one more cell each side absorbs float32 rounding of c.
    """
    low = math.floor((first + 0.5) * scale / stride - 0.5) - 1
    high = math.floor((last + 0.5) * scale / stride - 0.5) + 3
    return min(max(low, 0), cells - 1), max(min(high, cells), 1)


def _coarse_crop(first: int, end: int, factor: int, cells: int) -> tuple:
    """
    [start, end) of the coarse cells whose upsampling by `factor` gives upsampled cells
    first..end - 1 exactly as upsampling the whole mask does: bilinear upsampling reads the
    coarse cell below and above each sample, so one more coarse cell each side suffices.
    """
    return max(first // factor - 1, 0), min(-(-end // factor) + 1, cells)


def _paste_over_boxes(mask_logits, boxes, stride, input_size, output_size, upsample):
    height, width = output_size
    coarse_size = tuple(mask_logits.shape[-2:])
    mask_size = (coarse_size[0] * upsample, coarse_size[1] * upsample)
    stride = stride // upsample
    scale = (input_size[0] / output_size[0], input_size[1] / output_size[1])
    regions = _paste_regions(boxes.to(torch.float32), stride, scale, output_size)
    if torch.jit.is_tracing():
        # A traced graph cannot loop over a data-dependent number of boxes: sample the whole
        # output for every instance (the same values inside the regions) and clear the outside.
        ys = torch.arange(height, dtype=torch.float32, device=mask_logits.device)
        xs = torch.arange(width, dtype=torch.float32, device=mask_logits.device)
        grid = _sampling_grid(ys, xs, stride, scale, (0, 0), mask_size)
        sampled = F.grid_sample(
            upsample_logits(mask_logits, upsample).sigmoid()[:, None],
            grid.expand(mask_logits.shape[0], -1, -1, -1),
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )[:, 0]
        inside_x = (xs[None] >= regions[:, 0:1]) & (xs[None] < regions[:, 2:3])
        inside_y = (ys[None] >= regions[:, 1:2]) & (ys[None] < regions[:, 3:4])
        return (sampled > MASK_THRESHOLD) & inside_y[:, :, None] & inside_x[:, None, :]
    device = mask_logits.device
    masks = torch.zeros((len(mask_logits), height, width), dtype=torch.bool, device=device)
    for index, (x0, y0, x1, y1) in enumerate(regions.tolist()):
        if x1 <= x0 or y1 <= y0:
            continue
        # Only the cells the samples read: sampling a crop equals sampling the whole mask.
        rows = _coarse_crop(
            *_cells_under(y0, y1 - 1, stride, scale[0], mask_size[0]), upsample, coarse_size[0]
        )
        cols = _coarse_crop(
            *_cells_under(x0, x1 - 1, stride, scale[1], mask_size[1]), upsample, coarse_size[1]
        )
        crop = upsample_logits(
            mask_logits[index : index + 1, rows[0] : rows[1], cols[0] : cols[1]], upsample
        )
        crop = crop[0].sigmoid()
        row0, col0 = rows[0] * upsample, cols[0] * upsample
        ys = torch.arange(y0, y1, dtype=torch.float32)
        xs = torch.arange(x0, x1, dtype=torch.float32)
        grid = _sampling_grid(ys, xs, stride, scale, (row0, col0), crop.shape)
        sampled = F.grid_sample(
            crop[None, None],
            grid[None],
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        masks[index, y0:y1, x0:x1] = sampled[0, 0] > MASK_THRESHOLD
    return masks
