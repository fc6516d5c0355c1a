"""segtools.training_curve and scripts/plot_training_curve.py: accuracy against training time."""

import csv
import os

import cv2
import numpy as np
import pytest
import torch

from segtools import engine
from segtools.cli import run_tool
from segtools.training_curve import TrainingCurveError, iteration_times, run_checkpoints

from helpers import REPO_ROOT, load_script, register_four_synthetic_images

CONFIG = str(REPO_ROOT / "configs/LosNet/losnet_MV3S_ore_synthetic.yaml")
TINY = "test_training_curve_synthetic_ore"
plot_script = load_script("plot_training_curve")

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def write_log(folder, lines):
    path = os.path.join(folder, "log.txt")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def test_iterations_are_dated_from_the_last_start_of_training(tmp_path):
    # A first run, resumed at iteration 40 just before New Year; stdout- and file-style lines.
    path = write_log(
        tmp_path,
        [
            "[12/31 23:00:00] d2.engine.train_loop INFO: Starting training from iteration 0",
            "[12/31 23:00:30] d2.utils.events INFO:  eta: 0:01:00  iter: 19  total_loss: 2.0",
            "[12/31 23:59:50] d2.engine.train_loop INFO: Starting training from iteration 40",
            "[12/31 23:59:55 d2.utils.events]:  eta: 0:01:00  iter: 40  total_loss: 1.9",
            "[12/31 23:59:58] d2.engine.hooks INFO: a line without the iteration",
            "[01/01 00:00:20] d2.utils.events INFO:  eta: 0:00:30  iter: 59  total_loss: 1.8",
            # Written again after training (the evaluation's metrics): not a later iteration.
            "[01/01 00:01:00] d2.utils.events INFO:  eta: 0:00:00  iter: 59  total_loss: 1.8",
        ],
    )
    iterations, seconds = iteration_times(path)
    assert iterations.tolist() == [39, 40, 59]
    assert seconds.tolist() == [0.0, 5.0, 30.0]


def test_a_log_without_training_is_refused_by_name(tmp_path):
    path = write_log(tmp_path, ["[12/03 02:00:00] detectron2 INFO: Rank of current process: 0"])
    with pytest.raises(TrainingCurveError, match="log.txt: no 'Starting training"):
        iteration_times(path)
    with pytest.raises(TrainingCurveError, match="nowhere/log.txt: no such file"):
        iteration_times(str(tmp_path / "nowhere" / "log.txt"))


def test_checkpoints_are_listed_by_iteration_once(tmp_path):
    torch.save({"model": {}, "iteration": 9}, tmp_path / "model_0000009.pth")
    torch.save({"model": {}, "iteration": 19}, tmp_path / "model_0000019.pth")
    # The final weights of the same iteration as the last periodic checkpoint count once.
    torch.save({"model": {}, "iteration": 19}, tmp_path / "model_final.pth")
    torch.save({"model": {}}, tmp_path / "model_best.pth")
    (tmp_path / "model_0000029.pth.tmp").write_bytes(b"")
    listed = run_checkpoints(str(tmp_path))
    assert [iteration for iteration, _ in listed] == [9, 19]
    assert os.path.basename(listed[0][1]) == "model_0000009.pth"
    with pytest.raises(TrainingCurveError, match="no model_"):
        run_checkpoints(str(tmp_path / "nothing"))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    register_four_synthetic_images(tmp_path_factory.mktemp("curve_data"), TINY)
    output_dir = str(tmp_path_factory.mktemp("curve_run"))
    # The overfitting test's setting: the model learns the four images, so the AP that the curve
    # must reproduce is not 0.
    opts = [
        "DATASETS.TRAIN", f"('{TINY}',)", "DATASETS.TEST", f"('{TINY}',)",
        "SEGTOOLS.SOLVER.OPTIMIZER", "SGD", "SOLVER.WEIGHT_DECAY", "0.0001",
        "SOLVER.BASE_LR", "0.01", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "100",
        "SOLVER.CHECKPOINT_PERIOD", "50", "SOLVER.WARMUP_ITERS", "10", "SEED", "0",
        "SOLVER.STEPS", "(80,)",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
        "INPUT.RANDOM_FLIP", "none",
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128", "DATALOADER.NUM_WORKERS", "0",
        "SEGTOOLS.COUNT_CALIBRATION.DATASET", "", "OUTPUT_DIR", output_dir,
    ]  # fmt: skip
    args = engine.argument_parser().parse_args(["--config-file", CONFIG, *opts])
    results = engine.main(args)
    return output_dir, results


def test_the_curve_evaluates_every_checkpoint_at_its_training_time(tiny_run, tmp_path):
    run_dir, final_results = tiny_run
    output = str(tmp_path / "curve.png")
    argv = [
        "--run", f"tiny={run_dir}", "--run", f"again={run_dir}", "--dataset", TINY,
        "--metric", "segm/AP", "--target", "50", "--budget-minutes", "1", "--output", output,
    ]  # fmt: skip
    assert run_tool(plot_script.main, argv) == 0
    with open(str(tmp_path / "curve.csv")) as f:
        rows = list(csv.DictReader(f))
    # Checkpoints after iterations 50 and 100 (model_final is the second), for both runs.
    assert [(r["run"], r["iteration"]) for r in rows] == [
        ("tiny", "49"), ("tiny", "99"), ("again", "49"), ("again", "99")
    ]  # fmt: skip
    # Dated from the log: the second checkpoint came later, both within the run's time.
    minutes = [float(r["minutes"]) for r in rows[:2]]
    assert 0 <= minutes[0] < minutes[1] < 5
    # The final checkpoint's AP is the AP the training run reported for its final weights.
    assert final_results["segm"]["AP"] > 0
    assert float(rows[1]["segm/AP"]) == round(final_results["segm"]["AP"], 2)
    assert rows[:2] == [dict(r, run="tiny") for r in rows[2:]]
    image = cv2.imread(output)
    assert image is not None and image.shape[2] == 3 and np.ptp(image) > 0


def test_curve_mistakes_are_named(tiny_run, tmp_path, capsys):
    run_dir, _ = tiny_run
    output = str(tmp_path / "curve.png")
    cases = [
        (["--run", f"tiny={tmp_path}", "--dataset", TINY, "--output", output],
         f"--run {tmp_path}: no config.yaml"),
        (["--run", f"tiny={run_dir}", "--dataset", "no_such_set", "--output", output],
         "--dataset 'no_such_set' is not a registered dataset"),
        (["--run", f"tiny={run_dir}", "--dataset", TINY, "--output", str(tmp_path / "c.jpg")],
         "expected a .png file"),
        (["--run", f"tiny={run_dir}", "--dataset", TINY, "--metric", "segm/AP99",
          "--output", output], "--metric 'segm/AP99' is not among the results"),
    ]  # fmt: skip
    for argv, message in cases:
        assert run_tool(plot_script.main, argv) == 2
        assert message in capsys.readouterr().err
        assert not os.path.exists(output)
    with pytest.raises(SystemExit):
        plot_script.build_parser().parse_args(
            ["--run", run_dir, "--dataset", TINY, "--output", output]
        )
    assert "expected LABEL=RUN_DIR" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
