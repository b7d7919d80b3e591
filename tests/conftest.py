"""Test setup.

Default (CPU, CI): TRITON_INTERPRET=1 is set before anything imports triton, so the Triton kernels
run on the CPU (DESIGN.md, 'Testing without a GPU'), and tests marked ``gpu`` are skipped.
On a GPU machine: ``FUSEDRNN_TEST_DEVICE=cuda pytest -m gpu`` leaves the interpreter off and runs
them (bench/gpu_run.sh does this). No GPU is queried at import time.
"""

import os

TEST_DEVICE = os.environ.get("FUSEDRNN_TEST_DEVICE", "cpu")
if TEST_DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    if TEST_DEVICE != "cuda":
        reason = "GPU test: run with FUSEDRNN_TEST_DEVICE=cuda on a GPU machine (bench/gpu_run.sh)"
    elif not torch.cuda.is_available():
        reason = "GPU test: FUSEDRNN_TEST_DEVICE=cuda but torch sees no CUDA device"
    else:
        return
    for item in gpu_items:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
