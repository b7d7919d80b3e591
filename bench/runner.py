"""Runs a grid of measurements (case × provider × mode × dtype), prints a table per case, writes
CSV, JSON and a ratio plot. Used on a GPU by ``python -m fusedrnn.bench`` and, on a scaled-down
grid, by the CPU demonstration (demo.py)."""

from __future__ import annotations

import csv
import datetime
import gc
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from . import floors, providers
from .cases import DTYPES, Case, make_inputs
from .providers import TORCH_NN, Unavailable
from .timing import measure, peak_memory_mib

ROOT = Path(__file__).resolve().parent.parent
CSV_FIELDS = (
    "case", "cell", "B", "H", "T", "layers", "bidirectional", "packed", "residual", "stream", "zoneout", "layernorm",
    "tokens", "scaled_from", "provider", "mode", "dtype", "device", "gpu", "status", "reason", "note",
    "median_ms", "p20_ms", "p80_ms", "mean_ms", "reps", "timing_method",
    "us_per_step", "tokens_per_s", "ratio_torch_nn", "floor_ms", "floor_kind", "ratio_floor",
    "roofline_ms", "roofline_note", "barrier_floor_ms", "barrier_note", "peak_extra_mib",
    "flops", "min_bytes", "achieved_tflops",
    "torch", "triton", "cuda", "cudnn", "python", "git_commit", "timestamp", "label",
)


# --- environment ---------------------------------------------------------------------------------

def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        if not sha:
            return "unknown (no git checkout)"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except Exception as e:  # noqa: BLE001 - git absent, not a repo, timeout
        return f"unknown ({type(e).__name__})"


def environment(device) -> dict:
    dev = torch.device(device)
    try:
        import triton

        triton_version = triton.__version__
    except Exception as e:  # noqa: BLE001
        triton_version = f"not importable ({type(e).__name__})"
    env = {
        "device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"none (CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": str(torch.version.cuda),
        "cudnn": str(torch.backends.cudnn.version()) if dev.type == "cuda" else "n/a",
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", ""),
        "cpu_threads": torch.get_num_threads(),
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        env["sm_count"] = props.multi_processor_count
        env["compute_capability"] = f"{props.major}.{props.minor}"
    try:
        from fusedrnn import _ext

        env["fusedrnn_C"] = _ext.build_info()
    except Exception as e:  # noqa: BLE001
        env["fusedrnn_C"] = f"{type(e).__name__}: {e}"
    return env


# --- one measurement -----------------------------------------------------------------------------

def _case_fields(case: Case) -> dict:
    return {
        "case": case.id, "cell": case.cell, "B": case.B, "H": case.H, "T": case.T, "layers": case.layers,
        "bidirectional": case.bidirectional, "packed": case.packed, "residual": case.residual,
        "stream": case.stream, "zoneout": case.zoneout, "layernorm": case.layernorm, "tokens": case.tokens(), "scaled_from": case.scaled_from or "",
    }


def _short(e: BaseException, limit: int = 300) -> str:
    s = f"{type(e).__name__}: {e}" if not isinstance(e, Unavailable) else str(e)
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def run_one(case: Case, provider: str, mode: str, dtype_name: str, device, *, quick: bool) -> dict:
    row = {**_case_fields(case), "provider": provider, "mode": mode, "dtype": dtype_name, "device": str(device),
           "note": providers.caveat(case, provider)}  # what this provider runs unlike the case (torch.nn: no zoneout / LayerNorm)
    dtype = DTYPES[dtype_name]
    call = None
    try:
        inp = make_inputs(case, dtype, device, mode)
        call = providers.build(inp, provider, mode)
        warm, rep = (10.0, 40.0) if quick else (25.0, 100.0)
        t = measure(call, device, warmup_ms=warm, rep_ms=rep, min_reps=3 if quick else 5)
        row.update(status="ok", reason="", **t.as_dict(), timing_method=t.method)
        row["peak_extra_mib"] = peak_memory_mib(call, device)
        row["us_per_step"] = t.median_ms * 1e3 / case.T
        row["tokens_per_s"] = case.tokens() / (t.median_ms * 1e-3)
        row["achieved_tflops"] = case.flops(mode) / (t.median_ms * 1e-3) / 1e12
    except Unavailable as e:
        row.update(status="unavailable", reason=_short(e))
    except torch.cuda.OutOfMemoryError as e:
        row.update(status="error", reason=_short(e))
    except Exception as e:  # noqa: BLE001 - one failing provider must not stop the grid
        row.update(status="error", reason=_short(e))
        if os.environ.get("FUSEDRNN_BENCH_TRACEBACK"):
            traceback.print_exc()
    finally:
        del call
        if torch.device(device).type == "cuda":  # free this measurement's memory before the next
            gc.collect()
            torch.cuda.empty_cache()
    return row


def add_floors(rows: list[dict], env: dict, device, *, measure_barrier: bool = True) -> dict:
    """Fill ratio_torch_nn and the floors into rows; returns {(case, mode, dtype): floor info}."""
    by_key: dict = {}
    for r in rows:
        by_key.setdefault((r["case"], r["mode"], r["dtype"]), []).append(r)
    on_gpu = torch.device(device).type == "cuda"
    barrier_cache: dict = {}
    info = {}
    for (case_id, mode, dtype_name), group in by_key.items():
        case = group[0]["_case"]
        roof, roof_note, bar, bar_note = None, "no roofline on CPU (the table holds GPU peaks only)", None, "GPU only"
        if on_gpu:
            roof, roof_note = floors.roofline_ms(case, mode, DTYPES[dtype_name], env["gpu"])
            if measure_barrier:
                steps = floors.barrier_count(case, mode)
                if steps not in barrier_cache:
                    barrier_cache[steps] = floors.barrier_floor_ms(steps, env.get("sm_count", 1))
                bar, bar_note = barrier_cache[steps]
        candidates = [(v, k) for v, k in ((roof, "roofline"), (bar, "barrier")) if v is not None]
        floor_ms, floor_kind = max(candidates) if candidates else (None, "")
        base = next((r for r in group if r["provider"] == TORCH_NN and r.get("status") == "ok"), None)
        for r in group:
            r.update(roofline_ms=roof, roofline_note=roof_note, barrier_floor_ms=bar, barrier_note=bar_note,
                     floor_ms=floor_ms, floor_kind=floor_kind,
                     flops=case.flops(mode), min_bytes=case.min_bytes(mode, torch.finfo(DTYPES[dtype_name]).bits // 8))
            if r.get("status") == "ok":
                r["ratio_torch_nn"] = r["median_ms"] / base["median_ms"] if base else None
                r["ratio_floor"] = r["median_ms"] / floor_ms if floor_ms else None
        info[f"{case_id}|{mode}|{dtype_name}"] = {
            "roofline_ms": roof, "roofline_note": roof_note, "barrier_floor_ms": bar, "barrier_note": bar_note,
            "floor_ms": floor_ms, "floor_kind": floor_kind,
        }
    return info


# Providers measured first when a time budget may cut the grid short: the ratio baseline and the
# fused kernels over every case before the slower baselines.
TIERS = {"torch-nn": 0, "fusedrnn-triton": 0, "fusedrnn-cuda": 0, "fusedrnn-torch": 0, "fusedrnn-reference": 0,
         "torch-nn-nocudnn": 1, "cell-loop": 1, "cell-loop-compiled": 2,
         "torch-nn-graphed": 1, "fusedrnn-triton-graphed": 1, "fusedrnn-cuda-graphed": 1}


def run_grid(cases: list[Case], provider_names, modes, dtype_names, device, *, quick: bool,
             label: str, progress: bool = True, budget_s: float | None = None,
             partial_dir: Path | None = None) -> tuple[list[dict], dict, dict]:
    """Measure the grid; with ``budget_s`` no measurement starts after that many seconds (the rest are
    recorded as skipped); with ``partial_dir`` each row is appended to partial.jsonl as it lands, so
    a run killed from outside keeps what it measured."""
    env = environment(device)
    env["label"] = label
    grid = [(c, p, m, d) for c in cases for m in modes for d in dtype_names for p in provider_names
            if providers.applies(c, p, m)]
    grid.sort(key=lambda g: TIERS.get(g[1], 3))  # stable: case order kept within a tier
    try:
        from tqdm import tqdm

        it = tqdm(grid, desc=label[:30], unit="run", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    except ImportError:
        it = grid
    partial = None
    if partial_dir is not None:
        Path(partial_dir).mkdir(parents=True, exist_ok=True)
        partial = open(Path(partial_dir) / "partial.jsonl", "a")
    t0 = time.perf_counter()
    rows = []
    for case, prov, mode, dt in it:
        if hasattr(it, "set_postfix_str"):
            it.set_postfix_str(f"{case.id} {prov} {mode} {dt}")
        if budget_s is not None and time.perf_counter() - t0 > budget_s:
            row = {**_case_fields(case), "provider": prov, "mode": mode, "dtype": dt, "device": str(device),
                   "status": "skipped", "reason": f"time budget of {budget_s:.0f} s spent"}
        else:
            row = run_one(case, prov, mode, dt, device, quick=quick)
        if partial is not None:
            partial.write(json.dumps(row, default=str) + "\n")
            partial.flush()
        row["_case"] = case
        rows.append(row)
    # Restore the grid's natural order (case, mode, dtype, provider) for the tables.
    order = {(c.id, p, m, d): i for i, (c, p, m, d) in
             enumerate((c, p, m, d) for c in cases for m in modes for d in dtype_names for p in provider_names
                       if providers.applies(c, p, m))}
    rows.sort(key=lambda r: order[(r["case"], r["provider"], r["mode"], r["dtype"])])
    floor_info = add_floors(rows, env, device)
    for r in rows:
        r.pop("_case", None)
        for k in ("gpu", "torch", "triton", "cuda", "cudnn", "python", "git_commit", "timestamp"):
            r[k] = env[k]
        r["label"] = label
    if partial is not None:
        partial.close()
    return rows, env, floor_info


# --- output --------------------------------------------------------------------------------------

def _fmt(v, spec: str, empty: str = "-") -> str:
    if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
        return empty
    return format(v, spec)


def format_tables(rows: list[dict], floor_info: dict, label: str) -> str:
    out = []
    cases = list(dict.fromkeys(r["case"] for r in rows))
    for cid in cases:
        group = [r for r in rows if r["case"] == cid]
        r0 = group[0]
        shape = f"{r0['cell'].upper()} B={r0['B']} H={r0['H']} T={r0['T']} layers={r0['layers']}"
        shape += " bidir" if r0["bidirectional"] else ""
        shape += f" packed ({r0['tokens']} tokens)" if r0["packed"] else ""
        shape += " residual" if r0["residual"] else ""
        shape += f" zoneout={r0['zoneout']:g}" if r0.get("zoneout") else ""
        shape += " layernorm" if r0.get("layernorm") else ""
        scaled = f" [scaled down from {r0['scaled_from']}]" if r0["scaled_from"] else ""
        out.append(f"\n== {cid}: {shape}{scaled}   ({label})")
        head = (f"{'mode':<17}{'dtype':<6}{'provider':<20}{'median ms':>10}{'p20-p80 ms':>18}{'us/step':>10}"
                f"{'tokens/s':>11}{'x torch-nn':>11}{'x floor':>9}{'peak MiB':>10}  note")
        out.append(head)
        out.append("-" * len(head))
        for mode in dict.fromkeys(r["mode"] for r in group):
            for dt in dict.fromkeys(r["dtype"] for r in group):
                for r in (g for g in group if g["mode"] == mode and g["dtype"] == dt):
                    if r["status"] != "ok":
                        out.append(f"{mode:<17}{dt:<6}{r['provider']:<20}{r['status']:>10}  {r['reason']}")
                        continue
                    spread = f"{r['p20_ms']:.3f}-{r['p80_ms']:.3f}"
                    out.append(
                        f"{mode:<17}{dt:<6}{r['provider']:<20}{r['median_ms']:>10.3f}{spread:>18}"
                        f"{r['us_per_step']:>10.1f}{r['tokens_per_s']:>11.3g}{_fmt(r['ratio_torch_nn'], '.2f'):>11}"
                        f"{_fmt(r['ratio_floor'], '.2f'):>9}{_fmt(r['peak_extra_mib'], '.1f'):>10}"
                        + (f"  {r['note']}" if r.get("note") else "")
                    )
                fi = floor_info.get(f"{cid}|{mode}|{dt}", {})
                if fi.get("floor_ms") is not None or "GPU only" not in str(fi.get("barrier_note", "GPU only")):
                    out.append(f"{'':<23}floor: roofline {_fmt(fi.get('roofline_ms'), '.3f')} ms "
                               f"({fi.get('roofline_note')}); barrier {_fmt(fi.get('barrier_floor_ms'), '.3f')} ms "
                               f"({fi.get('barrier_note')})")
    return "\n".join(out)


def geomean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def evaluate_targets(rows: list[dict]) -> list[dict]:
    """The lead's targets (bench/README.md), computed only from measured rows, per fused provider."""
    ok = [r for r in rows if r["status"] == "ok"]

    def t(prov, case=None, mode=None, dtypes=None):
        return {(r["case"], r["mode"], r["dtype"]): r for r in ok if r["provider"] == prov
                and (case is None or r["case"] == case) and (mode is None or r["mode"] == mode)
                and (dtypes is None or r["dtype"] in dtypes)}

    results = []

    def add(prov, name, value, passed, detail=""):
        results.append({"provider": prov, "target": name,
                        "value": value, "status": "not measured" if value is None else ("PASS" if passed else "FAIL"),
                        "detail": detail})

    for prov in ("fusedrnn-triton", "fusedrnn-cuda"):
        fused = t(prov, mode="forward+backward", dtypes=("bf16", "fp16"))
        ratios = {k: r["ratio_torch_nn"] for k, r in fused.items() if r.get("ratio_torch_nn")}
        g = geomean(list(ratios.values()))
        add(prov, "geomean fused/cuDNN, fwd+bwd bf16/fp16 <= 0.8", g, g is not None and g <= 0.8, f"{len(ratios)} cases")
        worst = max(ratios.items(), key=lambda kv: kv[1]) if ratios else None
        add(prov, "no case above 1.1 x cuDNN (fwd+bwd bf16/fp16)", worst[1] if worst else None,
            worst is not None and worst[1] <= 1.1, "/".join(worst[0]) if worst else "")
        gru = {k: v for k, v in ratios.items() if k[0] in ("deepbench-gru", "stream-gru", "residual-gru")}
        gmax = max(gru.values()) if gru else None
        add(prov, "GRU cases <= 0.5 x cuDNN (fwd+bwd bf16/fp16, worst)", gmax, gmax is not None and gmax <= 0.5)
        res = [r["ratio_torch_nn"] for r in t(prov, case="residual-gru").values() if r.get("ratio_torch_nn")]
        rmax = max(res) if res else None
        add(prov, "residual-gru <= 0.6 x torch.nn per layer + add (worst mode/dtype)", rmax, rmax is not None and rmax <= 0.6)
        fl = [r["median_ms"] for r in t(prov, case="flashrnn", mode="forward", dtypes=("bf16", "fp16")).values()]
        fmax = max(fl) if fl else None
        add(prov, "flashrnn forward <= 2.0 ms (bf16/fp16, worst)", fmax, fmax is not None and fmax <= 2.0)
        loop = t("cell-loop")
        speedups = [loop[k]["median_ms"] / r["median_ms"] for k, r in t(prov).items() if k in loop]
        sg = geomean(speedups)
        add(prov, "geomean speed-up over the eager per-step loop >= 30x", sg, sg is not None and sg >= 30,
            f"min {min(speedups):.1f}x over {len(speedups)}" if speedups else "")
        small = [r["median_ms"] / r["barrier_floor_ms"] for r in t(prov, mode="forward").values()
                 if r["B"] <= 16 and r.get("barrier_floor_ms")]
        smax = max(small) if small else None
        add(prov, "<= 1.5 x barrier floor at B <= 16 (forward, worst)", smax, smax is not None and smax <= 1.5)
    return results


def format_targets(targets: list[dict]) -> str:
    lines = [f"{'provider':<17}{'target':<66}{'value':>10}  status"]
    for t_ in targets:
        lines.append(f"{t_['provider']:<17}{t_['target']:<66}{_fmt(t_['value'], '.3f'):>10}  {t_['status']}"
                     + (f"  ({t_['detail']})" if t_["detail"] else ""))
    return "\n".join(lines)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-")[:40] or "device"


def default_out_dir(env: dict, label: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    gpu = "cpu-demo" if label.startswith("CPU") else _slug(env["gpu"])
    return ROOT / "bench" / "results" / f"{stamp}-{gpu}"


def write_results(out_dir: Path, rows: list[dict], env: dict, floor_info: dict, extra: dict | None = None) -> dict:
    """results.csv (flat), results.json (meta + results[case][provider][mode][dtype]), ratios.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "results.csv", "json": out_dir / "results.json", "png": out_dir / "ratios.png"}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    nested: dict = {}
    for r in rows:
        nested.setdefault(r["case"], {}).setdefault(r["provider"], {}).setdefault(r["mode"], {})[r["dtype"]] = r
    doc = {"meta": env, "floors": floor_info, "results": nested, **(extra or {})}
    with open(paths["json"], "w") as f:
        json.dump(doc, f, indent=1, default=str)
    try:
        from .plot import plot_ratios

        plot_ratios(rows, paths["png"], title=f"{env.get('label', '')} — {env['gpu']}")
    except Exception as e:  # noqa: BLE001 - a missing matplotlib must not lose the numbers
        print(f"plot skipped: {type(e).__name__}: {e}", file=sys.stderr)
        paths.pop("png")
    return paths
