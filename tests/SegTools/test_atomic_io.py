import errno
import json
import os
from unittest import mock

import numpy as np
import pytest

from segtools.atomic_io import atomic_directory, atomic_write_json


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


def test_a_full_disk_is_reported_with_the_path_the_user_asked_for(tmp_path):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "out" / "results.json"
    with mock.patch("os.replace", full), pytest.raises(OSError) as error:
        atomic_write_json(str(target), {"a": 1})
    assert (error.value.errno, error.value.filename) == (errno.ENOSPC, str(target))
    # Within a staging folder, the file is named where it would have been.
    run = atomic_directory(str(tmp_path / "run"))
    with pytest.raises(OSError) as error, run as staging, mock.patch("os.replace", full):
        atomic_write_json(os.path.join(staging, "images", "a.json"), {})
    assert error.value.filename == str(tmp_path / "run" / "images" / "a.json")
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(tmp_path / "out") == []
