"""What nvcc makes of csrc/, checked without a GPU: the kernels compile standalone (no torch headers)
for sm_80 and sm_90 with no register spills (ptxas -v), and the step loop of every persistent kernel
variant has the structure the latency model (bench/model_cuda.py) assumes, read from its SASS
(cuobjdump, from the CUDA toolkit or Triton's wheel):
  - no CALL (the sigmoid/tanh are ex2/rcp.approx, no IEEE-division slow path; sm_80's convergence
    idioms, a call to the next instruction or to a WARPSYNC + BAR.SYNC stub, are not calls of work),
  - the exchanged operand is staged with cp.async (LDGSTS) and feeds HMMAs,
  - the cell's global loads are issued before the MMA of their pass or a step ahead: no plain LDG in
    the loop reaches a use without an HMMA or the grid barrier in between,
  - no integer division (the I2F.RP / MUFU.RCP / F2I / IMAD.HI idiom of a runtime divisor) and no
    predicated HMMA (an n-tile the plan does not have): the product is specialised on its n-tiles
    and counts its ring slot along (tests/test_sass_model.py checks the executed HMMAs per step).
nvcc's objects and ptxas reports are cached by nvcc version, flags and csrc/'s bytes (see
nvcc_cache_dir), so an unchanged csrc/ is compiled once per machine, not once per run or CI leg.
Also: setup.py says so when torch's CUDA and nvcc's major versions differ. Needs nvcc; skipped
without it. Run with -s to see the register / spill table.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

try:  # the project's one SASS parser (bench/sass.py; fusedrnn.bench when installed)
    from fusedrnn.bench.sass import Insn, cuda_tool, parse_sass, step_loop
except ImportError:
    from bench.sass import Insn, cuda_tool, parse_sass, step_loop

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
KERNEL_SOURCES = ("gru_fwd.cu", "gru_bwd.cu", "lstm_fwd.cu", "lstm_bwd.cu", "rnn_fwd.cu", "rnn_bwd.cu", "launch.cu")
ARCHS = ("80", "90")
# Instantiations per file: fp16, bf16, fp32 (TF32), fp32 (3xTF32), each for 1 and 2 n-tiles per pass;
# the backward also once per m-tile count; rnn_*.cu hold the Elman RNN's two cells (tanh, relu); and
# each once without and once with zoneout (template parameter ZO).
INSTANTIATIONS = {"gru_fwd.cu": 16, "lstm_fwd.cu": 16, "gru_bwd.cu": 32, "lstm_bwd.cu": 32, "rnn_fwd.cu": 32,
                  "rnn_bwd.cu": 64, "launch.cu": 1}


NVCC = cuda_tool("nvcc")
CUOBJDUMP = cuda_tool("cuobjdump")
pytestmark = [
    pytest.mark.skipif(NVCC is None, reason="nvcc not found (CUDA_HOME, /usr/local/cuda, PATH)"),
    pytest.mark.compiles,
]
needs_cuobjdump = pytest.mark.skipif(CUOBJDUMP is None, reason="cuobjdump not found (CUDA toolkit or Triton)")

# ---------------------------------------------------------------------------------------------
# ptxas resource report
# ---------------------------------------------------------------------------------------------

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


def _command(source: str, obj: Path) -> list[str]:
    cmd = [NVCC, "-std=c++17", "-O3", "--expt-relaxed-constexpr", "-Xptxas=-v", "-c", str(CSRC / source),
           "-o", str(obj), f"-I{CSRC}"]
    for arch in ARCHS:
        cmd += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return cmd


# The result cache: nvcc's output for one kernel file depends only on nvcc, the flags and csrc/'s
# headers and sources (no torch: test_kernel_sources_do_not_include_torch), so the object and the
# ptxas report are kept on disk (~/.cache/fusedrnn/nvcc-codegen, or $FUSEDRNN_NVCC_CACHE) keyed by all
# three. Both CI legs and every rerun of an unchanged csrc/ then read instead of compiling (minutes of
# 2 cores each); any edit under csrc/, another nvcc or another flag compiles afresh. Failures are not
# cached.

def nvcc_cache_dir() -> Path:
    return Path(os.environ.get("FUSEDRNN_NVCC_CACHE") or Path.home() / ".cache" / "fusedrnn" / "nvcc-codegen")


@functools.cache
def _nvcc_version() -> str:
    return subprocess.run([NVCC, "--version"], capture_output=True, text=True).stdout


def cache_key(source: str, nvcc_version: str | None = None, csrc: Path = CSRC) -> str:
    h = hashlib.sha256()
    h.update((nvcc_version if nvcc_version is not None else _nvcc_version()).encode())
    h.update(" ".join(_command(source, Path("OBJ"))[1:]).replace(str(CSRC), "CSRC").encode())
    for p in sorted(csrc.rglob("*")):
        if p.is_file() and p.suffix in (".cu", ".cuh", ".h"):
            h.update(p.relative_to(csrc).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:32]


def _compile(source: str, tmp: Path) -> tuple[str, int, str, Path]:
    obj = tmp / (source + ".o")
    cached = nvcc_cache_dir() / f"{source}-{cache_key(source)}"
    if (cached / "done").exists():
        shutil.copyfile(cached / "obj.o", obj)
        return source, 0, (cached / "ptxas.log").read_text(), obj
    proc = subprocess.run(_command(source, obj), capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode == 0:
        try:
            cached.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(obj, cached / "obj.o")
            (cached / "ptxas.log").write_text(log)
            (cached / "done").touch()  # last: a half-written entry is never read
        except OSError:
            pass
    return source, proc.returncode, log, obj


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nvcc")
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda s: _compile(s, tmp), KERNEL_SOURCES))


def test_nvcc_cache_key_follows_nvcc_flags_and_every_source(tmp_path):
    """A cached object is reused only for the same nvcc, flags and csrc/ bytes: a header edit (any
    file) misses, as does another nvcc; a file outside csrc/'s sources does not matter."""
    for p in CSRC.iterdir():
        if p.is_file():
            (tmp_path / p.name).write_bytes(p.read_bytes())
    base = cache_key("gru_fwd.cu", "nvcc 13.0", tmp_path)
    assert base == cache_key("gru_fwd.cu", "nvcc 13.0", tmp_path)
    assert base != cache_key("gru_bwd.cu", "nvcc 13.0", tmp_path)
    assert base != cache_key("gru_fwd.cu", "nvcc 13.1", tmp_path)
    (tmp_path / "README.md").write_text("not compiled")
    assert base == cache_key("gru_fwd.cu", "nvcc 13.0", tmp_path)
    (tmp_path / "ptx.cuh").write_bytes((tmp_path / "ptx.cuh").read_bytes() + b"\n")
    assert base != cache_key("gru_fwd.cu", "nvcc 13.0", tmp_path)


def test_kernel_sources_compile(builds):
    failed = [(src, log[-3000:]) for src, rc, log, _ in builds if rc != 0]
    assert not failed, "nvcc failed:\n" + "\n\n".join(f"{s}:\n{log}" for s, log in failed)


def test_no_spills_in_persistent_kernels(builds):
    rows, bad, seen = [], [], set()
    for src, rc, log, _ in builds:
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


def test_instantiation_count(builds):
    # Compile time on 2 cores is a budget: each instantiation is one (dtype, math mode[, m-tiles]).
    for src, rc, log, _ in builds:
        kernels = {name for name, _ in parse_ptxas(log) if "persistent_kernel" in name}
        assert len(kernels) == INSTANTIATIONS[src], f"{src}: {sorted(kernels)}"


def test_kernel_sources_do_not_include_torch():
    # Keeps this test fast and torch-free; the torch glue lives in csrc/rnn_ops.cpp.
    headers = [CSRC / s for s in KERNEL_SOURCES] + [CSRC / h for h in ("rnn_kernels.cuh", "rnn_launch.h", "ptx.cuh")]
    for path in headers:
        includes = [line for line in path.read_text().splitlines() if line.startswith("#include")]
        assert not any("torch" in line or "ATen" in line or "c10" in line for line in includes), (path, includes)


# ---------------------------------------------------------------------------------------------
# The step loop in the SASS
# ---------------------------------------------------------------------------------------------


def uncovered_loads(body: list[Insn]) -> list[str]:
    """Plain global loads (not the operand's .STRONG.GPU element-wise staging path) that some path in
    the loop reaches a use of without passing tensor-core work (an HMMA) or the grid barrier: a load
    the step waits for with nothing to hide it. The search follows fall-through and taken branches
    inside the loop (the step loop's own back edge comes after its barrier); predicated writes do not
    end a register's life (they may not happen), except for reads under the same predicate, which
    read the overwritten value when they happen (until an instruction names that predicate again)."""
    position = {insn.addr: n for n, insn in enumerate(body)}
    reads = [insn.source_regs() for insn in body]
    writes = [insn.dest_regs() for insn in body]
    found = []
    for n, ld in enumerate(body):
        if not ld.op.startswith("LDG") or "STRONG" in ld.op:
            continue
        stack, seen = [(n + 1, frozenset(ld.dest_regs()), frozenset())], set()
        while stack:
            pos, live, shadowed = stack.pop()  # shadowed: (register, predicate) overwritten under it
            if pos >= len(body) or (pos, live, shadowed) in seen or not live:
                continue
            seen.add((pos, live, shadowed))
            insn = body[pos]
            if insn.op.startswith(("HMMA", "ATOM", "RED", "EXIT", "RET")):
                continue  # covered by the MMA or the barrier, or the path ends
            used = reads[pos] & live
            if insn.pred:
                used = used - {r for r, p in shadowed if p == insn.pred}
            if used:
                found.append(f"{ld.addr:#x} {ld.op} {ld.args} -> read at {insn.addr:#x} {insn.op} {insn.args}")
                break
            shadowed = frozenset((r, p) for r, p in shadowed
                                 if not re.search(rf"\b{p.lstrip('@!')}\b", insn.args))
            if not insn.pred:
                live = live - writes[pos]
            else:
                shadowed |= {(r, insn.pred) for r in writes[pos] & live}
            target = insn.branch_target()
            if target is not None and target in position:
                stack.append((position[target], live, shadowed))
            if target is None or insn.pred:
                stack.append((pos + 1, live, shadowed))
    return found


@pytest.fixture(scope="module")
def sass(builds):
    if CUOBJDUMP is None:
        pytest.skip("cuobjdump not found (CUDA toolkit or Triton)")
    for src, rc, _, _ in builds:
        assert rc == 0, f"{src} failed to compile"

    def dump(build):
        src, _, _, obj = build
        text = subprocess.run([CUOBJDUMP, "-sass", str(obj)], capture_output=True, text=True, check=True).stdout
        return src, parse_sass(text)

    functions = {}
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        dumps = list(pool.map(dump, builds))
    for src, parsed in dumps:
        for key, insns in parsed.items():
            if "persistent_kernel" in key[0] and "barrier_floor" not in key[0]:
                functions[(src,) + key] = insns
    return functions


@needs_cuobjdump
def test_every_variant_has_a_step_loop(sass):
    want = sum(n for s, n in INSTANTIATIONS.items() if s != "launch.cu") * len(ARCHS)
    assert len(sass) == want, sorted(sass)
    for key, insns in sass.items():
        assert step_loop(insns), f"no step loop (HMMA and grid barrier in one loop) in {key}"


def real_calls(insns: list[Insn], body: list[Insn]) -> list[str]:
    """CALLs in the loop that do work. sm_80 code also has the compiler's convergence idioms, which
    are not calls of a slow path: a call to the next instruction, or past the branch that follows it
    (a loop exit), and a call to a stub that only synchronises the warp and the CTA (WARPSYNC,
    BAR.SYNC, RET)."""
    by_addr = {i.addr: n for n, i in enumerate(insns)}
    found = []
    for call in (i for i in body if i.op.startswith("CALL")):
        target = int(re.findall(r"0x([0-9a-f]+)", call.args)[-1], 16)
        after = insns[by_addr[call.addr] + 1] if by_addr[call.addr] + 1 < len(insns) else None
        if target == call.addr + 16 or (target == call.addr + 32 and after is not None and after.op.startswith("BRA")):
            continue
        stub = []
        for insn in insns[by_addr.get(target, len(insns)):]:
            stub.append(insn.op)
            if insn.op.startswith("RET"):
                break
        if stub and stub[-1].startswith("RET") and all(op.startswith(("MOV", "IMAD.MOV", "WARPSYNC", "BAR.SYNC", "RET"))
                                                        for op in stub):
            continue
        found.append(f"{call.addr:#x} {call.op} {call.args} -> {stub[:8]}")
    return found


@needs_cuobjdump
def test_step_loops_call_nothing_and_stage_with_cp_async(sass):
    for key, insns in sass.items():
        body = step_loop(insns)
        calls = real_calls(insns, body)
        assert not calls, f"{key}: CALL in the step loop: {calls}"
        assert any(i.op.startswith("LDGSTS") for i in body), f"{key}: no cp.async (LDGSTS) in the step loop"
        assert any(i.op.startswith("HMMA") for i in body), f"{key}: no HMMA in the step loop"


@needs_cuobjdump
def test_step_loops_hide_every_global_load(sass):
    """The cell's inputs are loaded before the MMA of their pass or a step ahead: no load in the step
    loop is used without tensor-core work or the grid barrier between them."""
    for key, insns in sass.items():
        found = uncovered_loads(step_loop(insns))
        assert not found, f"{key}: global loads waited for with nothing to hide them:\n" + "\n".join(found)


def division_idioms(body: list[Insn]) -> list[str]:
    """Integer divisions / remainders by a runtime divisor in a step loop: nvcc's idiom starts with the
    divisor converted to float rounding up (I2F...RP) for its reciprocal (MUFU.RCP, F2I, IMAD.HI)."""
    return [f"{i.addr:#x} {i.op} {i.args}" for i in body if i.op.startswith("I2F") and ".RP" in i.op]


def predicated_hmmas(body: list[Insn]) -> list[str]:
    """HMMAs under a predicate: a tensor-core op that may be switched off still takes its issue slot."""
    return [f"{i.addr:#x} {i.pred} {i.op}" for i in body if i.op.startswith("HMMA") and i.pred not in ("", "@PT")]


@needs_cuobjdump
def test_step_loops_divide_nothing_and_predicate_no_hmma(sass):
    """The product is specialised on the plan's n-tiles per pass and keeps its ring slot without a
    division: no integer-division idiom and no predicated HMMA in any step loop."""
    for key, insns in sass.items():
        body = step_loop(insns)
        assert not division_idioms(body), f"{key}: integer division in the step loop: {division_idioms(body)}"
        assert not predicated_hmmas(body), f"{key}: predicated HMMAs in the step loop: {predicated_hmmas(body)[:4]}"


def test_division_and_predicated_hmma_checks_fire():
    """The checks above on hand-written SASS: nvcc's unsigned remainder by a runtime divisor and an
    HMMA under a predicate are reported; the same loop without them is clean."""
    text = """
        code for sm_90
        Function : k
        /*0000*/  I2F.U32.RP R5, R3 ;
        /*0010*/  MUFU.RCP R5, R5 ;
        /*0020*/  F2I.FTZ.U32.TRUNC.NTZ R7, R5 ;
        /*0030*/  IMAD.HI.U32 R7, R7, R2, RZ ;
        /*0040*/  @P0 HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0050*/  HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0060*/  ATOM.E.ADD.STRONG.GPU PT, R3, desc[UR4][R6.64], R3 ;
        /*0070*/  BRA 0x0 ;
    """
    body = step_loop(parse_sass(text)[("k", "90")])
    assert len(division_idioms(body)) == 1 and len(predicated_hmmas(body)) == 1
    clean = text.replace("I2F.U32.RP", "I2F.U32").replace("@P0 HMMA", "HMMA")
    body = step_loop(parse_sass(clean)[("k", "90")])
    assert division_idioms(body) == [] and predicated_hmmas(body) == []


def ready_flag_ordering(body: list[Insn]) -> tuple[int, int]:
    """(releases, acquires) of the ready flags in a step loop. A release (st.release.gpu) is a
    STG.E.STRONG.GPU whose nearest memory instruction before it is a MEMBAR.ALL.GPU. An acquire is
    either an acquire load (ld.acquire.gpu: a LDG.E.STRONG.GPU followed by CCTL.IVALL, L1
    invalidated, before the next memory instruction) or the acquire pattern wait_ready uses (strong
    relaxed polls, then fence.acq_rel.gpu: a MEMBAR.ALL.GPU whose next memory instruction is a
    CCTL.IVALL, in a loop that polls with LDG.E.STRONG.GPU; the compiler may lay the poll loop out
    after the fence and branch back to it, so their order in the listing is not checked). The grid
    barrier is an ATOM, fences before it, and polls through generic LDs, so neither counts it."""
    memory = ("LD", "ST", "ATOM", "RED", "MEMBAR", "CCTL", "BAR")
    releases = acquires = 0
    polls = any(i.op.startswith("LDG") and "STRONG.GPU" in i.op for i in body)

    def nearest(seq):
        return next((i for i in seq if i.op.startswith(memory)), None)

    for n, insn in enumerate(body):
        if insn.op.startswith("STG") and "STRONG.GPU" in insn.op:
            before = nearest(reversed(body[:n]))
            releases += before is not None and before.op.startswith("MEMBAR") and "GPU" in before.op
        elif insn.op.startswith("LDG") and "STRONG.GPU" in insn.op:
            after = nearest(body[n + 1:])
            acquires += after is not None and after.op == "CCTL.IVALL"
        elif insn.op.startswith("MEMBAR") and "GPU" in insn.op and polls:
            after = nearest(body[n + 1:])
            acquires += after is not None and after.op == "CCTL.IVALL"
    return releases, acquires


@needs_cuobjdump
def test_step_loops_release_and_acquire_ready_flags(sass):
    """The ready-flag path (FUSEDRNN_CUDA_READY_FLAGS=1) survives compilation with its ordering: every
    step loop publishes with a fenced strong store and polls with acquire loads."""
    for key, insns in sass.items():
        releases, acquires = ready_flag_ordering(step_loop(insns))
        assert releases >= 1 and acquires >= 1, f"{key}: ready flags without release/acquire: {releases}, {acquires}"


def test_ready_flag_check_tells_release_and_acquire_from_plain_accesses():
    """The check above on hand-written SASS: a fenced strong store and an acquire load count; the same
    store without the fence, and the same load without the L1 invalidation, do not; relaxed polls
    count once the fence follows them."""
    text = """
        code for sm_90
        Function : k
        /*0000*/  HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0010*/  MEMBAR.ALL.GPU ;
        /*0020*/  ERRBAR;
        /*0030*/  STG.E.STRONG.GPU desc[UR6][R2.64], R11 ;
        /*0040*/  LDG.E.STRONG.GPU R10, desc[UR6][R8.64] ;
        /*0050*/  CCTL.IVALL ;
        /*0060*/  ATOM.E.ADD.STRONG.GPU PT, R3, desc[UR4][R6.64], R3 ;
        /*0070*/  BRA 0x0 ;
    """
    assert ready_flag_ordering(step_loop(parse_sass(text)[("k", "90")])) == (1, 1)
    plain = text.replace("MEMBAR.ALL.GPU", "NOP").replace("CCTL.IVALL", "NOP")
    assert ready_flag_ordering(step_loop(parse_sass(plain)[("k", "90")])) == (0, 0)
    # wait_ready's form: relaxed polls (no CCTL after each), one fence after them, then the CTA barrier
    polls = """
        code for sm_90
        Function : k
        /*0000*/  HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0010*/  LDG.E.STRONG.GPU R8, desc[UR4][R2.64] ;
        /*0020*/  LDG.E.STRONG.GPU R5, desc[UR4][R2.64+0x80] ;
        /*0030*/  NANOSLEEP R4 ;
        /*0040*/  MEMBAR.ALL.GPU ;
        /*0050*/  ERRBAR;
        /*0060*/  CCTL.IVALL ;
        /*0070*/  BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0080*/  ATOM.E.ADD.STRONG.GPU PT, R3, desc[UR4][R6.64], R3 ;
        /*0090*/  BRA 0x0 ;
    """
    assert ready_flag_ordering(step_loop(parse_sass(polls)[("k", "90")])) == (0, 1)
    no_fence = polls.replace("MEMBAR.ALL.GPU", "NOP").replace("CCTL.IVALL", "NOP")  # the fence's two parts
    assert ready_flag_ordering(step_loop(parse_sass(no_fence)[("k", "90")])) == (0, 0)


def test_uncovered_load_check_fires_on_a_load_used_at_once():
    """The check above on hand-written SASS: a gx load consumed by the sigmoid before the grid barrier
    is reported; the same load consumed only after the barrier (a prefetch) is not."""
    text = """
        code for sm_90
        Function : k
        /*0000*/  HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0010*/  LDG.E.U16 R20, desc[UR4][R2.64] ;
        /*0020*/  FADD R21, R20, R4 ;
        /*0030*/  MUFU.EX2 R22, R21 ;
        /*0040*/  ATOM.E.ADD.STRONG.GPU PT, R3, desc[UR4][R6.64], R3 ;
        /*0050*/  BRA 0x0 ;
    """
    body = step_loop(parse_sass(text)[("k", "90")])
    assert len(body) == 6
    assert len(uncovered_loads(body)) == 1
    prefetch = text.replace("/*0020*/  FADD R21, R20, R4", "/*0020*/  FADD R21, R19, R4")
    assert uncovered_loads(step_loop(parse_sass(prefetch)[("k", "90")])) == []
    # a write under @P3 shadows the load for reads under @P3 only
    text = text.replace("/*0020*/  FADD R21, R20, R4", "/*0020*/  @P3 IMAD.SHL.U32 R20, R25, 0x2, RZ")
    same = text.replace("/*0030*/  MUFU.EX2 R22, R21", "/*0030*/  @P3 IADD3 R15, P1, R20, R12, RZ")
    assert uncovered_loads(step_loop(parse_sass(same)[("k", "90")])) == []
    other = text.replace("/*0030*/  MUFU.EX2 R22, R21", "/*0030*/  @P2 IADD3 R15, P1, R20, R12, RZ")
    assert len(uncovered_loads(step_loop(parse_sass(other)[("k", "90")]))) == 1
    reset = text.replace("/*0030*/  MUFU.EX2 R22, R21", "/*0030*/  @P3 IADD3 R15, P1, R20, R12, RZ").replace(
        "/*0020*/  @P3 IMAD.SHL.U32 R20, R25, 0x2, RZ", "/*0020*/  @P3 IMAD.SHL.U32 R20, R25, 0x2, RZ ;\n"
        "        /*0028*/  ISETP.NE.AND P3, PT, R9, RZ, PT")
    assert len(uncovered_loads(step_loop(parse_sass(reset)[("k", "90")]))) == 1


# ---------------------------------------------------------------------------------------------
# setup.py and the toolkit
# ---------------------------------------------------------------------------------------------


def _setup_says(**env):
    out = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, env={**os.environ, **env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stderr.splitlines() if line.startswith("fusedrnn setup:")]


def test_setup_warns_when_torch_and_nvcc_cuda_majors_differ(tmp_path):
    """A wrapper nvcc reporting another CUDA major than torch's: setup.py says so before compiling
    (a build that would fail or load wrongly later), and says nothing when they agree."""
    import torch

    if torch.version.cuda is None:
        pytest.skip("CPU build of torch: the toolkit check is not reached")
    torch_major = int(torch.version.cuda.split(".")[0])
    for nvcc_major, warned in ((torch_major + 1, True), (torch_major, False)):
        home = tmp_path / f"cuda{nvcc_major}"
        (home / "bin").mkdir(parents=True)
        fake = home / "bin" / "nvcc"
        fake.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {nvcc_major}.0, V{nvcc_major}.0.1'\n")
        fake.chmod(0o755)
        lines = _setup_says(CUDA_HOME=str(home))
        mismatch = [line for line in lines if "CUDA major version" in line]
        assert bool(mismatch) == warned, lines
        if warned:
            assert f"torch was built with CUDA {torch.version.cuda}" in mismatch[0]
            assert f"nvcc is CUDA {nvcc_major}.0" in mismatch[0]
