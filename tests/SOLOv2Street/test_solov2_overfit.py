"""A tiny street-scene SOLOv2 (CSPAM, TWFPN, CSMF) overfits four synthetic images on a CPU."""

import pytest
import torch
from detectron2.structures import BitMasks, Instances
from detectron2.utils.events import EventStorage
from solov2_testing import tiny_model

# Objects of each 64 x 64 image, as the boxes of filled ellipses; two touch in the second image.
OBJECTS = [
    [(8, 10, 30, 34), (36, 30, 60, 56)],
    [(4, 4, 28, 20), (30, 8, 52, 44), (10, 40, 26, 60)],
    [(20, 20, 44, 44)],
    [(2, 30, 22, 62), (26, 2, 62, 24)],
]


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def ellipse_images(size=64):
    """Each object a filled ellipse of its own colour on a noisy grey background."""
    generator = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    batch = []
    for boxes in OBJECTS:
        image = torch.rand(3, size, size, generator=generator) * 60 + 60
        masks = torch.zeros(len(boxes), size, size, dtype=torch.bool)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes, strict=True):
            cx, cy, rx, ry = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
            mask[:] = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1
            image[:, mask] = torch.rand(3, 1, generator=generator) * 100 + 140
        instances = Instances((size, size), gt_masks=BitMasks(masks))
        instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        instances.gt_classes = torch.zeros(len(boxes), dtype=torch.long)
        batch.append({"image": image, "instances": instances})
    return batch


def test_tiny_street_model_overfits_four_images():
    # SOLOv2's loss: the AML loss squashes both terms by a sigmoid and needs more iterations.
    model = tiny_model(True, "MODEL.SOLOV2.LOSS", "solov2")
    batch = ellipse_images()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.005, weight_decay=0)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[60], gamma=0.1)
    model.train()
    with EventStorage():
        for _ in range(80):
            loss = sum(model(batch).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        outputs = model([{"image": x["image"]} for x in batch])
    for inputs, output in zip(batch, outputs, strict=True):
        # The k best detections are the k objects, each found once, with mask IoU >= 0.6.
        truth = inputs["instances"].gt_masks.tensor
        predicted = output["instances"].pred_masks[: len(truth)]
        intersection = (predicted[:, None] & truth[None]).flatten(2).sum(dim=2)
        union = (predicted[:, None] | truth[None]).flatten(2).sum(dim=2)
        iou, matched = (intersection / union.clamp(min=1)).max(dim=1)
        assert len(predicted) == len(truth) and (iou >= 0.6).all(), iou
        assert sorted(matched.tolist()) == list(range(len(truth)))
