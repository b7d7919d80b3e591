"""Test setup.

Default (CPU, CI): TRITON_INTERPRET=1 is set before anything imports triton, so the Triton kernels
run on the CPU, and tests marked ``gpu`` are skipped.
On a GPU machine: ``FUSEDRNN_TEST_DEVICE=cuda pytest -m gpu`` leaves the interpreter off and runs
them (bench/gpu_run.sh does this). No GPU is queried at import time.

Validation report: with ``FUSEDRNN_VALIDATION_REPORT=<path>``, every test marked
``validates(backend)`` appends one JSON line (backend, outcome, and its ``cell`` / ``dtype``
parameters) and the session appends a last "finished" line; ``python -m fusedrnn.evidence record
<path>`` turns that into the package's GPU validation records (fusedrnn/evidence.py).
"""

import json
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


VALIDATION_REPORT = os.environ.get("FUSEDRNN_VALIDATION_REPORT")
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp64": "float64", "tf32": "float32"}


def _param_name(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    text = str(value)
    return _DTYPE_ALIASES.get(text, text)


def _append_report(line: dict) -> None:
    with open(VALIDATION_REPORT, "a") as f:
        f.write(json.dumps(line) + "\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    marker = item.get_closest_marker("validates")
    if not VALIDATION_REPORT or marker is None:
        return
    report = outcome.get_result()
    # One line per test: its call phase, or the setup phase when that failed or skipped it.
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        params = getattr(getattr(item, "callspec", None), "params", {})
        _append_report({"event": "test", "id": item.nodeid, "backend": marker.args[0], "outcome": report.outcome,
                        "cell": _param_name(params.get("cell")),
                        "dtype": _param_name(params.get("dtype", params.get("dtype_name")))})


def pytest_sessionfinish(session, exitstatus):
    if VALIDATION_REPORT:
        _append_report({"event": "finished", "exitstatus": int(exitstatus)})
