"""The SBR-CNN tests run torch on one thread."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    # The tests' tensors are tiny: with the machine's cores busy (other tests, other jobs), two
    # intra-op threads made each small convolution wait for the other thread, 15 times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
