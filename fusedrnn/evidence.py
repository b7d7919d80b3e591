"""What GPU runs recorded, shipped in the package: which fused kernels passed their GPU tests, and
how fast each backend was. Dispatch (fusedrnn/dispatch.py) reads both; nothing here decides.

Two kinds of file in ``fusedrnn/gpu_records/``:

- ``validated.json``: one record per (GPU family, backend) whose GPU tests passed, written by
  ``python -m fusedrnn.evidence record <pytest report>`` at the end of ``bench/gpu_run.sh check``:
  the GPU, its capability and family (``sm_90``), torch/triton/CUDA/Python versions, the commit,
  the **kernel fingerprint** (a hash of the kernel sources the tests ran: ``kernels/*.py`` for
  Triton, ``csrc/`` for CUDA, recorded in the extension at build time), and for each cell the
  dtypes whose tests all passed. A record vouches only for the same family and the same kernel
  fingerprint (and, for Triton, the same Triton minor version: another compiler makes other code).
- ``dispatch_<family>.json``: the measured dispatch table, written by
  ``python -m fusedrnn.bench --write-dispatch`` on a GPU of that family: per cell, dtype, mode
  (inference / training) and bucket of H and B, the median time of every provider that ran,
  with the GPU, versions, commit and kernel fingerprints.

Tests point ``RECORDS_DIR`` elsewhere (and call ``clear_caches``) to try synthetic records.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

RECORDS_DIR = Path(__file__).resolve().parent / "gpu_records"
VALIDATED_FILE = "validated.json"
FORMAT = 1
DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float64: "float64"}
CELLS = ("gru", "lstm", "rnn_tanh", "rnn_relu")  # the cells a record vouches for, one by one


def clear_caches() -> None:
    for f in (_read_json, device_family, kernel_fingerprint):
        getattr(f, "cache_clear", lambda: None)()  # tests may have replaced one with a plain function


@functools.lru_cache(maxsize=None)
def _read_json(path: str) -> dict | None:
    p = Path(path)
    if not p.exists():
        return None
    with open(p) as f:
        return json.load(f)


@functools.lru_cache(maxsize=None)
def device_family(device: torch.device) -> str:
    """``sm_90`` for an H100/H200, ``sm_80`` for an A100: what kernels compiled for a GPU share."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def _hash_files(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda q: q.name):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def kernel_fingerprint(backend: str) -> str | None:
    """A hash of the kernel sources this installation runs for ``backend`` (None: unknown)."""
    if backend == "triton":
        try:
            from . import kernels
        except Exception:  # noqa: BLE001 - no triton: nothing to fingerprint
            return None
        return _hash_files(Path(kernels.__file__).parent.glob("*.py"))
    if backend == "cuda":
        from . import _ext

        info = _ext.build_info()
        return info.get("source_hash") if isinstance(info, dict) else None
    raise ValueError(f"no kernel fingerprint for backend {backend!r}")


def _triton_minor() -> str | None:
    try:
        import triton
    except Exception:  # noqa: BLE001
        return None
    return ".".join(triton.__version__.split(".")[:2])


# --- validation records ------------------------------------------------------------------------


def validation_records() -> list[dict]:
    data = _read_json(str(RECORDS_DIR / VALIDATED_FILE))
    return list(data.get("records", [])) if data else []


def validation_reasons(backend: str, cell: str, dtype: torch.dtype, family: str) -> list[str]:
    """Why no recorded GPU run vouches for ``backend``'s kernels for this cell, dtype and GPU family
    in this installation (empty: one does)."""
    where = f"{RECORDS_DIR.name}/{VALIDATED_FILE}"
    records = [r for r in validation_records() if r.get("backend") == backend and r.get("family") == family]
    if not records:
        return [f"no GPU run has validated the {backend} kernels on {family} ({where}; bench/gpu_run.sh check records one)"]
    fingerprint = kernel_fingerprint(backend)
    same_code = [r for r in records if r.get("fingerprint") == fingerprint and fingerprint is not None]
    if not same_code:
        got = ", ".join(sorted({f"{r.get('fingerprint')} (commit {r.get('commit')})" for r in records}))
        return [f"the {backend} kernels were validated on {family} for kernel sources {got}, but this installation's "
                f"are {fingerprint or 'unknown'}"]
    if backend == "triton":
        minor = _triton_minor()
        same_code = [r for r in same_code if r.get("triton_minor") == minor]
        if not same_code:
            return [f"the triton kernels were validated on {family} with another Triton version than {minor}"]
    name = DTYPE_NAMES.get(dtype, str(dtype))
    if any(name in r.get("passed", {}).get(cell, []) for r in same_code):
        return []
    covered = "; ".join(f"{c.upper()}: {', '.join(d) or 'none'}" for c, d in same_code[0].get("passed", {}).items())
    return [f"the {backend} kernels were validated on {family} for {covered}, not {cell.upper()} {name}"]


def _environment() -> dict:
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "triton": None,
        "commit": _git_commit(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        pass
    if torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
        cap = torch.cuda.get_device_capability(dev)
        env.update(gpu=torch.cuda.get_device_name(dev), capability=f"{cap[0]}.{cap[1]}", family=device_family(dev))
    return env


def _git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def summarize_report(lines: list[dict]) -> dict[str, dict]:
    """Per fused backend, what a GPU test run vouches for, from the JSON lines the test suite writes
    (tests/conftest.py, FUSEDRNN_VALIDATION_REPORT): one line per test marked ``validates(backend)``
    with its outcome and the cell and dtype it covers, and a last line with the session's exit
    status. A (cell, dtype) is validated when at least one test naming both passed and none
    covering it failed; a failed test that names no cell or no dtype (the grid barrier, say)
    withdraws everything it could cover. A run that did not finish vouches for nothing."""
    if not lines or lines[-1].get("event") != "finished":
        return {}
    out: dict[str, dict] = {}
    for backend in sorted({ln["backend"] for ln in lines if ln.get("event") == "test"}):
        tests = [ln for ln in lines if ln.get("event") == "test" and ln["backend"] == backend]
        passed: dict[str, set] = {c: set() for c in CELLS}
        failed = []
        for t in tests:
            dtypes = [t["dtype"]] if t.get("dtype") else None
            if t["outcome"] == "failed":
                failed.append(t)
            elif t["outcome"] == "passed" and dtypes and t.get("cell"):
                passed[t["cell"]].update(dtypes)
        for t in failed:
            cells = [t["cell"]] if t.get("cell") else list(CELLS)
            for c in cells:
                if t.get("dtype"):
                    passed[c].discard(t["dtype"])
                else:
                    passed[c].clear()
        out[backend] = {
            "passed": {c: sorted(d) for c, d in passed.items()},
            "tests": {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "skipped")},
            "failed": sorted(t["id"] for t in failed),
        }
    return out


def record_validation(report_path: str | Path, out_path: str | Path | None = None) -> list[dict]:
    """Turn a GPU test run's report into validation records for this GPU and installation, and
    write them into ``validated.json`` (records of other families or backends are kept; this
    run's replace any earlier record of the same family and backend). Returns the new records."""
    lines = [json.loads(ln) for ln in Path(report_path).read_text().splitlines() if ln.strip()]
    summary = summarize_report(lines)
    env = _environment()
    if "family" not in env:
        raise RuntimeError("record_validation needs the CUDA GPU the tests ran on")
    new = []
    for backend, s in summary.items():
        if not any(s["passed"].values()):
            continue
        new.append({**env, "backend": backend, "fingerprint": kernel_fingerprint(backend),
                    "triton_minor": _triton_minor(), **s})
    out = Path(out_path) if out_path else RECORDS_DIR / VALIDATED_FILE
    existing = (_read_json(str(out)) or {}).get("records", []) if out.exists() else []
    replaced = {(r["family"], r["backend"]) for r in new}
    records = [r for r in existing if (r.get("family"), r.get("backend")) not in replaced] + new
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"format": FORMAT, "records": records}, indent=1) + "\n")
    clear_caches()
    return new


# --- measured dispatch tables ------------------------------------------------------------------


def dispatch_table(family: str) -> dict | None:
    return _read_json(str(RECORDS_DIR / f"dispatch_{family}.json"))


def table_row(table: dict, cell: str, dtype: torch.dtype, training: bool, H: int, B: int, T: int) -> dict | None:
    """The row of a dispatch table whose buckets hold this call, or None."""
    mode = "training" if training else "inference"
    name = DTYPE_NAMES.get(dtype)
    for row in table.get("rows", []):
        if row["cell"] != cell or row["dtype"] != name or row["mode"] != mode:
            continue
        (h0, h1), (b0, b1) = row["H"], row["B"]
        t_range = row.get("T")
        if h0 <= H <= h1 and b0 <= B <= b1 and (t_range is None or t_range[0] <= T <= t_range[1]):
            return row
    return None


def write_dispatch_table(family: str, rows: list[dict], measured_on: dict, out_dir: str | Path | None = None) -> Path:
    out = Path(out_dir) if out_dir else RECORDS_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"dispatch_{family}.json"
    data = {
        "format": FORMAT, "family": family,
        "provenance": {**_environment(), **measured_on,
                       "fingerprints": {b: kernel_fingerprint(b) for b in ("cuda", "triton")}},
        "rows": rows,
    }
    path.write_text(json.dumps(data, indent=1) + "\n")
    clear_caches()
    return path


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m fusedrnn.evidence", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="record a GPU test run's report as validation evidence")
    rec.add_argument("report", help="the JSON-lines report (FUSEDRNN_VALIDATION_REPORT)")
    rec.add_argument("--out", help=f"where to write (default: the package's {VALIDATED_FILE})")
    sub.add_parser("show", help="print the validation records and dispatch tables shipped in the package")
    args = ap.parse_args(argv)
    if args.cmd == "record":
        new = record_validation(args.report, args.out)
        if not new:
            print("fusedrnn.evidence: the report vouches for nothing (no passing run of a fused backend); nothing recorded")
            return 1
        for r in new:
            print(f"recorded: {r['backend']} on {r['family']} ({r.get('gpu')}), fingerprint {r['fingerprint']}: "
                  + "; ".join(f"{c.upper()} {', '.join(d) or 'none'}" for c, d in r["passed"].items()))
        return 0
    print(json.dumps({"validated": validation_records(),
                      "tables": sorted(p.name for p in RECORDS_DIR.glob("dispatch_*.json"))}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
