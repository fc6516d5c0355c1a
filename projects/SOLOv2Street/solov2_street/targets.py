"""
SOLOv2's grid assignment of ground-truth objects to the cells of the category and kernel
branches, as tensor functions under no_grad.

Shape shorthand: G objects in an image of H x W pixels, padded to Hp x Wp; L levels with S_l x
S_l cells, numbered level by level and row by row (cell r, c of level l is
sum(S_k^2 for k < l) + r S_l + c); P (cell, object) pairs.
"""

import functools

import torch
import torch.nn.functional as F

__all__ = ["GridPairs", "assign_grid_cells", "cell_labels", "center_of_mass", "mask_targets"]


class GridPairs:
    """
    The (cell, object) pairs of one image: cell `cells[k]` learns the mask of object
    `objects[k]` (and, unless another pair of the cell wins, its class).

    Attributes:
        cells: (P,) long, global cell index.
        objects: (P,) long, object index.
        levels: (P,) long, pyramid level of the cell.
    """

    def __init__(self, cells: torch.Tensor, objects: torch.Tensor, levels: torch.Tensor):
        self.cells, self.objects, self.levels = cells, objects, levels

    def __len__(self) -> int:
        return len(self.cells)

    def __getitem__(self, keep) -> "GridPairs":
        return GridPairs(self.cells[keep], self.objects[keep], self.levels[keep])


def center_of_mass(masks: torch.Tensor) -> torch.Tensor:
    """
    Args:
        masks: (G, H, W) bool.

    Returns:
        (G, 2) (y, x) mean row and column index of each mask's pixels (pixel (i, j) at (i, j),
        as SOLOv2 computes it); (0, 0) for an empty mask.
    """
    weights = masks.to(torch.float32)
    area = weights.sum(dim=(1, 2)).clamp(min=1)
    rows = torch.arange(masks.shape[1], device=masks.device, dtype=torch.float32)
    columns = torch.arange(masks.shape[2], device=masks.device, dtype=torch.float32)
    y = weights.sum(dim=2) @ rows / area
    x = weights.sum(dim=1) @ columns / area
    return torch.stack([y, x], dim=1)


def mask_targets(masks: torch.Tensor, padded_size: tuple[int, int], stride: int) -> torch.Tensor:
    """
    Ground-truth masks at the mask branch's resolution.

    Args:
        masks: (G, H, W) bool.
        padded_size: (Hp, Wp), multiples of `stride`.

    Returns:
        (G, Hp / stride, Wp / stride) float 0/1: the padded masks resized bilinearly (each
        output pixel interpolates the input pixels around its centre, like the authors' cv2
        resize) and binarised at 0.5.
    """
    height, width = masks.shape[1:]
    padded = F.pad(masks.to(torch.float32), (0, padded_size[1] - width, 0, padded_size[0] - height))
    size = (padded_size[0] // stride, padded_size[1] // stride)
    if len(masks) == 0:
        return padded.new_zeros((0, *size))
    resized = F.interpolate(padded[:, None], size=size, mode="bilinear", align_corners=False)
    return (resized[:, 0] >= 0.5).to(torch.float32)


@torch.no_grad()
def assign_grid_cells(
    masks: torch.Tensor,
    boxes: torch.Tensor,
    padded_size: tuple[int, int],
    num_grids: list[int],
    scale_ranges: list[tuple[float, float]],
    sigma: float,
) -> GridPairs:
    """
    SOLOv2's assignment: an object goes to every level whose scale range holds sqrt(w h) of
    its box (ranges overlap). On such a level its centre cell is the cell of its mask's centre
    of mass; its positive cells are those of the centre region, sigma w x sigma h around that
    centre, but at most one cell away from the centre cell (so at most 3 x 3, and at least the
    centre cell, however small the object). Objects with an empty mask get no cell.

    Args:
        masks: (G, H, W) bool.
        boxes: (G, 4) XYXY in pixels.
        padded_size: (Hp, Wp) of the batch; cells divide the padded image.
        num_grids: S_l of each level.
        scale_ranges: (lower, upper) of each level, inclusive.
        sigma: size of the centre region relative to the box.

    Returns:
        GridPairs, level by level, then object, then cell in row-major order.
    """
    device = masks.device
    scales = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0).sqrt()
    half_h = 0.5 * sigma * (boxes[:, 3] - boxes[:, 1])
    half_w = 0.5 * sigma * (boxes[:, 2] - boxes[:, 0])
    center_y, center_x = center_of_mass(masks).unbind(dim=1)
    nonempty = masks.flatten(1).any(dim=1)
    # The 3 x 3 neighbourhood of the centre cell, as (row, column) offsets.
    offsets = torch.tensor([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)], device=device)

    cells, objects, levels, first_cell = [], [], [], 0
    for level, (size, (lower, upper)) in enumerate(zip(num_grids, scale_ranges, strict=True)):
        hit = torch.nonzero(nonempty & (scales >= lower) & (scales <= upper))[:, 0]
        y, x, dy, dx = center_y[hit], center_x[hit], half_h[hit], half_w[hit]
        rows_of = functools.partial(_grid_index, extent=padded_size[0], size=size)
        columns_of = functools.partial(_grid_index, extent=padded_size[1], size=size)
        row, column = rows_of(y), columns_of(x)
        top = torch.maximum(rows_of(y - dy).clamp(min=0), row - 1)
        bottom = torch.minimum(rows_of(y + dy).clamp(max=size - 1), row + 1)
        left = torch.maximum(columns_of(x - dx).clamp(min=0), column - 1)
        right = torch.minimum(columns_of(x + dx).clamp(max=size - 1), column + 1)
        rows = row[:, None] + offsets[:, 0]  # (G_l, 9)
        columns = column[:, None] + offsets[:, 1]
        inside = (
            (rows >= top[:, None])
            & (rows <= bottom[:, None])
            & (columns >= left[:, None])
            & (columns <= right[:, None])
        )
        cells.append((first_cell + rows * size + columns)[inside])
        objects.append(hit[:, None].expand_as(rows)[inside])
        levels.append(torch.full_like(cells[-1], level))
        first_cell += size * size
    return GridPairs(torch.cat(cells), torch.cat(objects), torch.cat(levels))


def _grid_index(coordinate: torch.Tensor, extent: int, size: int) -> torch.Tensor:
    """The cell, among `size` cells dividing [0, extent), of each pixel `coordinate`."""
    return torch.floor(coordinate / extent * size).long()


def cell_labels(
    pairs: GridPairs, classes: torch.Tensor, num_cells: int, background: int
) -> torch.Tensor:
    """
    The class each cell learns: that of its pair with the highest object index (in SOLOv2's
    loop a later object overwrites an earlier one), `background` for a cell without a pair.

    Args:
        classes: (G,) class of each object.

    Returns:
        (num_cells,) long.
    """
    winner = torch.full((num_cells,), -1, dtype=torch.long, device=classes.device)
    winner.scatter_reduce_(0, pairs.cells, pairs.objects, reduce="amax")
    labels = torch.full_like(winner, background)
    assigned = winner >= 0
    labels[assigned] = classes[winner[assigned]]
    return labels
