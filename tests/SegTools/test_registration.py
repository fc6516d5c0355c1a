"""Dataset registration: Detectron2's builtins under our root, and the datasets we add."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

import segtools  # noqa: F401  (registers the datasets)
from segtools.data import SYNTHETIC_ORE_SPLITS, DatasetLayoutError, check_dataset_files
from segtools.data.cityscapes_street import STREET5_CLASSES, ensure_cityscapes_supported

from helpers import REPO_ROOT


@pytest.fixture(scope="module")
def root(builtin_datasets_root):
    return builtin_datasets_root


def test_root_is_the_test_sessions_and_detectron2s(root):
    assert root == os.environ["DETECTRON2_DATASETS"]
    assert MetadataCatalog.get("coco_2017_val").json_file.startswith(root)


def test_coco_builtin_loads_from_the_root(root):
    dicts = DatasetCatalog.get("coco_2017_val")
    assert [len(d["annotations"]) for d in dicts] == [2, 1, 0]
    classes = MetadataCatalog.get("coco_2017_val").thing_classes
    assert [classes[a["category_id"]] for a in dicts[0]["annotations"]] == ["car", "person"]
    assert dicts[0]["file_name"] == os.path.join(root, "coco/val2017/000000000001.jpg")


def test_lvis_builtin_loads_from_the_root(root):
    dicts = DatasetCatalog.get("lvis_v1_val")
    assert [len(d["annotations"]) for d in dicts] == [2, 1, 0]
    assert dicts[1]["file_name"] == os.path.join(root, "coco/val2017/000000000002.jpg")
    assert len(MetadataCatalog.get("lvis_v1_val").thing_classes) == 1203


def test_cityscapes_builtin_and_street_subset(root):
    full = DatasetCatalog.get("cityscapes_fine_instance_seg_val")
    full_classes = MetadataCatalog.get("cityscapes_fine_instance_seg_val").thing_classes
    assert sorted(full_classes[a["category_id"]] for a in full[0]["annotations"]) == [
        "bicycle",
        "car",
        "person",
        "rider",
    ]

    street = DatasetCatalog.get("cityscapes_street5_val")
    meta = MetadataCatalog.get("cityscapes_street5_val")
    assert (
        tuple(meta.thing_classes) == STREET5_CLASSES == ("car", "person", "truck", "bus", "rider")
    )
    assert meta.gt_dir == MetadataCatalog.get("cityscapes_fine_instance_seg_val").gt_dir
    assert len(street) == len(full) == 2
    names = sorted(meta.thing_classes[a["category_id"]] for a in street[0]["annotations"])
    assert names == ["car", "person", "rider"]  # the bicycle is dropped
    boxes = {meta.thing_classes[a["category_id"]]: a["bbox"] for a in street[0]["annotations"]}
    np.testing.assert_allclose(boxes["car"], [4, 6, 40, 30], atol=1)


def test_cityscapes_check_names_the_supported_commit(monkeypatch):
    ensure_cityscapes_supported()  # the installed detectron2 is a supported one
    import segtools.data.cityscapes_street as street

    monkeypatch.setattr(
        street.inspect,
        "getsource",
        lambda module: "from deeplearning.projects.cityscapesApi import x",
    )
    with pytest.raises(ImportError, match="c69939aa"):
        ensure_cityscapes_supported()


def test_missing_dataset_names_variable_path_and_layout(root):
    with pytest.raises(DatasetLayoutError) as error:
        check_dataset_files("coco_2017_train")
    message = str(error.value)
    assert "DETECTRON2_DATASETS" in message and root in message
    assert "coco/annotations/instances_train2017.json  (MISSING)" in message
    assert "datasets/README.md, section 'COCO'" in message

    with pytest.raises(DatasetLayoutError, match=r"ore/train/annotations.json  \(MISSING\)"):
        DatasetCatalog.get("ore_train")
    check_dataset_files("coco_2017_val")  # present: no error


def test_ore_tiles_register_as_ore_val(root, tmp_path):
    from segtools.data.tiling import tile_coco_dataset

    source = tmp_path / "source"
    os.makedirs(source / "images")
    image = np.full((90, 120, 3), 80, np.uint8)
    import cv2

    cv2.imwrite(str(source / "images/photo.png"), image)
    annotations = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 1,
            "segmentation": [[10, 10, 50, 10, 50, 40, 10, 40]],
        },
        {
            "id": 2,
            "image_id": 1,
            "category_id": 1,
            "segmentation": [[70, 50, 110, 50, 110, 85, 70, 85]],
        },
    ]
    with open(source / "annotations.json", "w") as f:
        json.dump(
            {
                "images": [{"id": 1, "file_name": "photo.png", "height": 90, "width": 120}],
                "annotations": annotations,
                "categories": [{"id": 1, "name": "ore"}],
            },
            f,
        )
    out = os.path.join(root, "ore/val")
    tile_coco_dataset(
        str(source / "images"), str(source / "annotations.json"), out, 64, 16, show_progress=False
    )
    dicts = DatasetCatalog.get("ore_val")
    assert len(dicts) == 3 * 2  # columns at x = 0, 48, 56; rows at y = 0, 26
    assert sum(len(d["annotations"]) for d in dicts) >= 2
    assert all(os.path.isfile(d["file_name"]) for d in dicts)
    assert all(a["source_id"] in (1, 2) for d in dicts for a in d["annotations"])


def test_synthetic_ore_is_generated_on_first_use(root):
    folder = os.path.join(root, "ore_synthetic/val")
    assert not os.path.exists(folder)
    dicts = DatasetCatalog.get("ore_synthetic_val")
    assert len(dicts) == 64
    assert os.path.isfile(os.path.join(folder, "annotations.json"))
    annotation = dicts[0]["annotations"][0]
    assert {"true_diameter_px", "visible_fraction", "touches_border"} <= set(annotation)
    assert MetadataCatalog.get("ore_synthetic_val").thing_classes == ["ore"]
    # Second use reads what is there.
    mtime = os.path.getmtime(os.path.join(folder, "annotations.json"))
    DatasetCatalog.get("ore_synthetic_val")
    assert os.path.getmtime(os.path.join(folder, "annotations.json")) == mtime


def test_synthetic_test_split_is_held_out_from_its_own_seed(root):
    seeds = {name: spec.seed for name, spec in SYNTHETIC_ORE_SPLITS.items()}
    assert set(seeds) == {"ore_synthetic_train", "ore_synthetic_val", "ore_synthetic_test"}
    assert len(set(seeds.values())) == 3
    test_dicts = DatasetCatalog.get("ore_synthetic_test")
    val_dicts = DatasetCatalog.get("ore_synthetic_val")
    assert len(test_dicts) == 64
    with open(os.path.join(root, "ore_synthetic/test/annotations.json")) as f:
        assert json.load(f)["info"]["seed"] == seeds["ore_synthetic_test"]
    # No test image is a validation image.
    val_images = {cv2.imread(d["file_name"]).tobytes() for d in val_dicts}
    assert not any(cv2.imread(d["file_name"]).tobytes() in val_images for d in test_dicts)


def test_importing_projects_needs_no_model_zoo_or_network():
    code = (
        "import socket, sys\n"
        "def refuse(*a, **k): raise RuntimeError('network access')\n"
        "socket.socket.connect = refuse\n"
        "import losnet, segtools, segtools.engine\n"
        "bad = [m for m in sys.modules if 'model_zoo' in m and 'detectron2' in m]\n"
        "bad += [m for m in sys.modules if m == 'pkg_resources']\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
