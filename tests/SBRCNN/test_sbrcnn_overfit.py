"""A tiny SBR-CNN overfits four synthetic images: every object found, boxed and masked."""

import torch
from detectron2.solver import build_lr_scheduler, build_optimizer
from detectron2.structures import BitMasks, Instances, pairwise_iou
from detectron2.utils.events import EventStorage
from sbrcnn_testing import build_tiny_model, sbrcnn_cfg

# The tiny full SBR-CNN (GRoIE, FCC, Mask IoU; 3 loops), with 14 x 14 masks and one sample per
# RoIAlign bin to train in seconds; SGD with the CPU config's gradient clipping.
OPTS = [
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", "7",
    "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO", "1",
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", "1",
    "SOLVER.BASE_LR", "0.01",
    "SOLVER.WARMUP_ITERS", "10",
    "SOLVER.WARMUP_FACTOR", "0.1",
    "SOLVER.MAX_ITER", "70",
    "SOLVER.STEPS", "(56,)",
]  # fmt: skip

# (kind, centre x / x0, centre y / y0, half width / x1, half height / y1) of each image's objects.
SCENES = [
    [("ellipse", 18, 20, 12, 9), ("rectangle", 36, 34, 58, 56)],
    [("ellipse", 44, 18, 14, 10), ("ellipse", 20, 44, 10, 14)],
    [("rectangle", 6, 8, 30, 26), ("ellipse", 44, 46, 12, 12)],
    [("ellipse", 32, 32, 20, 11)],
]


def synthetic_images():
    """Four 64 x 64 images of bright ellipses and rectangles on dark noise."""
    generator = torch.Generator().manual_seed(0)
    y, x = torch.meshgrid(torch.arange(64.0) + 0.5, torch.arange(64.0) + 0.5, indexing="ij")
    images = []
    for scene in SCENES:
        image = torch.rand(3, 64, 64, generator=generator) * 40
        masks = []
        for kind, a, b, c, d in scene:
            if kind == "ellipse":
                mask = ((x - a) / c) ** 2 + ((y - b) / d) ** 2 <= 1
            else:
                mask = (x >= a) & (x < c) & (y >= b) & (y < d)
            image[:, mask] = torch.rand(3, 1, generator=generator) * 120 + 120
            masks.append(mask)
        instances = Instances((64, 64))
        instances.gt_masks = BitMasks(torch.stack(masks))
        instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        instances.gt_classes = torch.zeros(len(masks), dtype=torch.long)
        images.append({"image": image, "instances": instances})
    return images


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(M, N) IoU of M and N boolean masks."""
    a, b = a.flatten(1).float(), b.flatten(1).float()
    overlap = a @ b.T
    return overlap / (a.sum(dim=1, keepdim=True) + b.sum(dim=1) - overlap)


def test_tiny_sbr_cnn_overfits_four_images():
    cfg = sbrcnn_cfg(*OPTS)
    model = build_tiny_model(*OPTS)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    batch = synthetic_images()
    model.train()
    with EventStorage() as storage:
        for iteration in range(cfg.SOLVER.MAX_ITER):
            storage.iter = iteration
            losses = model(batch)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    with torch.no_grad():
        outputs = model([{"image": b["image"]} for b in batch])
    for inputs, output in zip(batch, outputs, strict=True):
        gt, found = inputs["instances"], output["instances"]
        found = found[found.scores > 0.5]
        # One confident detection per object, none elsewhere.
        assert len(found) == len(gt), found.scores
        box_iou = pairwise_iou(gt.gt_boxes, found.pred_boxes).max(dim=1).values
        mask_iou = _mask_iou(gt.gt_masks.tensor, found.pred_masks).max(dim=1).values
        assert (box_iou >= 0.7).all(), box_iou
        assert (mask_iou >= 0.8).all(), mask_iou
