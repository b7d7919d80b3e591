"""The sm_90 SASS of the Triton kernels (kernels/rnn.py) at the specialization a bench case launches,
read for the latency model (bench/model_triton.py): MODEL, not measured.

``specialization`` gives the exact compile a call gets on an H100: kernels/plan.py's plan for the
case (its constexprs, num_warps, num_stages, maxnreg) and the feature flags the benchmark's call
sets (bias on, the case's residual / lengths, SAVE_ACT in training, HAS_DY in the backward).
``kernel_sass`` compiles it with ``triton.compile`` for sm_90 (no GPU needed; in a subprocess with
the interpreter off), dumps the cubin with ``cuobjdump -sass`` (raw encodings: the control words
decode) and reads the kernel parameters' offsets in constant bank 0 from ``cuobjdump -elf``
(EIATTR_KPARAM_INFO). The result is cached on disk keyed by the Triton version, a hash of the kernel
sources (kernels/*.py but plan.py, whose choices are in the specialization) and the
specialization: a compile takes tens of seconds, a cached read milliseconds. Without Triton or
cuobjdump: None (the analytic model stays).

``walk_step`` then executes one step of the kernel's time-step loop for one warp with bench/sass.py's
walker (bench/README.md, "The Triton step from its SASS").
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import sass

ENV = "FUSEDRNN_MODEL_SASS"  # "0": the analytic model only (shared with model_cuda)
COMPILE_ENV = "FUSEDRNN_TRITON_SASS_COMPILE"  # "0": cached dumps only, never compile (CI without a warm cache)
ARCH = 90

# the kernels' argument roles (kernels/rnn.py), as the launcher passes them: fp32 accumulators for
# bf16/fp16 (fp64 for fp64), the weight dtype for the rest
ACC_ROLES = {"gx_ptr", "hseq_ptr", "cseq_ptr", "act_ptr", "dgx_ptr", "dgh_ptr", "dh_ptr", "dc_ptr", "zo_ptr",
             "ln_ptr", "lnx_ptr", "lns_ptr", "dp_ptr", "dlnc_ptr"}
INT_ROLES = {"len_ptr": "i64", "zo_seed_ptr": "i64", "counter_ptr": "i32"}
FLOAT_ARGS = {"ln_eps"}
DIVISIBLE_INTS = {"k_valid"}  # the launcher passes H rounded up to 16: Triton specializes it so
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
ELEM = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class Spec:
    """One compile: the kernel, its dtype, constexprs (sorted pairs) and launch options."""

    kernel: str  # rnn_fwd_kernel | rnn_bwd_kernel
    dtype: str  # bf16 | fp16 | fp32
    constexprs: tuple
    num_warps: int
    num_stages: int
    maxnreg: int | None

    @property
    def c(self) -> dict:
        return dict(self.constexprs)

    def key(self) -> str:
        return json.dumps([self.kernel, self.dtype, [list(x) for x in self.constexprs], self.num_warps,
                           self.num_stages, self.maxnreg])


def bench_flags(case, direction: str, save: bool) -> dict:
    """The feature flags of the benchmark's call (tests/test_triton_codegen.py bench_flag_sets): bias
    on, the case's residual (a deeper layer's) and lengths, the forward direction; the backward with dy."""
    if direction == "bwd":
        flags = dict(HAS_LEN=bool(case.packed), HAS_DY=True, REVERSE=False)
    else:
        flags = dict(HAS_BIAS=True, HAS_RES=bool(case.residual), HAS_LEN=bool(case.packed), SAVE_ACT=save,
                     REVERSE=False)
    zc = 1 if case.cell == "lstm" else 0
    if getattr(case, "zoneout", 0):
        train = save or direction == "bwd"
        flags.update(ZO_H=1 if train else 2, ZO_C=(1 if train else 2) * zc)
    else:
        flags.update(ZO_H=0, ZO_C=0)
    flags["LN"] = bool(getattr(case, "layernorm", False))
    return flags


def specialization(plan, case, direction: str, dtype_name: str, save: bool) -> Spec:
    precision = "ieee"  # bf16 / fp16 products; exact fp32 is an FMA plan
    c = dict(plan.constexprs(), USE_GRID_BARRIER=plan.grid_barrier, DOT_PRECISION=precision,
             **bench_flags(case, direction, save))
    return Spec(f"rnn_{direction}_kernel", dtype_name, tuple(sorted(c.items())), plan.num_warps, plan.num_stages,
                plan.maxnreg)


def source_hash() -> str:
    """The kernel sources (every kernels/*.py but plan.py) and this file's compile code."""
    import inspect

    spec = importlib.util.find_spec("fusedrnn.kernels")
    h = hashlib.sha256()
    if spec is not None and spec.submodule_search_locations:
        for f in sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.py")):
            if f.name != "plan.py":
                h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(inspect.getsource(_compile_in_process).encode())
    return h.hexdigest()[:24]


def triton_version() -> str | None:
    spec = importlib.util.find_spec("triton")
    if spec is None:
        return None
    try:
        from importlib.metadata import version

        return version("triton")
    except Exception:  # noqa: BLE001 - a broken install: no SASS
        return None


def _cache_file(spec: Spec) -> Path:
    key = json.dumps([triton_version(), source_hash(), spec.key(), ARCH])
    return sass._cache_dir() / "triton" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json.gz"


def _compile_in_process(spec: dict, out: str) -> None:
    """Worker (interpreter off): compile, dump SASS and the parameter layout to ``out`` (JSON)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fusedrnn.kernels import rnn

    kernel = getattr(rnn, spec["kernel"])
    c = {k: v for k, v in spec["constexprs"]}
    d = spec["dtype"]
    sig, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in c:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*" + (INT_ROLES.get(name) or ("fp32" if name in ACC_ROLES else d))
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in FLOAT_ARGS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
            if name in DIVISIBLE_INTS:
                attrs[(i,)] = [["tt.divisibility", 16]]
    target = GPUTarget("cuda", ARCH, 32)
    opts = {"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]}
    if spec["maxnreg"]:
        opts["maxnreg"] = spec["maxnreg"]  # what launch_steps passes on a GPU
    if c.get("USE_GRID_BARRIER"):
        opts["launch_cooperative_grid"] = True  # launch_steps' cooperative launch
    options = triton.compiler.make_backend(target).parse_options(opts)
    compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=c, attrs=attrs), target=target,
                              options=options.__dict__)
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        tool = sass.cuda_tool("cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "k.cubin")
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        text = subprocess.run([tool, "-sass", cubin], capture_output=True, text=True, check=True).stdout
        elf = subprocess.run([tool, "-elf", cubin], capture_output=True, text=True, check=True).stdout
        res = subprocess.run([tool, "-res-usage", cubin], capture_output=True, text=True, check=True).stdout
    regs = re.search(r"REG:(\d+)", res)
    params = [(int(m.group(1), 16), int(m.group(2), 16), int(m.group(3), 16)) for m in re.finditer(
        r"Ordinal\s*:\s*0x([0-9a-f]+)\s+Offset\s*:\s*0x([0-9a-f]+)\s+Size\s*:\s*0x([0-9a-f]+)", elf)]
    names = [n for n in kernel.arg_names if n not in c]
    with open(out, "w") as f:
        json.dump({"sass": text, "params": sorted(params), "names": names, "triton": triton.__version__,
                   "shared": compiled.metadata.shared, "regs": int(regs.group(1)) if regs else 0}, f)


@dataclass(frozen=True)
class Compiled:
    insns: list
    names: list  # the runtime arguments in order
    params: list  # (ordinal, offset in c[0x0] from the parameter base, size)
    shared: int
    regs: int


def kernel_sass(spec: Spec, compile_: bool | None = None, timeout: float = 900) -> Compiled | None:
    """The kernel's sm_90 instructions and parameter layout for ``spec``, or None without Triton /
    cuobjdump, with FUSEDRNN_MODEL_SASS=0, or (``compile_`` False, FUSEDRNN_TRITON_SASS_COMPILE=0)
    when the dump is not cached. RuntimeError when the compile fails."""
    if os.environ.get(ENV, "1") == "0" or triton_version() is None or sass.cuda_tool("cuobjdump") is None:
        return None
    cache = _cache_file(spec)
    if cache.exists():
        data = json.loads(gzip.decompress(cache.read_bytes()))
    else:
        if compile_ is None:
            compile_ = os.environ.get(COMPILE_ENV, "1") != "0"
        if not compile_:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "out.json")
            env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
            code = ("import json, sys; from fusedrnn.bench import triton_sass as t; "
                    "t._compile_in_process(json.loads(sys.argv[1]), sys.argv[2])")
            payload = json.dumps({"kernel": spec.kernel, "dtype": spec.dtype, "constexprs": list(spec.constexprs),
                                  "num_warps": spec.num_warps, "num_stages": spec.num_stages,
                                  "maxnreg": spec.maxnreg})
            proc = subprocess.run([sys.executable, "-c", code, payload, out], capture_output=True, text=True,
                                  env=env, timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"compiling {spec.kernel} failed: {proc.stderr.strip()[-800:]}")
            with open(out) as f:
                data = json.load(f)
        # keep the instructions' text only (the cache stays small)
        data["sass"] = "\n".join(l for l in data["sass"].splitlines()
                                 if "Function :" in l or "code for sm_" in l or "/*" in l)
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmpf = cache.with_suffix(f".tmp{os.getpid()}")
            tmpf.write_bytes(gzip.compress(json.dumps(data).encode(), 6))
            tmpf.replace(cache)
        except OSError:
            pass
    funcs = [insns for (name, arch), insns in sass.parse_sass(data["sass"]).items() if arch == str(ARCH)]
    if not funcs:
        return None
    return Compiled(funcs[0], data["names"], [tuple(p) for p in data["params"]], data["shared"], data["regs"])


# ---------------------------------------------------------------------------------------------
# One step of the time-step loop, for one warp
# ---------------------------------------------------------------------------------------------

FAKE_BASE = 0x7F0000000000  # fake 256-byte aligned pointers, one region per argument
REGION = 1 << 36  # 64 GiB: no offset of a bench case leaves its argument's region


def param_constants(compiled: Compiled, plan, case, save: bool) -> dict[int, int]:
    """c[0x0] words for the launch of ``plan`` on ``case``: blockDim / gridDim at the bank's start,
    then the kernel's runtime arguments at the offsets the cubin declares (pointers fake and
    nonzero, T, B, H, n_slots, k_valid, t_begin = 0, n_steps = T; the two scratch pointers Triton
    appends after them, 0)."""
    threads = 32 * plan.num_warps
    words = {0x0: threads, 0x4: 1, 0x8: 1, 0xC: plan.nprog_h, 0x10: plan.n_btiles, 0x14: 1}
    values = {"T": case.T, "B": case.B, "H": case.H, "n_slots": case.T + 1 if save else 2,
              "k_valid": -(-case.H // 16) * 16, "t_begin": 0, "n_steps": case.T,
              "ln_eps": sass._bits(1e-5)}
    for ordinal, off, size in compiled.params:
        name = compiled.names[ordinal] if ordinal < len(compiled.names) else ""
        if name.endswith("_ptr"):
            v = FAKE_BASE + (ordinal + 1) * REGION
        else:
            v = values.get(name, 0)
        words[sass.PARAM_BASE + off] = v & sass.M32
        if size == 8:
            words[sass.PARAM_BASE + off + 4] = v >> 32 & sass.M32
    return words


def time_loop_range(insns: list) -> tuple[int, int] | None:
    """(first, last) index of the Triton kernel's time-step loop: the outermost loop (a backward
    branch's range) holding the recurrent product: its HMMAs, or for an FMA plan (exact fp32) its
    FFMAs. The unit-block loop, the K loop and the barrier's poll loop lie inside it."""
    product = [n for n, i in enumerate(insns) if i.op.startswith("HMMA")] or \
        [n for n, i in enumerate(insns) if i.op.startswith("FFMA")]
    best = None
    for start, end in sass.loops(insns):
        if best is not None and end - start <= best[1] - best[0]:
            continue
        if any(start <= n <= end for n in product):
            best = (start, end)
    return best


# buffers a step reads that the kernel wrote in the step before (this program or another), or that
# every step reads again (a streamed W_hh, the biases): L2 hits; every other global load (gx, residual,
# saved activations, dy, lengths, ...) is read once: an HBM trip
L2_BUFFERS = {"rnn_fwd_kernel": {"xchg_ptr", "hseq_ptr", "cseq_ptr", "counter_ptr", "w_ptr", "b_hh_ptr"},
              "rnn_bwd_kernel": {"xchg_ptr", "dh_ptr", "dc_ptr", "counter_ptr", "w_ptr"}}


def buffer_of(compiled: Compiled, address: int | None) -> str | None:
    """The argument whose (fake) buffer ``address`` lies in (param_constants' layout)."""
    if address is None or address < FAKE_BASE:
        return None
    ordinal = (address - FAKE_BASE) // REGION - 1
    return compiled.names[ordinal] if 0 <= ordinal < len(compiled.names) else None


def wait_point(insns: list, loop: tuple[int, int]) -> int | None:
    """The address of the branch that skips the barrier wait at s = 0 (step_wait's ``if s > 0``): the
    first forward branch in the time loop over a region holding the poll (a strong load in a loop)."""
    index = {insn.addr: n for n, insn in enumerate(insns)}
    for n in range(loop[0], loop[1] + 1):
        target = insns[n].branch_target()
        if target is None or target <= insns[n].addr or target not in index or not insns[n].pred:
            continue
        region = insns[n + 1:index[target]]
        polls = any(i.op.startswith(("LDG", "LD.", "ATOM")) and "STRONG.GPU" in i.op for i in region)
        loops = any((i.branch_target() or 1 << 62) < i.addr for i in region)
        if polls and loops:
            return insns[n].addr
    return None


def walk_step(compiled: Compiled, plan, case, save: bool, lat: sass.Latencies = sass.Latencies(),
              trace: list | None = None, kernel: str = "rnn_fwd_kernel", barrier_clk: int = 0,
              buffers: dict | None = None) -> sass.Walk:
    """The first step (s = 0) of the time-step loop for lane 0 of warp 0 of program (0, 0). A plain
    global load whose address the machine knows costs an L2 trip for the buffers the previous step
    wrote (``L2_BUFFERS``), an HBM trip otherwise; a strong (.cg) load (the exchange operand) an L2
    trip. At the barrier wait that s = 0 skips (``wait_point``) the warp waits ``barrier_clk``, so the
    loads issued before it (with W resident: gx, state, residual) complete during the barrier; that
    wait is not in the returned issue time (the barrier is its own phase). An unknown address: an
    HBM trip. ``buffers`` (a dict) collects the loads per buffer."""
    l2 = L2_BUFFERS.get(kernel, set())

    def load_latency(insn, address):
        name = buffer_of(compiled, address)
        if buffers is not None:
            buffers[name] = buffers.get(name, 0) + 1
        return lat.l2 if name in l2 or "STRONG" in insn.op else lat.hbm  # unknown address: HBM

    loop = time_loop_range(compiled.insns)
    wait = wait_point(compiled.insns, loop) if loop and barrier_clk else None
    return sass.walk(compiled.insns, plan, param_constants(compiled, plan, case, save), lat,
                     kernel=kernel, trace=trace, strong_loads_l2=True, loop=loop, load_latency=load_latency,
                     wait_at=wait, wait_clk=barrier_clk)
