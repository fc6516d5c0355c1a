"""Tiny SBR-CNN configs, models, ROI heads and inputs shared by the SBR-CNN tests."""

import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.structures import Boxes, Instances

from sbrcnn import add_sbrcnn_config

from helpers import REPO_ROOT, rectangle_instances

SBR_CNN_CPU = str(REPO_ROOT / "configs/SBRCNN/sbr_cnn_R_18_FPN_ore_synthetic_cpu.yaml")
R3_CNN_CPU = str(REPO_ROOT / "configs/SBRCNN/r3_cnn_naive_R_18_FPN_ore_synthetic_cpu.yaml")

# The full SBR-CNN made narrow: 16-channel FPN, few RoIs, 8-channel L2C.
TINY = [
    "MODEL.DEVICE", "cpu",
    "MODEL.FPN.OUT_CHANNELS", "16",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "32",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
    "MODEL.SBRCNN.FCC.CONV_DIMS", "[8, 8]",
    "MODEL.SBRCNN.MASKIOU.CONV_DIM", "16",
    "MODEL.SBRCNN.MASKIOU.FC_DIM", "32",
    "MODEL.SBRCNN.MASKIOU.L2C_CONV_DIMS", "[8, 8]",
]  # fmt: skip

LEVELS = {"p2": 4, "p3": 8, "p4": 16, "p5": 32}


def sbrcnn_cfg(*opts, config_file=SBR_CNN_CPU):
    cfg = get_cfg()
    add_sbrcnn_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list([*TINY, *(str(o) for o in opts)])
    return cfg


def build_tiny_model(*opts, config_file=SBR_CNN_CPU, seed=0):
    torch.manual_seed(seed)
    return build_model(sbrcnn_cfg(*opts, config_file=config_file))


def build_tiny_roi_heads(*opts, config_file=SBR_CNN_CPU, seed=0):
    """R3ROIHeads (or the config's ROI heads) on 16-channel P2-P5 features."""
    torch.manual_seed(seed)
    cfg = sbrcnn_cfg(*opts, config_file=config_file)
    shapes = {name: ShapeSpec(channels=16, stride=stride) for name, stride in LEVELS.items()}
    return build_roi_heads(cfg, shapes)


def features(height=64, width=64, images=1, seed=0):
    """Random P2-P5 features of `images` images of height x width."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(images, 16, height // stride, width // stride, generator=generator)
        for name, stride in LEVELS.items()
    }


def proposals(image_size, boxes):
    """Instances with the given (x0, y0, x1, y1) boxes as RPN proposals."""
    instances = Instances(image_size)
    instances.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.objectness_logits = torch.zeros(len(instances.proposal_boxes))
    return instances


def targets(height, width, boxes, classes=None):
    """Ground truth: rectangle masks, their boxes, class 0 or `classes`."""
    instances = rectangle_instances(height, width, boxes)
    if classes is not None:
        instances.gt_classes = torch.tensor(classes, dtype=torch.long)
    return instances
