"""
Test-session setup: every test reads datasets from a fresh temporary root, so Detectron2's builtin
registrations (read once, at import) and ours point to data the tests generate.
"""

import os
import shutil
import tempfile

import pytest

_ROOT_KEY = "DETECTRON2_DATASETS"


def pytest_configure(config):
    root = tempfile.mkdtemp(prefix="test-datasets-")
    config.stash_datasets_root = root
    os.environ[_ROOT_KEY] = root


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "stash_datasets_root", ""), ignore_errors=True)


@pytest.fixture(scope="session")
def builtin_datasets_root():
    """The session's datasets root, holding tiny COCO 2017 val, LVIS v1 val and Cityscapes val."""
    # Imported here: it imports detectron2.data, which must first see the root set above.
    from dataset_builders import write_cityscapes_val, write_coco_val2017, write_lvis_v1_val

    root = os.environ[_ROOT_KEY]
    write_coco_val2017(root)
    write_lvis_v1_val(root)
    write_cityscapes_val(root)
    return root


@pytest.fixture(scope="module")
def single_torch_thread():
    """
    Torch on one intra-op thread for a module's tests: their tensors are small, and with the
    machine's cores busy (other tests, other jobs), two threads made each small convolution wait
    for the other thread: a LosNet training iteration took over 10 times as long.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
