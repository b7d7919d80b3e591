"""Test setup. TRITON_INTERPRET must be set before anything imports triton, so the Triton kernels
run on the CPU (DESIGN.md: 'Testing without a GPU'). No GPU is queried at import time."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none visible); runs in bench/gpu_run.sh")
    have_gpu = None
    for item in items:
        if "gpu" in item.keywords:
            if have_gpu is None:
                have_gpu = torch.cuda.is_available()
            if not have_gpu:
                item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
