import json
import os

import numpy as np
import pytest

from segtools.atomic_io import atomic_write_json


def test_json_is_strict_nan_and_infinities_become_null(tmp_path):
    path = tmp_path / "results.json"
    results = {"segm": {"AP": np.float64(36.5), "APl": float("nan")}, "sizes": (1.0, float("inf"))}

    atomic_write_json(str(path), results)

    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"segm": {"AP": 36.5, "APl": None}, "sizes": [1.0, None]}


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    atomic_write_json(str(path), {"AP": 1.0})

    with pytest.raises(TypeError):
        atomic_write_json(str(path), {"AP": object()})

    assert json.loads(path.read_text()) == {"AP": 1.0}
    assert os.listdir(tmp_path) == ["results.json"]
