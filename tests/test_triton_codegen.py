"""What the Triton compiler makes of the kernels for real GPUs, checked without a GPU.

The interpreter (what tests/test_triton_kernels.py runs on the CPU) accepts code that the real
compiler rejects, so every shipped configuration is compiled here with ``triton.compile`` for
sm_80 (with the plans an A100 gets) and sm_90 (an H100's / H200's), with both tested Tritons, 3.8
and 3.6 (the GPU machine's): the environment's own, and the other installed on first use into a
side directory (``side_triton_dir``), and the compiled code is checked for what the latency model
(bench/model_triton.py) and the memory model rely on:

- it compiles; no spills (no local-memory STL/LDL in the SASS of the cubin Triton built);
- shared memory within the device's opt-in limit, and the plan's estimate not below Triton's;
- fp16/bf16 (and TF32) products on tensor cores (mma.sync / wgmma);
- persistent (grid-barrier) kernels: the loads of a step are in flight together: with W_hh
  resident, its slice is loaded before the step loop and never inside it, the product's operand
  is one group of loads, and everything a step needs that other programs do not write is
  loaded before the barrier wait; with W_hh streamed, the K loop's operand goes through
  asynchronous copies (cp.async / LDGSTS) with the next chunks in flight;
- the grid barrier's shape in the PTX: the release atomic is executed by one thread per program
  (predicated on thread 0), right after a CTA barrier (bar.sync) with no global store between
  them, and the wait polls with an acquire load. Planted broken barriers compiled here show that
  the check rejects each way of getting it wrong (with both Tritons: 3.6 predicates the atomic on
  "lane 0 and warp 0", 3.8 on "thread 0"; the check evaluates the predicate for every thread).

"What runs" is compiled, with sm_90 (H100) plans, at the exact kernel specializations a call gets:

- every plan the table (kernels/plan.py) emits for the benchmark grid (bench/cases.py: every case
  x bf16, fp16, exact fp32 (FMA product), TF32; forward and backward), crossed with the feature
  flags: forward HAS_BIAS x HAS_RES x HAS_LEN x SAVE_ACT (16 sets, REVERSE alternating with their
  parity: the reversed walk only changes the step's scalar time index; compiled both ways, the
  deepbench-lstm forward's registers and spills were identical in all 16 pairs, Triton 3.8),
  backward HAS_LEN x HAS_DY x REVERSE (8); fp16 gets the default sets below instead of the cross
  (its plans are bf16's; of 115 sm_90 specializations compiled both ways, 114 had the same
  registers and one differed by 2, Triton 3.8); plus the exact flag sets the benchmark itself
  runs (both directions of a bidirectional case, forward-only and training; a zoneout case with
  the zoneout modes it runs: training masks ZO_H/ZO_C=1, evaluation 2);
- for the tests' shapes (and the table's corners: tiny H, huge B, H beyond what stays on chip),
  every code path (strategy x W residency x warp split x direction x cell x dtype/precision) at
  its largest tile, with all flags on, all off, and the torch.nn defaults (bias on; saved
  activations on and off; backward with dy); and all flags on with zoneout (training masks, which
  add the Philox rounds to the step, forward and backward; evaluation, forward); and the LayerNorm
  cells (LN=True: the step's passes over the unit blocks, GRU and LSTM) on the plans they get
  (make_plan(layernorm=True): batch_tile, smaller unit blocks), at each code path's largest
  tile: all flags on (with and without
  zoneout in training), torch.nn's defaults in training and inference;
- sm_80 (A100 plans): the code paths at their largest tile, flags all on and all off.

Register pressure, not the tile size, decides spills (ptxas spilled one tile under some flag sets
and not under their supersets), hence the flag cross. Each distinct specialization is compiled
once, in parallel (one process per CPU), and its result cached on disk
(~/.cache/fusedrnn/triton-codegen, or $FUSEDRNN_CODEGEN_CACHE) keyed by the Triton version, the
kernel sources (kernels/*.py but plan.py, whose choices are part of the key) and the code in this
file that reads the compiled kernel: a warm run compiles nothing. Cold, it is ~2,070
specializations per Triton version (measured here: 50 minutes for both versions on this 2-core
machine, shared with other jobs); an edit to a kernel source makes the next run cold, an edit to the plan recompiles only the specializations it changes.

The compiles run in subprocesses with the interpreter off (conftest.py sets TRITON_INTERPRET=1,
under which @triton.jit yields interpreter functions). Run this file as a script to see the
table: ``python tests/test_triton_codegen.py [--triton 3.6.0]``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.compiles
ROOT = Path(__file__).resolve().parents[1]
# The Triton versions of the two tested stacks (CI legs): each compile check runs with both, the
# environment's own and a side install of the other (side_triton_dir).
TRITON_VERSIONS = ("3.8.0", "3.6.0")
ARCHS = (80, 90)
# (dtype, tl.dot input precision) as the launcher passes them on a GPU
DTYPES = [("bfloat16", "ieee"), ("float16", "ieee"), ("float32", "ieee"), ("float32", "tf32"),
          ("float64", "ieee")]
SHORT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64", "int32": "i32"}
ELEM = {"bfloat16": 2, "float16": 2, "float32": 4, "float64": 8}
# (B, H): the benchmark cases (bench/cases.py), the tests' shapes, and the corners of the table
# (tiny H, huge B, H beyond what stays on chip).
SHAPES = [(16, 768), (64, 512), (128, 1024), (32, 1024), (1, 512), (4, 256), (32, 512),
          (1, 1), (3, 3), (17, 3), (3, 40), (40, 24), (17, 100), (3, 257), (1, 257), (24, 100),
          (16, 2048), (8, 4096), (4096, 128), (1000, 2048)]
COMPILE_TIMEOUT_S = 3000
FLAG_SHORT = {"HAS_BIAS": "bias", "HAS_RES": "res", "HAS_LEN": "len", "REVERSE": "rev", "SAVE_ACT": "save",
              "HAS_DY": "dy", "ZO_H": "zo_h", "ZO_C": "zo_c", "LN": "ln"}


@dataclasses.dataclass(frozen=True)
class Config:
    kernel: str  # "rnn_fwd_kernel" | "rnn_bwd_kernel" | "barrier_floor_kernel" | a planted kernel
    dtype: str
    constexprs: tuple  # sorted (name, value) pairs
    num_warps: int
    num_stages: int
    cc: int
    maxnreg: int | None = None
    plan: str = ""  # the plan in words
    smem_estimate: int = 0

    @property
    def c(self) -> dict:
        return dict(self.constexprs)

    @property
    def compile_key(self) -> tuple:
        """What the compiled kernel depends on (the plan's words and estimate do not)."""
        return (self.kernel, self.dtype, self.constexprs, self.num_warps, self.num_stages, self.cc, self.maxnreg)

    def label(self) -> str:
        c = self.c
        if "BB" not in c:
            return f"{self.kernel} {' '.join(f'{k}={v}' for k, v in self.constexprs)}"
        path = ("grid-barrier" if c["USE_GRID_BARRIER"] else "cta-barrier") + \
               (" resident" if c["RESIDENT"] else f" streamed K{c['BLOCK_K']}x{self.num_stages}")
        flags = ",".join(FLAG_SHORT[k] for k in FLAG_SHORT if c.get(k)) or "-"
        return (f"{c['CELL']:<4} {self.kernel[4:7]} {SHORT[self.dtype]}/{c['DOT_PRECISION']:<4} sm{self.cc} "
                f"B{c['BB']} H{c['BH']} HP{c['HP']} KS{c['KS']} w{self.num_warps} {path} flags={flags}")


def _path_key(plan, direction) -> tuple:
    return (plan.grid_barrier, plan.resident, plan.KS > 1)


# The feature flags: kernel constexprs a call sets (torch.nn's bias, residual=, packed lengths,
# the reverse direction, whether the forward saves activations for a backward, whether y gets a
# gradient), which the plan does not see.
FWD_FLAGS = ("HAS_BIAS", "HAS_RES", "HAS_LEN", "SAVE_ACT")  # crossed; REVERSE follows their parity
BWD_FLAGS = ("HAS_LEN", "HAS_DY", "REVERSE")  # crossed
ZONEOUT_MODES = ("ZO_H", "ZO_C")  # the kernels' zoneout constexprs: 0 off (the default here), 1 training, 2 evaluation
# the options a call may add to the feature flags, and their values when it does not
OPTION_DEFAULTS = {**dict.fromkeys(ZONEOUT_MODES, 0), "LN": False}
# (dtype, product precision) of the benchmark grid: the bench's dtypes (fp32 exact, torch's
# default) and TF32 (torch.backends.cuda.matmul.allow_tf32)
BENCH_DTYPES = [("bfloat16", "ieee"), ("float16", "ieee"), ("float32", "ieee"), ("float32", "tf32")]


def flag_cross(direction: str) -> list[dict]:
    import itertools

    if direction == "bwd":
        return [dict(zip(BWD_FLAGS, bits)) for bits in itertools.product((False, True), repeat=len(BWD_FLAGS))]
    return [dict(zip(FWD_FLAGS, bits), REVERSE=sum(bits) % 2 == 1)
            for bits in itertools.product((False, True), repeat=len(FWD_FLAGS))]


def bench_flag_sets(case, direction: str) -> list[dict]:
    """The flag sets the benchmark runs for ``case``: biases on, residual adds and lengths as the
    case has them (a residual stack's first layer has none), both directions of a bidirectional
    case; forward-only (no saved activations) and training; the backward with dy."""
    out = []
    for reverse in ((False, True) if case.bidirectional else (False,)):
        if direction == "bwd":
            out.append(dict(HAS_LEN=case.packed, HAS_DY=True, REVERSE=reverse))
            continue
        for res in sorted({False, case.residual}):
            for save in (False, True):
                out.append(dict(HAS_BIAS=True, HAS_RES=res, HAS_LEN=case.packed, SAVE_ACT=save, REVERSE=reverse))
    if getattr(case, "layernorm", False):  # a LayerNorm cell: the same calls with LN_hh / LN_c in the step
        out = [dict(f, LN=True) for f in out]
    if getattr(case, "zoneout", 0):  # training (masks; forward with and without saving) and evaluation
        zc = 1 if case.cell == "lstm" else 0
        out = [dict(f, ZO_H=1, ZO_C=zc) for f in out] + \
            [dict(f, ZO_H=2, ZO_C=2 * zc) for f in out if direction == "fwd" and not f["SAVE_ACT"]]
    return out


def default_flag_sets(direction: str) -> list[dict]:
    """All flags on, all off, and torch.nn's defaults (bias, no residual, lengths or reverse;
    training and inference; the backward with dy)."""
    if direction == "bwd":
        return [dict.fromkeys(BWD_FLAGS, True), dict.fromkeys(BWD_FLAGS, False),
                dict(HAS_LEN=False, HAS_DY=True, REVERSE=False)]
    every = (*FWD_FLAGS, "REVERSE")
    return [dict.fromkeys(every, True), dict.fromkeys(every, False),
            dict(dict.fromkeys(every, False), HAS_BIAS=True, SAVE_ACT=True), dict(dict.fromkeys(every, False), HAS_BIAS=True)]


def zoneout_flag_sets(cell: str, direction: str) -> list[dict]:
    """Every flag on with zoneout: in training (the Philox masks generated in the step, and in the
    backward again: the most registers) and, forward, in evaluation."""
    zc = 1 if cell == "lstm" else 0
    every = default_flag_sets(direction)[0]
    sets = [dict(every, ZO_H=1, ZO_C=zc)]
    if direction == "fwd":
        sets.append(dict(every, ZO_H=2, ZO_C=2 * zc))
    return sets


def layernorm_flag_sets(cell: str, direction: str) -> list[dict]:
    """The LayerNorm cells (GRU, LSTM): every flag on, with and without zoneout in training, and
    torch.nn's defaults (forward: training and inference; backward: with dy)."""
    if cell not in ("gru", "lstm"):
        return []
    zc = 1 if cell == "lstm" else 0
    every = default_flag_sets(direction)[0]
    if direction == "bwd":
        sets = [every, dict(HAS_LEN=False, HAS_DY=True, REVERSE=False)]
    else:
        sets = [every] + default_flag_sets(direction)[2:]
    return [dict(f, LN=True) for f in sets] + [dict(every, LN=True, ZO_H=1, ZO_C=zc)]


def _fma(dtype: str, precision: str) -> bool:
    return precision == "ieee" and dtype in ("float32", "float64")


def configs() -> list[Config]:
    """What runs (see the module docstring): each distinct kernel specialization once, then the
    barrier-floor kernels."""
    from fusedrnn.bench.cases import CASES
    from fusedrnn.kernels import plan as plans

    out: dict[tuple, Config] = {}

    def add(p, direction, dtype, precision, cc, flags):
        cfg = _config(p, direction, dtype, precision, cc, flags)
        out.setdefault(cfg.compile_key, cfg)

    # the benchmark grid on an H100, crossed with the flags
    for case in CASES:
        for dtype, precision in BENCH_DTYPES:
            for direction in plans.DIRECTIONS:
                p = _case_plan(case, direction, dtype, precision)
                cross = flag_cross(direction) if dtype != "float16" else default_flag_sets(direction)
                for flags in cross + bench_flag_sets(case, direction):
                    add(p, direction, dtype, precision, 90, flags)
    # the tests' shapes: every code path at its largest tile
    for cc, device in ((90, plans.H100), (80, plans.A100)):
        for cell in plans.CELLS:
            for direction in plans.DIRECTIONS:
                for dtype, precision in DTYPES:
                    worst: dict[tuple, object] = {}
                    for B, H in SHAPES:
                        for strategy in (None, *plans.STRATEGIES):
                            p = plans.make_plan(cell, direction, B, H, ELEM[dtype], device, strategy,
                                                fma=_fma(dtype, precision))
                            key = _path_key(p, direction)
                            size = (p.BB * p.K * p.elem_bytes, p.smem_bytes, p.N)
                            if key not in worst or size > worst[key][0]:
                                worst[key] = (size, p)
                    sets = default_flag_sets(direction) + zoneout_flag_sets(cell, direction) if cc == 90 \
                        else default_flag_sets(direction)[:2]
                    for _, p in sorted(worst.values(), key=lambda v: repr(v[1])):
                        for flags in sets:
                            add(p, direction, dtype, precision, cc, flags)
                    if cc == 90:  # the LayerNorm cells run the batch_tile plans: each of their code paths
                        for p in _largest_layernorm_tiles(cell, direction, dtype, precision, device):
                            for flags in layernorm_flag_sets(cell, direction):
                                add(p, direction, dtype, precision, cc, flags)
    floor = [Config("barrier_floor_kernel", "float32", tuple(sorted(dict(CHECK=check, BLOCK=256).items())), 4, 1, cc)
             for check in (False, True) for cc in ARCHS]
    return list(out.values()) + floor


def _case_plan(case, direction, dtype, precision):
    """The plan the bench case's calls get on an H100 (the LayerNorm cells': make_plan(layernorm=True))."""
    from fusedrnn.kernels import plan as plans

    return plans.make_plan(case.cell, direction, case.B, case.H, ELEM[dtype], plans.H100, fma=_fma(dtype, precision),
                           layernorm=bool(getattr(case, "layernorm", False)))


def _largest_layernorm_tiles(cell, direction, dtype, precision, device) -> list:
    """For each code path of the LayerNorm cells' plans over the tests' shapes, its largest tile."""
    from fusedrnn.kernels import plan as plans

    worst: dict[tuple, tuple] = {}
    for B, H in SHAPES:
        p = plans.make_plan(cell, direction, B, H, ELEM[dtype], device, fma=_fma(dtype, precision), layernorm=True)
        key = _path_key(p, direction)
        size = (p.BB * p.K * p.elem_bytes, p.smem_bytes, p.N)
        if key not in worst or size > worst[key][0]:
            worst[key] = (size, p)
    return [p for _, p in sorted(worst.values(), key=lambda v: repr(v[1]))]


def _config(p, direction, dtype, precision, cc, flags: dict) -> Config:
    names = (*FWD_FLAGS, "REVERSE") if direction == "fwd" else BWD_FLAGS
    if set(flags) - set(OPTION_DEFAULTS) != set(names):
        raise ValueError(f"{direction} flags must be {names} (and optionally {sorted(OPTION_DEFAULTS)}), "
                         f"got {sorted(flags)}")
    # the options (zoneout modes: 0 off, 1 training masks, 2 evaluation; LayerNorm) default to off
    c = dict(p.constexprs(), USE_GRID_BARRIER=p.grid_barrier, DOT_PRECISION=precision,
             **{**OPTION_DEFAULTS, **flags})
    return Config(f"rnn_{direction}_kernel", dtype, tuple(sorted(c.items())), p.num_warps, p.num_stages, cc,
                  p.maxnreg, p.describe(), p.smem_bytes)


# ------------------------------------------------------------------------------------------------
# Compiling (runs in a worker process, interpreter off, with whichever Triton is first on the path)
# ------------------------------------------------------------------------------------------------

ACC_ROLES = {"gx_ptr", "hseq_ptr", "cseq_ptr", "act_ptr", "dgx_ptr", "dgh_ptr", "dh_ptr", "dc_ptr", "zo_ptr",
             "ln_ptr", "lnx_ptr", "lns_ptr", "dp_ptr", "dlnc_ptr"}
FLOAT_ARGS = {"ln_eps"}  # runtime floats (Python floats: fp32 in the signature)
INT_ROLES = {"len_ptr": "i64", "zo_seed_ptr": "i64", "counter_ptr": "i32", "slots_ptr": "i32", "errors_ptr": "i32", "data_ptr": "i32"}
# runtime ints the launcher always passes as multiples of 16 (Triton specializes them as such)
DIVISIBLE_INTS = {"k_valid"}


def _kernel(name):
    from fusedrnn.kernels import barrier, rnn

    if name in ("rnn_fwd_kernel", "rnn_bwd_kernel"):
        return getattr(rnn, name)
    if name == "barrier_floor_kernel":
        return barrier.barrier_floor_kernel
    return globals()[name]  # planted kernels (this file)


def compile_one(cfg: Config, workdir: str) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = _kernel(cfg.kernel)
    c = cfg.c
    d = SHORT[cfg.dtype]
    acc = "fp64" if d == "fp64" else "fp32"
    sig, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in c:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*" + (INT_ROLES.get(name) or (acc if name in ACC_ROLES else d))
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
        elif name in FLOAT_ARGS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
            if name in DIVISIBLE_INTS:
                attrs[(i,)] = [["tt.divisibility", 16]]
    target = GPUTarget("cuda", cfg.cc, 32)
    opts = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    if cfg.maxnreg:
        opts["maxnreg"] = cfg.maxnreg  # what launch_steps passes
    options = triton.compiler.make_backend(target).parse_options(opts)
    compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=c, attrs=attrs), target=target,
                              options=options.__dict__)
    ptx, ttgir = compiled.asm["ptx"], compiled.asm["ttgir"]
    cubin = os.path.join(workdir, f"{abs(hash(cfg))}.cubin")
    with open(cubin, "wb") as f:
        f.write(compiled.asm["cubin"])
    usage = _resource_usage(triton, cubin)
    facts = dict(usage, shared=compiled.metadata.shared, triton=triton.__version__,
                 mma=("mma.sync" in ptx) or ("wgmma" in ptx), barrier_violations=barrier_violations(ptx))
    if "RESIDENT" in c:
        facts["loop_violations"] = loop_violations(ttgir, c)
    return facts


def _resource_usage(triton, cubin: str) -> dict:
    """Registers and stack frame of the kernel in ``cubin`` (cuobjdump -res-usage, from Triton's
    wheel), and its spills: the local-memory stores and loads (STL/LDL) in its SASS, which is
    where ptxas puts what does not fit in registers."""
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    res = subprocess.run([cuobjdump, "-res-usage", cubin], capture_output=True, text=True, check=True)
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", res.stdout)
    if not m:
        raise RuntimeError(f"cannot parse cuobjdump -res-usage:\n{res.stdout}")
    sass = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True, check=True).stdout
    spills = len(re.findall(r"\b(?:STL|LDL)(?:\.\w+)*\s", sass))
    return dict(regs=int(m.group(1)), stack=int(m.group(2)), local=int(m.group(3)), spills=spills)


# ------------------------------------------------------------------------------------------------
# Checks on the compiled code
# ------------------------------------------------------------------------------------------------

_PTX_DEF = re.compile(r"^\s*(?:@!?%p\d+\s+)?([a-z][\w.:]*)\s+(%\w+),\s*(.*?);")


def _ptx_defs(lines) -> dict:
    """register -> (opcode, operands) of its (last) definition."""
    defs = {}
    for line in lines:
        m = _PTX_DEF.match(line)
        if m:
            defs[m.group(2)] = (m.group(1), [x.strip() for x in m.group(3).split(",")])
    return defs


def _eval_reg(reg: str, tid: int, defs: dict, depth: int = 0):
    """Value of ``reg`` in thread ``tid`` (x dimension), following its definitions through the
    integer and predicate ops a thread-id test compiles to; ValueError for anything else."""
    if depth > 16:
        raise ValueError(f"{reg}: definition chain too deep")
    if reg == "%tid.x":
        return tid
    if re.fullmatch(r"-?\d+", reg):
        return int(reg)
    if reg not in defs:
        raise ValueError(f"{reg}: no definition")
    opcode, ops = defs[reg]
    base, *mods = opcode.split(".")
    v = [_eval_reg(o, tid, defs, depth + 1) for o in ops if o.startswith("%") or re.fullmatch(r"-?\d+", o)]
    if base in ("mov", "cvt") and len(v) == 1:
        return v[0]
    if base == "setp":
        cmp = mods[0]
        a, b = v
        return {"eq": a == b, "ne": a != b, "lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[cmp]
    if base == "not":
        return not v[0]
    ops2 = {"and": lambda a, b: a & b, "or": lambda a, b: a | b, "xor": lambda a, b: a ^ b, "shl": lambda a, b: a << b,
            "shr": lambda a, b: a >> b, "add": lambda a, b: a + b, "sub": lambda a, b: a - b,
            "mul": lambda a, b: a * b, "rem": lambda a, b: a % b, "div": lambda a, b: a // b}
    if base in ops2 and len(v) == 2:
        return ops2[base](*v)
    if base == "bfe" and len(v) == 3:
        return (v[0] >> v[1]) & ((1 << v[2]) - 1)
    raise ValueError(f"{reg}: cannot evaluate {opcode} {ops}")


def _threads(ptx: str) -> int:
    m = re.search(r"\.(?:reqntid|maxntid)\s+(\d+)", ptx)
    return int(m.group(1)) if m else 128


def barrier_violations(ptx: str) -> list[str]:
    """Why the grid barrier in ``ptx`` is unsafe ([] when the kernel has none or it is right):
    every release atomic must be executed by exactly one thread of the program (its predicate,
    evaluated for every thread id, holds for thread 0 only), come right after a bar.sync with no
    global store between, and some poll must be an acquire load (or atomic)."""
    lines = [ln.split("//")[0].rstrip() for ln in ptx.splitlines()]
    defs = _ptx_defs(lines)
    out = []
    releases = [i for i, ln in enumerate(lines) if re.search(r"\b(atom|red)\.global\.[\w.]*release", ln)]
    if not releases:
        return out
    for i in releases:
        m = re.match(r"\s*@(!?)(%p\d+)\s", lines[i])
        if not m:
            out.append(f"release atomic not predicated (every thread adds): {lines[i].strip()}")
        else:
            try:
                live = [tid for tid in range(_threads(ptx)) if _eval_reg(m.group(2), tid, defs) != bool(m.group(1))]
            except ValueError as e:
                live = None
                out.append(f"release atomic predicated on something other than thread 0 ({e})")
            if live is not None and live != [0]:
                what = f"threads {live[:8]}{'...' if len(live) > 8 else ''}"
                out.append(f"release atomic predicated on something other than thread 0: executed by {what}")
        prev = next((j for j in range(i - 1, -1, -1) if re.search(r"\b(bar\.sync|barrier\.sync|st\.global|"
                                                                    r"atom\.|red\.)", lines[j])), None)
        if prev is None or not re.search(r"\b(bar|barrier)\.sync", lines[prev]):
            what = lines[prev].strip() if prev is not None else "kernel entry"
            out.append(f"release atomic not preceded by a CTA barrier (last: {what})")
    if not re.search(r"\b(ld|atom)\.global\.[\w.]*acquire", ptx):
        out.append("no acquire load in the barrier's poll")
    return out


def _region(text: str, start: int) -> str:
    """The brace-delimited region of the op starting at ``start`` (e.g. an scf.for)."""
    i = text.index("{", start)
    depth = 0
    for j in range(i, len(text)):
        depth += text[j] == "{"
        depth -= text[j] == "}"
        if depth == 0:
            return text[i:j + 1]
    raise ValueError("unbalanced TTGIR")


def loop_violations(ttgir: str, c: dict) -> list[str]:
    """The step loop's loads, from the TTGIR (values keep their Python variable names):
    resident W: the slice loaded before the step loop, never inside it; the operand one group of
    loads (one load op); with a grid barrier, every other load of the step issued before the
    barrier's poll loop. Streamed W: the operand through asynchronous copies in the K loop."""
    out = []
    body = ttgir[ttgir.index("tt.func public"):]
    step = re.search(r"^    scf\.for ", body, re.M)
    if not step:
        return ["no step loop (scf.for) in the kernel body"]
    loop = _region(body, step.start())
    loads = [(m.start(), m.group(1)) for m in re.finditer(r"%(\w+?)_\d+ = (?:tt\.load|ttg\.async_copy_global_to_local)",
                                                          loop)]
    if c["RESIDENT"]:
        if not re.search(r"%w_slice_\d+ = tt\.load", body[:step.start()]):
            out.append("resident W slice not loaded before the step loop")
        if any(name.startswith("w_") for _, name in loads):
            out.append("W loaded inside the step loop of a resident plan")
        operand = [pos for pos, name in loads if name == "a_all"]
        if len(operand) != 1:
            out.append(f"the product's operand takes {len(operand)} load ops (one group expected)")
        if c["USE_GRID_BARRIER"]:
            poll = loop.find("scf.while")
            late = [name for pos, name in loads if pos > poll and name != "a_all"]
            if poll < 0:
                out.append("no barrier poll loop in the step loop")
            elif late:
                out.append(f"loads issued after the barrier wait that could precede it: {sorted(set(late))}")
    else:
        if not re.search(r"%a_chunk_\d+ = ttg\.async_copy_global_to_local", loop):
            out.append("streamed K loop without asynchronous copies of the operand")
    return out


# ------------------------------------------------------------------------------------------------
# Planted barriers: each gets one thing wrong, and barrier_violations must say so
# ------------------------------------------------------------------------------------------------

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - the tests below skip
    triton = None

if triton is not None:
    @triton.jit
    def planted_barrier_kernel(counter_ptr, data_ptr, target, BLOCK: tl.constexpr, CTA_BARRIER: tl.constexpr,
                               ONE_THREAD: tl.constexpr, POLL_SEM: tl.constexpr):
        """A grid barrier after a store, built right or with one thing wrong: no CTA barrier
        before the release (other threads' stores not covered), a tensor of atomics instead of
        one (over-counts: the barrier opens early), a relaxed poll (stores not visible after it)."""
        tl.store(data_ptr + tl.arange(0, BLOCK), tl.arange(0, BLOCK))
        if CTA_BARRIER:
            tl.debug_barrier()
        if ONE_THREAD:
            tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
        else:
            tl.atomic_add(counter_ptr + tl.zeros((BLOCK,), dtype=tl.int32), 1, sem="release", scope="gpu")
        arrived = tl.atomic_add(counter_ptr, 0, sem=POLL_SEM, scope="gpu")
        while arrived < target:
            arrived = tl.atomic_add(counter_ptr, 0, sem=POLL_SEM, scope="gpu")

# planted mistake -> (constexprs, what the check must say)
PLANTED = {
    "no CTA barrier": (dict(CTA_BARRIER=False, ONE_THREAD=True, POLL_SEM="acquire"), "not preceded by a CTA barrier"),
    "every thread adds": (dict(CTA_BARRIER=True, ONE_THREAD=False, POLL_SEM="acquire"), "other than thread 0"),
    "relaxed poll": (dict(CTA_BARRIER=True, ONE_THREAD=True, POLL_SEM="relaxed"), "no acquire load"),
    "right": (dict(CTA_BARRIER=True, ONE_THREAD=True, POLL_SEM="acquire"), None),
}


def planted_configs() -> list[Config]:
    return [Config("planted_barrier_kernel", "int32", tuple(sorted(dict(c, BLOCK=256).items())), 4, 1, 90, plan=name)
            for name, (c, _) in PLANTED.items()] + \
        [Config("barrier_floor_kernel", "float32", tuple(sorted(dict(CHECK=True, BLOCK=256).items())), 4, 1, 90)]


# ------------------------------------------------------------------------------------------------
# Worker entry point and the Triton 3.6 side install
# ------------------------------------------------------------------------------------------------


def _safe_compile(cfg: Config, workdir: str) -> dict:
    try:
        return {"ok": True, **compile_one(cfg, workdir)}
    except Exception as e:  # reported per configuration, and failed on in the test
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[-3000:]}


def _worker(jobs: int) -> None:
    """Compile the configurations given as a JSON list on stdin; one JSON row per line, in order."""
    from concurrent.futures import ProcessPoolExecutor

    cfgs = [_from_dict(d) for d in json.load(sys.stdin)]
    with tempfile.TemporaryDirectory(prefix="fusedrnn_codegen_") as workdir, \
            ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_safe_compile, cfg, workdir) for cfg in cfgs]
        for cfg, fut in zip(cfgs, futures):
            sys.stdout.write(json.dumps({"cfg": dataclasses.asdict(cfg), **fut.result()}) + "\n")
            sys.stdout.flush()


def _from_dict(d: dict) -> Config:
    return Config(**{**d, "constexprs": tuple(tuple(x) for x in d["constexprs"])})


# ------------------------------------------------------------------------------------------------
# The result cache: one JSON file per (Triton version, sources, specialization)
# ------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("FUSEDRNN_CODEGEN_CACHE") or Path.home() / ".cache" / "fusedrnn" / "triton-codegen")


def source_hash() -> str:
    """What a cached result depends on besides the Triton version and the specialization: the
    kernel sources (every file of the kernels package) and the code here that compiles and reads
    the kernels (an edit to a check recomputes its facts)."""
    import hashlib
    import inspect

    from fusedrnn import kernels

    h = hashlib.sha256()
    for f in sorted(Path(kernels.__path__[0]).glob("*.py")):
        if f.name == "plan.py":  # pure Python: what it decides is in the key (constexprs, warps, stages)
            continue
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    readers = [_kernel, compile_one, _resource_usage, _ptx_defs, _eval_reg, _threads, barrier_violations, _region,
               loop_violations]
    for fn in readers:
        h.update(inspect.getsource(fn).encode())
    if triton is not None:
        h.update(inspect.getsource(planted_barrier_kernel.fn).encode())
    h.update(repr((_PTX_DEF.pattern, sorted(ACC_ROLES), sorted(INT_ROLES.items()), sorted(DIVISIBLE_INTS),
                   sorted(FLOAT_ARGS))).encode())
    return h.hexdigest()


def _cache_file(cfg: Config, version: str, sources: str) -> Path:
    import hashlib

    key = json.dumps([version, sources, list(cfg.compile_key)], default=list)
    return cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def side_triton_dir(version: str) -> tuple[Path | None, str]:
    """A directory holding triton==``version`` for this Python and platform, installed on first use
    with pip (``pip download`` + ``pip install --no-deps --target``) into ~/.cache/fusedrnn/ (or
    under $FUSEDRNN_TRITON_SIDE_DIR); used only by the compile subprocesses, which put it first on
    the path. A Triton wheel is built for one Python ABI and platform, so the directory is keyed by
    both as well as the version: a Python 3.12 run never leaves a wheel that Python 3.11 would load.
    Returns (directory, "") or (None, why not)."""
    key = f"triton-{version}-{sys.implementation.cache_tag}{sys.abiflags}-{sysconfig.get_platform()}"
    base = Path(os.environ.get("FUSEDRNN_TRITON_SIDE_DIR") or Path.home() / ".cache" / "fusedrnn")
    target = base / key
    version_file = target / "triton" / "__init__.py"
    if version_file.exists() and re.search(rf"__version__ = ['\"]{re.escape(version)}['\"]", version_file.read_text()):
        return target, ""
    download = target.with_name(target.name + ".download")
    res = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                          f"triton=={version}", "-d", str(download)], capture_output=True, text=True)
    if res.returncode != 0:
        return None, f"pip download triton=={version} failed: {res.stderr.strip()[-500:]}"
    wheels = sorted(download.glob(f"triton-{version}-*.whl"))
    if not wheels:
        return None, f"pip download left no triton-{version} wheel in {download}"
    tmp = target.with_name(target.name + ".partial")
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--upgrade", "--target", str(tmp),
                          str(wheels[-1])], capture_output=True, text=True)
    if res.returncode != 0:
        return None, f"pip install --target failed: {res.stderr.strip()[-500:]}"
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)  # complete installs only: a killed install leaves .partial behind
    return target, ""


def run_compiles(which: str, version: str, triton_dir: Path | None = None) -> list[dict]:
    """Compile ``which`` ("shipped" or "planted") with Triton ``version``: the results cached for
    these sources, the rest in a subprocess (one compile process per CPU), with ``triton_dir`` (a
    side install of another Triton) first on the path. Returns one row per configuration, in order;
    a row read from the cache has "cached": True."""
    cfgs = planted_configs() if which == "planted" else configs()
    sources = source_hash()
    rows: dict[tuple, dict] = {}
    for cfg in cfgs:
        f = _cache_file(cfg, version, sources)
        if f.exists():
            try:
                rows[cfg.compile_key] = {"cfg": dataclasses.asdict(cfg), **json.loads(f.read_text()), "cached": True}
            except (OSError, ValueError):
                pass  # unreadable (a concurrent writer's rename is atomic, so: damaged): compile again
    missing = [cfg for cfg in cfgs if cfg.compile_key not in rows]
    if missing:
        env = dict(os.environ)
        env.pop("TRITON_INTERPRET", None)
        if triton_dir is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(triton_dir), str(ROOT)] + env.get("PYTHONPATH", "").split(os.pathsep))
            env["TRITON_CACHE_DIR"] = str(Path(triton_dir).with_name(Path(triton_dir).name + ".kernel-cache"))
        jobs = max(1, os.cpu_count() or 1)
        cache_dir().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile("w+") as err, \
                subprocess.Popen([sys.executable, __file__, "--jsonl", str(jobs)], env=env, cwd=ROOT, text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                 start_new_session=True) as proc:
            threading.Thread(target=_feed, args=(proc.stdin, missing), daemon=True).start()
            # on timeout the whole process group: the worker's compile processes hold its stdout open,
            # so killing the worker alone would leave this loop waiting for an end of file forever
            timer = threading.Timer(COMPILE_TIMEOUT_S, os.killpg, args=(proc.pid, signal.SIGKILL))
            timer.start()
            try:
                # each result is cached as it arrives: an interrupted run keeps what it compiled
                for cfg, line in zip(missing, (ln for ln in proc.stdout if ln.startswith("{"))):
                    row = json.loads(line)
                    rows[cfg.compile_key] = row
                    if row["ok"] and row["triton"] == version:  # failures are not cached: they may be the machine's
                        f = _cache_file(cfg, version, sources)
                        tmp = f.with_name(f"{f.name}.{os.getpid()}.tmp")
                        tmp.write_text(json.dumps({k: v for k, v in row.items() if k != "cfg"}))
                        tmp.replace(f)
                rc = proc.wait()
            finally:
                timer.cancel()
            err.seek(0)
            assert rc == 0, f"compile worker exit {rc}:\n{err.read()[-5000:]}"
        done = sum(cfg.compile_key in rows for cfg in missing)
        assert done == len(missing), f"{done} results for {len(missing)} compiles"
    return [rows[cfg.compile_key] for cfg in cfgs]


def _feed(pipe, cfgs) -> None:
    with pipe:
        pipe.write(json.dumps([dataclasses.asdict(c) for c in cfgs]))


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'configuration':<112}{'regs':>5}{'spill':>6}{'stack':>6}{'smem':>8}  plan"]
    for r in rows:
        cfg = _from_dict(r["cfg"])
        if r["ok"]:
            lines.append(f"{cfg.label():<112}{r['regs']:>5}{r['spills']:>6}{r['stack']:>6}{r['shared']:>8}  {cfg.plan}")
        else:
            lines.append(f"{cfg.label():<112} FAILED: {r['error'][:300]}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------

SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
SMEM_MARGIN = 8 * 1024  # Device.smem_budget leaves this for the epilogue's layout conversions


def _check_rows(rows: list[dict], expected: list[Config], version: str) -> None:
    assert len(rows) == len(expected), f"{len(rows)} results for {len(expected)} configurations"
    problems = []
    for r in rows:
        cfg = _from_dict(r["cfg"])
        what = f"[triton {version}] {cfg.label()}"
        if not r["ok"]:
            problems.append(f"{what}: compile error: {r['error']}")
            continue
        assert r["triton"].startswith(version), f"{what}: compiled by Triton {r['triton']}"
        c = cfg.c
        if r["spills"] or r["local"]:
            problems.append(f"{what}: {r['spills']} spill instructions (STL/LDL), {r['stack']} B stack, "
                            f"{r['local']} B local memory")
        if r["shared"] > SMEM_LIMIT[cfg.cc]:
            problems.append(f"{what}: {r['shared']} B shared memory > the device's {SMEM_LIMIT[cfg.cc]}")
        if cfg.smem_estimate and r["shared"] > cfg.smem_estimate + SMEM_MARGIN:
            problems.append(f"{what}: Triton allocates {r['shared']} B shared memory, more than the plan's "
                            f"{cfg.smem_estimate} B plus the {SMEM_MARGIN} B it leaves for the epilogue "
                            "(kernels/plan.py Plan.smem_bytes, Device.smem_budget)")
        if "DOT_PRECISION" in c and (cfg.dtype in ("float16", "bfloat16") or c["DOT_PRECISION"] == "tf32"):
            if not r["mma"]:
                problems.append(f"{what}: the product did not become tensor-core MMA")
        if c.get("USE_GRID_BARRIER") or cfg.kernel == "barrier_floor_kernel":
            problems += [f"{what}: grid barrier: {v}" for v in r["barrier_violations"]]
        if c.get("USE_GRID_BARRIER"):
            problems += [f"{what}: step loop: {v}" for v in r["loop_violations"]]
    assert not problems, "\n".join(problems)


def _rows_for(version: str, which: str = "shipped") -> list[dict]:
    """Compile ``which`` with Triton ``version``: this environment's when it is that version, else
    a side install of it (``side_triton_dir``)."""
    import triton as this_triton

    if this_triton.__version__ == version:
        return run_compiles(which, version)
    path, why = side_triton_dir(version)
    if path is None:
        pytest.skip(f"triton {version} not available: {why}")
    return run_compiles(which, version, path)


@pytest.mark.parametrize("version", TRITON_VERSIONS, ids=lambda v: f"triton-{v}")
def test_every_shipped_config_compiles_clean(version):
    rows = _rows_for(version)
    print("\n" + format_rows(rows))
    _check_rows(rows, configs(), version)


@pytest.mark.parametrize("version", TRITON_VERSIONS, ids=lambda v: f"triton-{v}")
def test_barrier_check_rejects_planted_barriers(version):
    """The barrier check passes the real barrier and fails each planted mistake, for the reason
    planted (compiled for sm_90 with each Triton: they lower the thread-0 predicate differently)."""
    rows = {r["cfg"]["plan"] or r["cfg"]["kernel"]: r for r in _rows_for(version, "planted")}
    assert all(r["ok"] for r in rows.values()), {k: r.get("error") for k, r in rows.items()}
    assert rows["barrier_floor_kernel"]["barrier_violations"] == []
    for name, (_, reason) in PLANTED.items():
        found = rows[name]["barrier_violations"]
        if reason is None:
            assert found == [], f"{name}: {found}"
        else:
            assert any(reason in v for v in found), f"{name}: expected '{reason}', the check found {found}"


def test_side_install_is_keyed_by_python_and_platform(tmp_path, monkeypatch):
    """A side install made by another Python (another ABI) is not picked up: its directory differs."""
    monkeypatch.setenv("FUSEDRNN_TRITON_SIDE_DIR", str(tmp_path))
    other = tmp_path / f"triton-{TRITON_VERSIONS[1]}-cpython-399-linux-x86_64" / "triton"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text(f'__version__ = "{TRITON_VERSIONS[1]}"\n')
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a) or subprocess.CompletedProcess(a, 1, "", "offline"))
    path, why = side_triton_dir(TRITON_VERSIONS[1])
    assert path is None and calls, "the other Python's install was used"
    mine = tmp_path / f"triton-{TRITON_VERSIONS[1]}-{sys.implementation.cache_tag}{sys.abiflags}-{sysconfig.get_platform()}"
    (mine / "triton").mkdir(parents=True)
    (mine / "triton" / "__init__.py").write_text(f'__version__ = "{TRITON_VERSIONS[1]}"\n')
    assert side_triton_dir(TRITON_VERSIONS[1]) == (mine, "")


def test_configs_cover_the_benchmark_grid():
    """The compiled set holds every kernel specialization the benchmark grid runs on an H100 (each
    case's plans with the flags it sets) and the flag cross of each of those plans (fp16: the
    default flag sets; its plans are bf16's); e.g. the
    deepbench-lstm forward as torch.nn.LSTM calls it (bias, saved activations, nothing else)."""
    from fusedrnn.bench.cases import CASES, get
    from fusedrnn.kernels import plan as plans

    keys = {cfg.compile_key for cfg in configs()}
    for case in CASES:
        for dtype, precision in BENCH_DTYPES:
            for direction in plans.DIRECTIONS:
                p = _case_plan(case, direction, dtype, precision)
                cross = flag_cross(direction) if dtype != "float16" else default_flag_sets(direction)
                for flags in bench_flag_sets(case, direction) + cross:
                    cfg = _config(p, direction, dtype, precision, 90, flags)
                    assert cfg.compile_key in keys, f"{case.id} {dtype}/{precision} {direction}: {cfg.label()} not compiled"
    db = get("deepbench-lstm")
    p = plans.make_plan("lstm", "fwd", db.B, db.H, 2, plans.H100)
    nn_default = dict(HAS_BIAS=True, HAS_RES=False, HAS_LEN=False, SAVE_ACT=True, REVERSE=False)
    assert _config(p, "fwd", "bfloat16", "ieee", 90, nn_default).compile_key in keys
    # each specialization once
    assert len(keys) == len(configs())


def test_flag_sets_match_the_kernels():
    """The flag names are the kernels' feature constexprs, and the cross takes every value of each."""
    from fusedrnn.kernels import rnn

    for direction, kernel in (("fwd", rnn.rnn_fwd_kernel), ("bwd", rnn.rnn_bwd_kernel)):
        sets = flag_cross(direction)
        names = set(sets[0])
        assert names <= set(kernel.arg_names)
        feature = {n for n in kernel.arg_names if n.startswith(("HAS_", "SAVE_")) or n == "REVERSE"}
        assert names == feature, f"{direction}: the flag cross misses {feature - names}"
        assert all({s[n] for s in sets} == {False, True} for n in names)
        assert len({tuple(sorted(s.items())) for s in sets}) == len(sets)


def test_cached_results_are_reused_and_keyed(tmp_path, monkeypatch):
    """A result is cached per (Triton version, sources, specialization): the plan's words do not
    change the key, anything compiled does; a run whose results are all cached compiles nothing."""
    monkeypatch.setenv("FUSEDRNN_CODEGEN_CACHE", str(tmp_path))
    cfgs = planted_configs()
    sources = source_hash()
    f = _cache_file(cfgs[0], "3.8.0", sources)
    assert f.parent == tmp_path
    assert _cache_file(dataclasses.replace(cfgs[0], plan="other words", smem_estimate=1), "3.8.0", sources) == f
    assert _cache_file(cfgs[0], "3.6.0", sources) != f
    assert _cache_file(cfgs[0], "3.8.0", "0" * 64) != f
    assert _cache_file(dataclasses.replace(cfgs[0], num_warps=8), "3.8.0", sources) != f
    assert _cache_file(dataclasses.replace(cfgs[0], cc=80), "3.8.0", sources) != f
    for i, cfg in enumerate(cfgs):
        _cache_file(cfg, "0.0.1", sources).write_text(json.dumps({"ok": True, "triton": "0.0.1", "regs": i}))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("compiled although every result is cached"))
    rows = run_compiles("planted", "0.0.1")
    assert [r["regs"] for r in rows] == list(range(len(cfgs)))
    assert all(r["cached"] for r in rows)
    assert [_from_dict(r["cfg"]) for r in rows] == cfgs


def test_source_hash_follows_the_kernel_sources(tmp_path, monkeypatch):
    """An edit to any kernel source changes the cache key of every result."""
    from fusedrnn import kernels

    before = source_hash()
    assert source_hash() == before
    for src in Path(kernels.__path__[0]).glob("*.py"):
        (tmp_path / src.name).write_bytes(src.read_bytes())
    monkeypatch.setattr(kernels, "__path__", [str(tmp_path)])
    assert source_hash() == before
    with open(tmp_path / "plan.py", "a") as f:  # the plan's choices are in the key, not its source
        f.write("\n# edited\n")
    assert source_hash() == before
    with open(tmp_path / "cells.py", "a") as f:
        f.write("\n# edited\n")
    assert source_hash() != before


if __name__ == "__main__":
    if "--jsonl" in sys.argv:
        os.environ.pop("TRITON_INTERPRET", None)
        i = sys.argv.index("--jsonl")
        _worker(int(sys.argv[i + 1]))
    else:
        d, version = None, None
        if "--triton" in sys.argv:  # --triton 3.6.0: compile with a side install of that version
            version = sys.argv[sys.argv.index("--triton") + 1]
            d, why = side_triton_dir(version)
            if d is None:
                sys.exit(why)
        print(format_rows(run_compiles("shipped", version or triton.__version__, d)))
