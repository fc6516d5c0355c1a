"""
Test-session setup: every test reads datasets from a fresh temporary root, so Detectron2's builtin
registrations (read once, at import) and ours point to data the tests generate.
"""

import os
import shutil
import tempfile

_ROOT_KEY = "DETECTRON2_DATASETS"


def pytest_configure(config):
    root = tempfile.mkdtemp(prefix="test-datasets-")
    config.stash_datasets_root = root
    os.environ[_ROOT_KEY] = root


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "stash_datasets_root", ""), ignore_errors=True)
