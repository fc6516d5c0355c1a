"""train_net.py end to end on synthetic ore: train, checkpoint, resume, evaluate."""

import contextlib
import io
import json
import math
import os

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.engine import default_argument_parser
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segtools import engine
from segtools.calibration import COLLECTION_THRESHOLD, calibration_path, read_calibration
from segtools.cli import UsageError
from segtools.config import ConfigValueError, get_project_cfg
from segtools.data.registration import ORE_EXTRA_KEYS
from segtools.data.synthetic_ore import generate_synthetic_ore

from helpers import REPO_ROOT, save_random_losnet

CONFIG = str(REPO_ROOT / "configs/LosNet/losnet_MV3S_ore_synthetic.yaml")
TINY = "test_train_net_synthetic_ore"
# Few, small iterations on a tiny synthetic ore set.
SMALL = [
    "DATASETS.TRAIN", f"('{TINY}',)",
    "DATASETS.TEST", f"('{TINY}',)",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.CHECKPOINT_PERIOD", "100",
    "SOLVER.WARMUP_ITERS", "2",
    "INPUT.MIN_SIZE_TRAIN", "(128,)",
    "INPUT.MAX_SIZE_TRAIN", "160",
    "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "160",
    "DATALOADER.NUM_WORKERS", "0",
    # An untrained model scores below the default threshold; report its detections anyway.
    "MODEL.LOSNET.SCORE_THRESH_TEST", "0.0",
    "TEST.DETECTIONS_PER_IMAGE", "50",
    "SEGTOOLS.COUNT_CALIBRATION.DATASET", "",
]  # fmt: skip


# Training in this process: on one torch thread (see the fixture).
pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module", autouse=True)
def tiny_synthetic_ore(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tiny") / "ore")
    json_file = generate_synthetic_ore(folder, 4, seed=3, size=(128, 128), show_progress=False)
    image_root = os.path.join(folder, "images")
    # As the registered ore sets: with the particles' visible fractions.
    DatasetCatalog.register(
        TINY, lambda: load_coco_json(json_file, image_root, TINY, ORE_EXTRA_KEYS)
    )
    MetadataCatalog.get(TINY).set(json_file=json_file, image_root=image_root, evaluator_type="coco")


def run(*flags, opts=()):
    args = engine.argument_parser().parse_args(["--config-file", CONFIG, *flags, *SMALL, *opts])
    return engine.main(args)


def logged_iterations(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        records = [json.loads(line) for line in f]
    return [r for r in records if "total_loss" in r]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, single_torch_thread):
    output_dir = str(tmp_path_factory.mktemp("train_net"))
    results = run(
        opts=["SOLVER.MAX_ITER", "3", "OUTPUT_DIR", output_dir,
              "SEGTOOLS.COUNT_CALIBRATION.DATASET", TINY]
    )  # fmt: skip
    return output_dir, results


def test_training_writes_finite_losses_checkpoint_and_results(trained):
    output_dir, results = trained
    records = logged_iterations(output_dir)
    assert [r["iteration"] for r in records] == [2]
    for key in ("total_loss", "loss_cls", "loss_box_giou", "loss_quality", "loss_mask"):
        assert math.isfinite(records[0][key]), key
    assert os.path.isfile(os.path.join(output_dir, "model_final.pth"))
    with open(os.path.join(output_dir, "last_checkpoint")) as f:
        assert f.read().strip() == "model_final.pth"
    # The evaluation after the last iteration is written too.
    with open(os.path.join(output_dir, "evaluation_results.json")) as f:
        written = json.load(f)
    assert set(written) == {"bbox", "segm"}


def test_training_calibrates_the_final_weights_for_counting(trained):
    output_dir, _ = trained
    weights = os.path.join(output_dir, "model_final.pth")
    calibration = read_calibration(calibration_path(weights), weights)
    annotated = sum(len(record["annotations"]) for record in DatasetCatalog.get(TINY))
    assert (calibration.dataset, calibration.images, calibration.true_count) == (TINY, 4, annotated)
    assert calibration.score_threshold >= COLLECTION_THRESHOLD


def test_calibrating_a_model_without_a_score_threshold_is_refused(tmp_path):
    with pytest.raises(
        UsageError, match="SEGTOOLS.COUNT_CALIBRATION.DATASET: .*'SemanticSegmentor'"
    ):
        run(opts=["MODEL.META_ARCHITECTURE", "SemanticSegmentor", "OUTPUT_DIR", str(tmp_path),
                  "SEGTOOLS.COUNT_CALIBRATION.DATASET", TINY])  # fmt: skip
    assert not os.path.exists(tmp_path / "model_final.pth")


def test_visibility_trains_and_is_written_with_the_results(tmp_path):
    run(opts=["SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(tmp_path),
              "MODEL.LOSNET.VISIBILITY.ENABLED", "True"])  # fmt: skip
    assert logged_iterations(str(tmp_path))[0]["loss_visibility"] > 0
    with open(tmp_path / "inference" / TINY / "coco_instances_results.json") as f:
        results = json.load(f)
    assert results and all(0 <= r["visibility"] <= 1 for r in results)


def test_resume_continues_from_the_checkpoint_iteration(trained):
    output_dir, _ = trained
    run("--resume", opts=["SOLVER.MAX_ITER", "5", "OUTPUT_DIR", output_dir])
    assert [r["iteration"] for r in logged_iterations(output_dir)] == [2, 4]


def test_eval_only_reports_the_ap_of_its_predictions(trained, tmp_path):
    output_dir, _ = trained
    weights = os.path.join(output_dir, "model_final.pth")
    results = run("--eval-only", opts=["MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path)])
    # The AP reported is pycocotools' on the predictions it wrote, against the ground truth.
    predictions = tmp_path / "inference" / TINY / "coco_instances_results.json"
    ground_truth = COCO(MetadataCatalog.get(TINY).json_file)
    with contextlib.redirect_stdout(io.StringIO()):
        for task in ("bbox", "segm"):
            evaluation = COCOeval(ground_truth, ground_truth.loadRes(str(predictions)), task)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            assert results[task]["AP"] == pytest.approx(100 * evaluation.stats[0], abs=1e-9)
            assert results[task]["AP50"] == pytest.approx(100 * evaluation.stats[1], abs=1e-9)
    with open(tmp_path / "evaluation_results.json") as f:
        assert json.load(f)["segm"]["AP"] == pytest.approx(results["segm"]["AP"])


def test_fine_tuning_starts_from_the_weights_that_match(tmp_path):
    # A checkpoint with another number of classes: all but the classifier match.
    weights = save_random_losnet(tmp_path / "three.pth", "MODEL.LOSNET.NUM_CLASSES", "3", seed=5)
    given = torch.load(weights)["model"]
    output_dir = tmp_path / "fine_tuned"
    # Learning rate 0: the weights trained are those the run started from.
    run(opts=["MODEL.WEIGHTS", weights, "SOLVER.MAX_ITER", "1", "SOLVER.BASE_LR", "0.0",
              "OUTPUT_DIR", str(output_dir)])  # fmt: skip
    final = torch.load(output_dir / "model_final.pth")["model"]
    conv = "backbone.bottom_up.features.0.0.weight"
    assert torch.equal(final[conv], given[conv])
    assert final["head.cls_score.weight"].shape[0] == 1 != given["head.cls_score.weight"].shape[0]
    # --eval-only loads such a checkpoint only when asked to.
    evaluation = ["MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path / "eval")]
    results = run("--eval-only", "--allow-partial-weights", opts=evaluation)
    assert set(results) == {"bbox", "segm"}


def test_config_mistakes_name_the_key_and_the_file(tmp_path):
    with pytest.raises(ConfigValueError) as error:
        get_project_cfg(CONFIG, ["MODEL.LOSNET.NUM_CLASES", "2"])
    assert str(error.value) == "config overrides: Non-existent key: MODEL.LOSNET.NUM_CLASES"
    with pytest.raises(ConfigValueError, match="Override list has odd length"):
        get_project_cfg(CONFIG, ["MODEL.LOSNET.NUM_CLASSES"])
    with pytest.raises(ConfigValueError, match=r"with values \(0.002 vs. fast\) for config key: "):
        get_project_cfg(CONFIG, ["SOLVER.BASE_LR", "fast"])
    typo = tmp_path / "typo.yaml"
    typo.write_text(f'_BASE_: "{CONFIG}"\nMODEL:\n  LOSNET:\n    NUM_CLASES: 2\n')
    with pytest.raises(ConfigValueError) as error:
        get_project_cfg(str(typo))
    assert str(error.value) == f"{typo}: Non-existent config key: MODEL.LOSNET.NUM_CLASES"
    broken = tmp_path / "broken.yaml"
    broken.write_text("MODEL: [\n")
    with pytest.raises(ConfigValueError, match=f"^{broken}: while parsing a flow node"):
        get_project_cfg(str(broken))
    with pytest.raises(FileNotFoundError, match="config file not found: .*absent.yaml"):
        get_project_cfg(str(tmp_path / "absent.yaml"))


def test_missing_dataset_stops_before_training(tmp_path):
    args = default_argument_parser().parse_args(
        ["--config-file", CONFIG, "DATASETS.TRAIN", "('ore_train',)", "OUTPUT_DIR", str(tmp_path)]
    )
    with pytest.raises(FileNotFoundError, match="(?s)DETECTRON2_DATASETS.*ore/train/annotations"):
        engine.main(args)
