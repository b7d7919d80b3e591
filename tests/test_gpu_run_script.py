"""bench/gpu_run.sh, the one command for a GPU machine, checked where CI can: its syntax, and a dry
run of both phases on this CPU machine (every stage that needs a GPU says "skipped: no GPU", and the
summary is still written)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_run.sh"


def test_syntax():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.parametrize("phase,stages", [
    ("check", ["build", "barrier", "slots", "tests", "record", "sanitizers"]),
    ("bench", ["build", "grid", "dispatch"]),
])
def test_dry_run_without_gpu(phase, stages, tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), "GPU_RUN_SKIP": "info", "GPU_RUN_TOTAL_S": "120"}
    env.pop("TRITON_INTERPRET", None)
    before = set((ROOT / "bench" / "results").glob("gpu-*"))
    proc = subprocess.run(["bash", str(SCRIPT), phase], env=env, capture_output=True, text=True, timeout=300)
    for d in set((ROOT / "bench" / "results").glob("gpu-*")) - before:
        assert d.name.endswith(f"{phase}-dryrun"), d
        shutil.rmtree(d)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = (tmp_path / "summary.txt").read_text()
    assert f"gpu_run.sh {phase} summary" in summary
    for stage in stages:
        line = next(ln for ln in summary.splitlines() if ln.startswith(stage + " "))
        assert "skipped" in line, line
    assert "info" in summary and "GPU_RUN_SKIP" in summary
    if phase == "check":
        assert "no validation report" in summary


def test_bad_phase_is_refused():
    proc = subprocess.run(["bash", str(SCRIPT), "everything"], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_sanitizer_cases_run_on_cpu_with_the_torch_backend():
    """The sanitizer script's own logic (shapes, upstream grads, the comparison) on the CPU: the torch
    backend against the reference, so a GPU session's sanitizer stage fails only for the kernels."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "sanitize_cases.py"), "--device", "cpu",
                           "--backends", "torch"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ok = [ln for ln in proc.stdout.splitlines() if " ok (" in ln]
    assert len(ok) >= 2 * (5 * 2 + 2), proc.stdout  # both cells: every fp32 call case (exact, TF32 flag) + stacks
    assert "FAILED" not in proc.stdout
