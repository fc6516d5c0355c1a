"""scripts/benchmark.py on tiny configs: one row per model, equal work, valid JSON."""

import json

import pytest
import torch

from segtools.benchmark import count_gflops

from helpers import REPO_ROOT, load_script, save_random_losnet

benchmark = load_script("benchmark")
export = load_script("export")

LOSNET = str(REPO_ROOT / "configs/LosNet/Base-LosNet.yaml")
MASK_RCNN = str(REPO_ROOT / "configs/Baselines/mask_rcnn_R_18_FPN_ore_synthetic_cpu.yaml")


def run_benchmark(tmp_path, argv) -> list:
    """The rows benchmark.py writes with `argv`."""
    out = tmp_path / "rows.json"
    assert benchmark.main([*argv, "--json", str(out)]) == 0
    with open(out) as f:
        return json.load(f)["rows"]


def test_two_configs_print_two_rows_and_valid_json(tmp_path, capsys):
    out = tmp_path / "benchmark.json"
    code = benchmark.main(
        ["--config-file", MASK_RCNN, LOSNET, "--input-size", "64", "96", "--device", "cpu",
         "--runs", "2", "--warmup", "1", "--top-k", "7", "--threads", "1", "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    table_rows = [line for line in printed.splitlines() if line.startswith("| ")][1:]
    assert len(table_rows) == 2
    assert "mask_rcnn_R_18_FPN_ore_synthetic_cpu" in table_rows[0]
    assert "Base-LosNet" in table_rows[1]
    assert "1 threads" in printed

    with open(out) as f:
        written = json.load(f)
    assert written["settings"]["threads"] == 1 and written["settings"]["input_size"] == [64, 96]
    first, second = written["rows"]
    assert first["ratio"] == 1.0 and second["ratio"] > 0
    assert first["instances"] == second["instances"] == 7  # equal work
    assert second["params_M"] < first["params_M"]
    for row in written["rows"]:
        assert row["min_ms"] <= row["median_ms"] <= row["max_ms"]
        assert row["GFLOPs"] > 0 and row["fp32_MB"] > 0
    # LosNet's dynamic mask head is a batched matrix product: counted, not listed as left out.
    assert "aten::baddbmm" not in second["uncounted_ops"]
    for row in written["rows"]:
        left_out = ", ".join(f"{op} ({n}x)" for op, n in sorted(row["uncounted_ops"].items()))
        assert (f"GFLOPs of {row['model']} leave out: {left_out}" in printed) == bool(left_out)


class _DynamicProduct(torch.nn.Module):
    """One aten::baddbmm of (3, 5, 4) x (3, 4, 7) batches, as a dynamic head computes."""

    def forward(self, features):
        return torch.baddbmm(torch.zeros(3, 5, 7), features, torch.ones(3, 4, 7))


def test_batched_matrix_products_count_their_multiply_adds():
    gflops, uncounted = count_gflops(_DynamicProduct(), (torch.ones(3, 5, 4),))
    assert gflops * 1e9 == pytest.approx(3 * 5 * 4 * 7) and uncounted == {}


def test_exported_model_row(tmp_path, capsys):
    weights = save_random_losnet(tmp_path / "losnet.pth")
    folder = tmp_path / "exported"
    equal_work = ["MODEL.LOSNET.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "5"]
    code = export.main(
        ["--config-file", LOSNET, "--weights", weights, "--format", "torchscript",
         "--output", str(folder), "--input-size", "64", "64", *equal_work]
    )  # fmt: skip
    assert code == 0
    rows = run_benchmark(
        tmp_path,
        ["--config-file", LOSNET, "--exported", str(folder), "--input-size", "64", "64",
         "--runs", "1", "--warmup", "0", "--top-k", "5", "--no-flops"],
    )  # fmt: skip
    assert [r["model"] for r in rows] == ["Base-LosNet", "Base-LosNet (torchscript)"]
    assert rows[1]["instances"] == 5 and rows[1]["params_M"] is None
    assert "(torchscript)" in capsys.readouterr().out


def test_paper_figures_beside_the_measured(tmp_path, capsys):
    paper = tmp_path / "table.csv"
    paper.write_text(
        "model,paper_row,paper_infer_ms,paper_size_MB\n"
        "mask_rcnn_R_18_FPN_ore_synthetic_cpu,Mask R-CNN,60.0,334\n"
        "Base-LosNet,LosNet,15.0,26\n"
    )
    rows = run_benchmark(
        tmp_path,
        ["--config-file", MASK_RCNN, LOSNET, "--input-size", "64", "64", "--runs", "1",
         "--warmup", "0", "--top-k", "3", "--no-flops", "--paper", str(paper)],
    )  # fmt: skip
    assert [r["paper_row"] for r in rows] == ["Mask R-CNN", "LosNet"]
    assert [r["paper_ratio"] for r in rows] == [1.0, 0.25]
    assert rows[1]["paper_size_MB"] == 26.0
    printed = capsys.readouterr().out
    assert "paper ratio" in printed and "0.25x" in printed
