"""Test setup.

Default (CPU, CI): TRITON_INTERPRET=1 is set before anything imports triton, so the Triton kernels
run on the CPU, and tests marked ``gpu`` are skipped.
On a GPU machine: ``FUSEDRNN_TEST_DEVICE=cuda pytest -m gpu`` leaves the interpreter off and runs
them (bench/gpu_run.sh does this). No GPU is queried at import time.

Validation report: with ``FUSEDRNN_VALIDATION_REPORT=<path>``, every test marked
``validates(backend)`` appends one JSON line (backend, outcome, and the cell and dtype its
parameters name; a test naming a cell and no dtype runs float32) and the session appends a last
"finished" line; ``python -m fusedrnn.evidence record
<path>`` turns that into the package's GPU validation records (fusedrnn/evidence.py).
"""

import collections
import json
import os

TEST_DEVICE = os.environ.get("FUSEDRNN_TEST_DEVICE", "cpu")
if TEST_DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n: the workers are the parallelism; one intra-op thread each, so that n workers do
    # not run n x cores threads that contend for the cores.
    torch.set_num_threads(1)


def pytest_configure(config):
    # Under pytest -n --dist loadfile the order set below is the schedule; xdist's own reorder (by
    # test count per file) would put the few-test compile modules last, to finish alone.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    # The longest modules first: those marked ``compiles`` (whole nvcc or Triton compile passes),
    # then files by test count. Under pytest -n --dist loadfile each file runs on one worker, so the
    # long ones overlap with the rest instead of finishing alone at the end.
    per_file = collections.Counter(item.path for item in items)
    items.sort(key=lambda item: (item.get_closest_marker("compiles") is None, -per_file[item.path]))
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


def _coverage(params: dict) -> tuple[str | None, str | None]:
    """(cell, dtype) a validating test covers, read from its parameters (also inside tuples and
    case objects, one level deep). A test with a cell but no dtype parameter runs float32."""
    from fusedrnn.evidence import CELLS  # the cells a validation record names

    cell = dtype = None

    def look(value):
        nonlocal cell, dtype
        if isinstance(value, torch.dtype):
            dtype = dtype or str(value).replace("torch.", "")
        elif isinstance(value, str):
            if value in CELLS:
                cell = cell or value
            elif value in _DTYPE_ALIASES:
                dtype = dtype or _DTYPE_ALIASES[value]

    for value in params.values():
        look(value)
        if isinstance(value, (tuple, list)):
            for v in value:
                look(v)
        elif hasattr(value, "__dict__") and not isinstance(value, torch.nn.Module):
            for v in vars(value).values():
                look(v)
    if cell is not None and dtype is None:
        dtype = "float32"
    return cell, dtype


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
        cell, dtype = _coverage(getattr(getattr(item, "callspec", None), "params", {}))
        _append_report({"event": "test", "id": item.nodeid, "backend": marker.args[0], "outcome": report.outcome,
                        "cell": cell, "dtype": dtype})


def pytest_sessionfinish(session, exitstatus):
    if VALIDATION_REPORT:
        _append_report({"event": "finished", "exitstatus": int(exitstatus)})
