"""
Writers of tiny datasets in the layouts of datasets/README.md: COCO 2017, LVIS v1 and Cityscapes
fine. Instances are axis-aligned rectangles, so polygons and pixel masks agree exactly.
"""

import json
import os

import cv2
import numpy as np
from cityscapesscripts.helpers.labels import name2label
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

# (image height, width, [(class name, (x0, y0, x1, y1)), ...]) per image.
SCENES = [
    (60, 80, [("car", (4, 6, 34, 30)), ("person", (40, 10, 70, 50))]),
    (50, 70, [("truck", (10, 5, 60, 40))]),
    (40, 40, []),
]


def rectangle_polygon(box):
    x0, y0, x1, y1 = box
    return [float(x0), float(y0), float(x1), float(y0), float(x1), float(y1), float(x0), float(y1)]


def _write_image(path, height, width, seed):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    cv2.imwrite(path, image)


def _coco_style_annotations(category_id_of):
    images, annotations = [], []
    for index, (height, width, objects) in enumerate(SCENES, start=1):
        images.append(
            {"id": index, "file_name": f"{index:012d}.jpg", "height": height, "width": width}
        )
        for name, box in objects:
            x0, y0, x1, y1 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index,
                    "category_id": category_id_of[name],
                    "segmentation": [rectangle_polygon(box)],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float((x1 - x0) * (y1 - y0)),
                    "iscrowd": 0,
                }
            )
    return images, annotations


def write_coco_val2017(root):
    """root/coco/val2017/*.jpg and root/coco/annotations/instances_val2017.json (80 classes)."""
    categories = [{"id": c["id"], "name": c["name"]} for c in COCO_CATEGORIES if c["isthing"]]
    names = {"car": "car", "person": "person", "truck": "truck"}
    category_id_of = {
        key: next(c["id"] for c in categories if c["name"] == v) for key, v in names.items()
    }
    images, annotations = _coco_style_annotations(category_id_of)
    for image in images:
        _write_image(
            os.path.join(root, "coco/val2017", image["file_name"]),
            image["height"],
            image["width"],
            image["id"],
        )
    path = os.path.join(root, "coco/annotations/instances_val2017.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path


def write_lvis_v1_val(root):
    """root/lvis/lvis_v1_val.json over the images of write_coco_val2017 (call that first)."""
    category_id_of = {"car": 1, "person": 2, "truck": 3}
    images, annotations = _coco_style_annotations(category_id_of)
    for image in images:
        image["coco_url"] = f"http://images.cocodataset.org/val2017/{image.pop('file_name')}"
        image["not_exhaustive_category_ids"] = []
        image["neg_category_ids"] = []
    categories = [
        {
            "id": i,
            "name": name,
            "frequency": "f",
            "image_count": 1,
            "instance_count": 1,
            "synset": name,
        }
        for name, i in category_id_of.items()
    ]
    path = os.path.join(root, "lvis/lvis_v1_val.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path


# Cityscapes scene: a street with 5-class and other-class instances.
CITYSCAPES_OBJECTS = [
    ("car", (4, 6, 40, 30)),
    ("person", (44, 4, 60, 40)),
    ("bicycle", (62, 10, 90, 40)),
    ("rider", (4, 34, 30, 58)),
    ("road", (0, 58, 96, 64)),
]


def write_cityscapes_val(root, city="frankfurt", num_images=2):
    """
    root/cityscapes/{leftImg8bit,gtFine}/val/<city>/ with *_leftImg8bit.png, *_gtFine_polygons.json,
    *_gtFine_instanceIds.png and *_gtFine_labelIds.png, 96x64 images.
    """
    height, width = 64, 96
    for index in range(num_images):
        base = f"{city}_000000_{index:06d}"
        image_dir = os.path.join(root, "cityscapes/leftImg8bit/val", city)
        gt_dir = os.path.join(root, "cityscapes/gtFine/val", city)
        os.makedirs(gt_dir, exist_ok=True)
        _write_image(os.path.join(image_dir, f"{base}_leftImg8bit.png"), height, width, index)
        instance_ids = np.zeros((height, width), dtype=np.uint16)  # 16-bit PNG, as Cityscapes'
        label_ids = np.zeros((height, width), dtype=np.uint8)
        objects = []
        for instance, (name, (x0, y0, x1, y1)) in enumerate(CITYSCAPES_OBJECTS):
            label = name2label[name]
            # Cityscapes polygons use integer pixel coordinates of the outline's pixels.
            objects.append(
                {"label": name, "polygon": [[x0, y0], [x1 - 1, y0], [x1 - 1, y1 - 1], [x0, y1 - 1]]}
            )
            label_ids[y0:y1, x0:x1] = label.id
            instance_ids[y0:y1, x0:x1] = (
                label.id * 1000 + instance if label.hasInstances else label.id
            )
        cv2.imwrite(os.path.join(gt_dir, f"{base}_gtFine_instanceIds.png"), instance_ids)
        cv2.imwrite(os.path.join(gt_dir, f"{base}_gtFine_labelIds.png"), label_ids)
        with open(os.path.join(gt_dir, f"{base}_gtFine_polygons.json"), "w") as f:
            json.dump({"imgHeight": height, "imgWidth": width, "objects": objects}, f)
    return os.path.join(root, "cityscapes")
