"""SOLOv2's grid assignment on hand-made objects, cell labels and mask targets."""

import torch

from solov2_street import assign_grid_cells, cell_labels, center_of_mass, mask_targets

# One 10 x 10 grid over a 100 x 100 padded image: cells of 10 px.
GRID = {"num_grids": [10], "scale_ranges": [(1, 100)], "sigma": 0.2}


def rectangles(boxes, size=(100, 100)):
    masks = torch.zeros((len(boxes), *size), dtype=torch.bool)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes, strict=True):
        mask[y0:y1, x0:x1] = True
    return masks, torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def cells_of(pairs, obj):
    return sorted(pairs.cells[pairs.objects == obj].tolist())


def test_centre_region_is_sigma_times_the_box_at_most_3x3():
    # A 40 x 40 object centred on (49.5, 49.5): centre cell (4, 4); its region is 8 x 8 px
    # (45.5-53.5), cells 4-5 in each direction.
    masks, boxes = rectangles([(30, 30, 70, 70)])
    pairs = assign_grid_cells(masks, boxes, (100, 100), **GRID)
    assert cells_of(pairs, 0) == [44, 45, 54, 55]
    # With sigma 1 a 90 x 90 object's region (4.5-94.5) covers cells 0-9, cut to the centre
    # cell's neighbours 3-5.
    masks, boxes = rectangles([(5, 5, 95, 95)])
    pairs = assign_grid_cells(masks, boxes, (100, 100), [10], [(1, 100)], sigma=1.0)
    assert cells_of(pairs, 0) == [r * 10 + c for r in (3, 4, 5) for c in (3, 4, 5)]


def test_an_object_smaller_than_a_cell_gets_its_centre_cell():
    masks, boxes = rectangles([(72, 13, 74, 15)])  # 2 x 2 px, centre (73.5, 13.5)
    pairs = assign_grid_cells(masks, boxes, (100, 100), **GRID)
    assert cells_of(pairs, 0) == [17]


def test_centre_of_mass_not_box_centre_and_empty_masks_get_nothing():
    masks, boxes = rectangles([(0, 0, 60, 60), (10, 10, 20, 20)])
    # A 20 px wide column in a 60 x 60 box: the region (the box's 12 px) surrounds the mass
    # centre (y 29.5, x 9.5), not the box centre: rows 23.5-35.5, columns 3.5-15.5.
    masks[0, :, 20:] = False
    masks[1] = False
    pairs = assign_grid_cells(masks, boxes, (100, 100), **GRID)
    assert center_of_mass(masks[:1]).tolist() == [[29.5, 9.5]]
    assert cells_of(pairs, 0) == [20, 21, 30, 31]
    assert cells_of(pairs, 1) == []


def test_overlapping_scale_ranges_put_an_object_on_two_levels():
    masks, boxes = rectangles([(40, 40, 60, 60)])  # sqrt(area) = 20
    pairs = assign_grid_cells(
        masks, boxes, (100, 100), num_grids=[10, 5], scale_ranges=[(1, 24), (16, 48)], sigma=0.2
    )
    assert pairs.levels.tolist() == [0, 0, 0, 0, 1]
    # Level 1 numbers its cells after level 0's 100: cell (2, 2) of 5 x 5 is 112.
    assert pairs.cells.tolist() == [44, 45, 54, 55, 112]


def test_several_centres_in_one_cell_make_pairs_and_the_last_object_labels_it():
    masks, boxes = rectangles([(40, 40, 50, 50), (42, 41, 49, 48), (80, 80, 90, 90)])
    pairs = assign_grid_cells(masks, boxes, (100, 100), **GRID)
    assert cells_of(pairs, 0) == cells_of(pairs, 1) == [44]
    labels = cell_labels(pairs, torch.tensor([3, 1, 2]), num_cells=100, background=7)
    assert labels[44] == 1 and labels[88] == 2
    assert (labels == 7).sum() == 98


def test_mask_targets_are_padded_and_downsampled_to_the_mask_stride():
    masks, _ = rectangles([(8, 4, 24, 12)], size=(30, 40))
    targets = mask_targets(masks, (32, 64), stride=4)
    assert targets.shape == (1, 8, 16) and targets.dtype == torch.float32
    expected = torch.zeros(8, 16)
    expected[1:3, 2:6] = 1
    torch.testing.assert_close(targets[0], expected)
    assert mask_targets(masks[:0], (32, 64), stride=4).shape == (0, 8, 16)
