"""The CUDA kernels compile standalone (no torch headers) for sm_80 and sm_90, and ptxas reports
no register spills in the persistent kernels. Needs nvcc only, no GPU; skipped without nvcc.

Run with -s to see the register / spill table.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parent.parent / "csrc"
KERNEL_SOURCES = ("gru_fwd.cu", "gru_bwd.cu", "lstm_fwd.cu", "lstm_bwd.cu", "launch.cu")
ARCHS = ("80", "90")


def _nvcc() -> str | None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


NVCC = _nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (CUDA_HOME, /usr/local/cuda, PATH)")

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for 'sm_(\d+)'")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


def parse_ptxas(text: str) -> dict:
    """{(mangled kernel, arch): {"stack", "spill_stores", "spill_loads", "registers"}} from -Xptxas -v output."""
    out, current = {}, None
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = (m.group(1), m.group(2))
            out[current] = {}
            continue
        if current is None:
            continue
        m = _SPILL.search(line)
        if m:
            out[current].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = _REGS.search(line)
        if m:
            out[current]["registers"] = int(m.group(1))
    return out


def _compile(source: str, tmp: Path) -> tuple[str, int, str]:
    cmd = [NVCC, "-std=c++17", "-O3", "--expt-relaxed-constexpr", "-Xptxas=-v", "-c", str(CSRC / source),
           "-o", str(tmp / (source + ".o")), f"-I{CSRC}"]
    for arch in ARCHS:
        cmd += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return source, proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def ptxas_reports(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nvcc")
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda s: _compile(s, tmp), KERNEL_SOURCES))


def test_kernel_sources_compile(ptxas_reports):
    failed = [(src, log[-3000:]) for src, rc, log in ptxas_reports if rc != 0]
    assert not failed, "nvcc failed:\n" + "\n\n".join(f"{s}:\n{log}" for s, log in failed)


def test_no_spills_in_persistent_kernels(ptxas_reports):
    rows, bad, seen = [], [], set()
    for src, rc, log in ptxas_reports:
        assert rc == 0, f"{src} failed to compile"
        for (name, arch), info in parse_ptxas(log).items():
            if "persistent_kernel" not in name:
                continue
            seen.add((src, arch))
            rows.append(f"sm_{arch} {info.get('registers', '?'):>4} regs  stack {info.get('stack', '?'):>4}  "
                        f"spill st/ld {info.get('spill_stores', '?')}/{info.get('spill_loads', '?')}  {name}")
            if info.get("spill_stores", 1) or info.get("spill_loads", 1) or info.get("stack", 1):
                bad.append(rows[-1])
    print("\n" + "\n".join(rows))
    assert {(s, a) for s in KERNEL_SOURCES for a in ARCHS} <= seen, "a kernel file or arch reported no kernel"
    assert not bad, "register spills / stack use in persistent kernels:\n" + "\n".join(bad)


def test_instantiation_count(ptxas_reports):
    # Compile time on 2 cores is a budget: 4 instantiations (fp16, bf16, fp32-TF32, fp32-FMA) per file.
    for src, rc, log in ptxas_reports:
        kernels = {name for name, _ in parse_ptxas(log) if "persistent_kernel" in name}
        expected = 1 if src == "launch.cu" else 4
        assert len(kernels) == expected, f"{src}: {sorted(kernels)}"


def test_kernel_sources_do_not_include_torch():
    # Keeps this test fast and torch-free; the torch glue lives in csrc/rnn_ops.cpp.
    for path in [CSRC / s for s in KERNEL_SOURCES] + [CSRC / "rnn_kernels.cuh", CSRC / "rnn_launch.h"]:
        includes = [line for line in path.read_text().splitlines() if line.startswith("#include")]
        assert not any("torch" in line or "ATen" in line or "c10" in line for line in includes), (path, includes)
