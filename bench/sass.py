"""The compiled sm_90 SASS of the persistent kernels, read for the latency model: MODEL, not measured.

One SASS parser for the project (tests/test_cuda_codegen.py uses it too): ``parse_sass`` reads
``cuobjdump -sass`` text into instructions, with each instruction's control word when the dump
carries the raw encoding (sm_90: 128 bits, printed as two 64-bit words; the control bits are the top
of the second word). ``walk`` executes one step of a kernel's step loop for one warp (lane 0 of warp 0
of CTA 0) under a launch plan and issues it with the control words; bench/README.md describes the
method and what it approximates.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# ---------------------------------------------------------------------------------------------
# Instructions and their control words
# ---------------------------------------------------------------------------------------------

NO_BARRIER = 7  # a 3-bit scoreboard field of 7: none


@dataclass(frozen=True)
class Control:
    """The scheduling bits of one sm_70+ instruction (bits 105..125 of the 128-bit encoding)."""

    stall: int  # cycles before the warp may issue its next instruction (0..15)
    yield_: int  # the yield hint bit as encoded
    wbar: int  # scoreboard set when the result is written (7: none)
    rbar: int  # scoreboard set when the source registers have been read (7: none)
    wait: int  # 6-bit mask: scoreboards this instruction waits for before it issues
    reuse: int  # operand reuse cache bits

    @classmethod
    def decode(cls, hi: int) -> "Control":
        """From the instruction's high 64-bit word."""
        bits = (hi >> 41) & ((1 << 23) - 1)
        return cls(stall=bits & 0xF, yield_=(bits >> 4) & 1, wbar=(bits >> 5) & 7, rbar=(bits >> 8) & 7,
                   wait=(bits >> 11) & 0x3F, reuse=(bits >> 17) & 0xF)

    def waits_on(self) -> list[int]:
        return [b for b in range(6) if self.wait >> b & 1]


@dataclass(frozen=True)
class Insn:
    addr: int
    pred: str  # "" or e.g. "@!P0"
    op: str  # opcode with modifiers, e.g. "LDG.E.U16"
    args: str  # operand text
    hi: int | None = field(default=None, compare=False)  # the encoding's high 64-bit word, when dumped

    @property
    def ctrl(self) -> Control | None:
        return None if self.hi is None else Control.decode(self.hi)

    def dest_regs(self) -> set[int]:
        m = re.match(r"\s*R(\d+)\b", self.args)
        if not m or self.op.startswith(("ST", "RED", "BAR", "BRA")):
            return set()
        width = 4 if ".128" in self.op else 2 if (".64" in self.op or "WIDE" in self.op) else 1
        return {int(m.group(1)) + i for i in range(width)}

    def source_regs(self) -> set[int]:
        if self.op.startswith(("ST", "RED", "ATOM")):  # stores read every register operand
            text = self.args
        else:
            text = self.args.split(",", 1)[1] if "," in self.args else ""
        width = 4 if ".128" in self.op else 2 if ".64" in self.op else 1
        regs = set()
        for m in re.finditer(r"\[([^\]]*)\]", text):  # addresses: a register, or a pair when .64
            for r in re.finditer(r"\bR(\d+)(\.64)?\b", m.group(1)):
                regs |= {int(r.group(1)) + i for i in range(2 if r.group(2) else 1)}
        for m in re.finditer(r"\bR(\d+)\b", re.sub(r"\[[^\]]*\]", "", text)):  # data operands: the op's width
            regs |= {int(m.group(1)) + i for i in range(width)}
        return regs

    def branch_target(self) -> int | None:
        if not self.op.startswith("BRA"):
            return None
        targets = re.findall(r"0x([0-9a-f]+)", self.args)
        return int(targets[-1], 16) if targets else None


_ARCH_LINE = re.compile(r"code for sm_(\d+)")
_FUNC_LINE = re.compile(r"Function : (\S+)")
_INSN_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*(.*?)\s*;")
_RAW_ONLY = re.compile(r"^\s*/\*\s*0x([0-9a-f]{16})\s*\*/\s*$")


def parse_sass(text: str) -> dict[tuple[str, str], list[Insn]]:
    """{(function, arch): instructions} from cuobjdump -sass output (control words when present)."""
    out, arch, func = {}, "?", None
    pending = None  # an instruction whose high word is on the next line
    for line in text.splitlines():
        if pending is not None:
            raw = _RAW_ONLY.match(line)
            if raw:
                insn = pending
                out[func].append(Insn(insn.addr, insn.pred, insn.op, insn.args, int(raw.group(1), 16)))
                pending = None
                continue
            out[func].append(pending)
            pending = None
        m = _ARCH_LINE.search(line)
        if m:
            arch = m.group(1)
            continue
        m = _FUNC_LINE.search(line)
        if m:
            func = (m.group(1), arch)
            out[func] = []
            continue
        m = _INSN_LINE.search(line)
        if m and func is not None:
            pending = Insn(int(m.group(1), 16), (m.group(2) or "").strip(), m.group(3), m.group(4))
    if pending is not None:
        out[func].append(pending)
    return out


def loops(insns: list[Insn]):
    """Every loop of the function: (first, last) index of each backward branch's range, in the order
    of the branches."""
    index = {insn.addr: n for n, insn in enumerate(insns)}
    for end, br in enumerate(insns):
        target = br.branch_target()
        if target is not None and target < br.addr and target in index:
            yield index[target], end


def step_loop_range(insns: list[Insn]) -> tuple[int, int] | None:
    """(first, last) index of the innermost loop holding both the tensor-core MMAs and the grid
    barrier's atomic: the kernel's step loop."""
    hmma = [n for n, i in enumerate(insns) if i.op.startswith("HMMA")]
    atom = [n for n, i in enumerate(insns) if i.op.startswith(("ATOM", "RED"))]
    best = None
    for start, end in loops(insns):
        if best is not None and end - start >= best[1] - best[0]:
            continue
        if any(start <= n <= end for n in hmma) and any(start <= n <= end for n in atom):
            best = (start, end)
    return best


def step_loop(insns: list[Insn]) -> list[Insn]:
    best = step_loop_range(insns)
    return insns[best[0]:best[1] + 1] if best else []


# ---------------------------------------------------------------------------------------------
# The built extension's SASS, cached per .so hash
# ---------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def cuda_tool(name: str) -> str | None:
    """A CUDA binary tool: CUDA_HOME / CUDA_PATH / /usr/local/cuda, PATH, or Triton's wheel."""
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "bin", name)):
            return os.path.join(home, "bin", name)
    if shutil.which(name):
        return shutil.which(name)
    spec = importlib.util.find_spec("triton")  # Triton's wheel ships cuobjdump and nvdisasm
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "backends" / "nvidia" / "bin" / name
        if candidate.exists():
            return str(candidate)
    return None


def extension_path() -> Path | None:
    """The built extension next to the package (this interpreter's ABI first): fusedrnn/_C*.so in a
    checkout (bench/ beside fusedrnn/), or beside bench/ when installed as fusedrnn.bench."""
    import sysconfig

    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    for pkg in (ROOT / "fusedrnn", Path(__file__).resolve().parent.parent):
        if (pkg / ("_C" + suffix)).exists():
            return pkg / ("_C" + suffix)
    for pkg in (ROOT / "fusedrnn", Path(__file__).resolve().parent.parent):
        found = sorted(pkg.glob("_C*.so"))
        if found:
            return found[0]
    return None


def _cache_dir() -> Path:
    base = os.environ.get("FUSEDRNN_SASS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fusedrnn", "sass")
    return Path(base)


def kernel_sass(so: Path | None = None, arch: str = "90") -> dict[str, list[Insn]] | None:
    """{mangled name: instructions} of the persistent kernels for `arch` in the extension, or None
    when the extension or cuobjdump is absent (RuntimeError when cuobjdump fails on it). The dump is
    cached by the .so's SHA-256."""
    so = so or extension_path()
    tool = cuda_tool("cuobjdump")
    if so is None or not so.exists() or tool is None:
        return None
    digest = hashlib.sha256(so.read_bytes()).hexdigest()[:24]
    cache = _cache_dir() / f"{digest}-sm{arch}.sass.gz"
    if cache.exists():
        text = gzip.decompress(cache.read_bytes()).decode()
    else:
        proc = subprocess.run([tool, "-sass", "-arch", f"sm_{arch}", str(so)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} -sass -arch sm_{arch} {so} failed: {proc.stderr.strip()[-500:]}")
        # keep only the persistent kernels (the cache stays small)
        keep, text_lines = False, []
        for line in proc.stdout.splitlines():
            if "Function :" in line:
                keep = "persistent_kernel" in line and "barrier_floor" not in line
            if keep or "code for sm_" in line:
                text_lines.append(line)
        text = "\n".join(text_lines)
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(gzip.compress(text.encode(), 6))
            tmp.replace(cache)
        except OSError:
            pass
    return {name: insns for (name, a), insns in parse_sass(text).items() if a == arch}


_TYPE = {2: "13__nv_bfloat16", 1: "6__half", 4: "f"}
CELL_INDEX = {"gru": 0, "lstm": 1, "rnn_tanh": 2, "rnn_relu": 3}  # the kernels' CELL (csrc/rnn_launch.h, Cell)


def kernel_name(cell: str, backward: bool, elem: int, mode: str, mtiles: int, dtype_name: str = "bf16",
                ntiles: int = 2, zo: bool = False) -> str:
    """The mangled name of a plan's kernel instantiation (csrc/rnn_kernels.cuh): one per cell, dtype,
    math mode, n-tiles per pass, m-tiles for the backward, and zoneout (ZO: the plain kernel unless
    ``zo``)."""
    c = CELL_INDEX[cell]
    t = _TYPE[1 if dtype_name == "fp16" else elem]
    m = {"half": 0, "tf32": 1, "tf32x3": 2}[mode]
    z = int(zo)
    if backward:
        return f"_ZN8fusedrnn25rnn_bwd_persistent_kernelILi{c}E{t}Li{m}ELi{mtiles}ELi{ntiles}ELb{z}EEEvNS_9BwdParamsE"
    return f"_ZN8fusedrnn25rnn_fwd_persistent_kernelILi{c}E{t}Li{m}ELi{ntiles}ELb{z}EEEvNS_9FwdParamsE"


# ---------------------------------------------------------------------------------------------
# Executing one step for one warp: integer state of lane 0 of warp 0 of CTA 0 under a plan
# ---------------------------------------------------------------------------------------------

M32 = 0xFFFFFFFF
PARAM_BASE = 0x210  # sm_90: kernel parameters start at c[0x0][0x210]
PLAN_INTS = ("cell", "backward", "mode", "elem", "H", "B", "K", "units", "mtiles", "n_ug", "n_bg", "grid", "rows",
             "passes", "pass_ntiles", "kblock", "nblocks", "blocks_per_warp", "reg_blocks", "smem_blocks",
             "stage_slots")
FWD_POINTERS = ("gx", "w_hh", "b_hh", "residual", "lengths", "y", "hist", "h_state", "c_state", "saved", "ready")
BWD_POINTERS = ("w_hh", "dy", "hist", "saved", "lengths", "dgh", "dgx_n", "dh", "dc", "ready")


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def param_constants(plan, steps: int, null: set[str], zoneout: tuple[float, bool] | None = None) -> dict[int, int]:
    """c[0x0] words (byte offset -> 32-bit value) of FwdParams / BwdParams for `plan` (a
    bench.model_cuda.Plan): the Plan struct, T, reverse = false, pointers (fake, 256-byte aligned,
    0 for the names in `null`); blockDim and gridDim at the bank's start. ``zoneout`` = (p,
    training): the ZoneParams after the pointers (what the ZO kernels read; both states zoned with
    p, q = 1 - p, the seeds a fake pointer in training and null in evaluation)."""
    ints = {"cell": CELL_INDEX[plan.cell], "backward": int(plan.backward),
            "mode": {"half": 0, "tf32": 1, "tf32x3": 2}[plan.mode], "n_ug": plan.unit_groups,
            "n_bg": plan.batch_groups}
    words = {0x0: 256, 0x4: 1, 0x8: 1, 0xC: plan.grid, 0x10: 1, 0x14: 1}
    for n, name in enumerate(PLAN_INTS):
        words[PARAM_BASE + 4 * n] = ints.get(name, getattr(plan, name, 0)) & M32
    states = 2 if plan.cell == "lstm" else 1
    stage_off = _round_up(8 * plan.smem_blocks * plan.mtiles * 8 * 32 * 4, 128)
    part_off = _round_up(stage_off + 8 * plan.stage_slots * plan.pass_ntiles * 32 * 16, 128)
    state_off = _round_up(part_off + 8 * plan.mtiles * 2 * 32 * 16, 128)
    len_off = _round_up(state_off + states * 64 * plan.units * 4, 128)
    sizes = (0, stage_off, part_off, state_off, len_off, _round_up(len_off + 64 * 4, 128))
    off = PARAM_BASE + _round_up(4 * len(PLAN_INTS), 8)
    for v in sizes:
        words[off], words[off + 4] = v & M32, v >> 32
        off += 8
    words[off], words[off + 4] = steps, 0  # T, reverse (false) and padding
    off += 8
    for n, name in enumerate(BWD_POINTERS if plan.backward else FWD_POINTERS):
        addr = 0 if name in null else 0x7F0000000000 + (n + 1) * 0x10000000
        words[off], words[off + 4] = addr & M32, addr >> 32
        off += 8
    if zoneout is not None:  # ZoneParams {float p[2]; float q[2]; const int64_t* seeds;}
        p, training = zoneout
        for k, v in enumerate((p, p, 1.0 - p, 1.0 - p)):
            words[off + 4 * k] = _bits(v)
        seeds = 0x7F0000000000 + 0x100 * 0x10000000 if training else 0
        words[off + 16], words[off + 20] = seeds & M32, seeds >> 32
    return words


def _f32(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits & M32))[0]


def _bits(x: float) -> int:
    try:
        return struct.unpack("<I", struct.pack("<f", x))[0]
    except (OverflowError, struct.error):
        return 0x7F800000


def _split_args(args: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in args:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


_PRED = re.compile(r"^(!?)(U?P[0-6T])$")
NO_DEST = ("ST", "RED", "BAR", "BRA", "BRX", "DEPBAR", "LDGSTS", "LDGDEPBAR", "EXIT", "CCTL", "MEMBAR", "WARPSYNC",
           "BSSY", "BSYNC", "NOP", "YIELD", "ERRBAR", "CGAERRBAR", "CALL", "RET")


class Machine:
    """Lane 0's integer and predicate registers, None where unknown (loaded from memory, float
    math, or computed from something unknown)."""

    def __init__(self, const: dict[int, int]):
        self.const = const
        self.r: dict[str, int | None] = {}
        self.p: dict[str, bool | None] = {}
        # Registers known in some bits only: (value, mask of the known bits); r[name] is None for them.
        # Only LOP3 reads them (nvcc packs predicates into a register's bits, some known, some not,
        # and tests one bit later: LOP3.LUT P2, RZ, R189, 0x2, ...).
        self.part: dict[str, tuple[int, int]] = {}

    # -- operands
    def pred(self, text: str) -> bool | None:
        m = _PRED.match(text.strip().lstrip("@"))
        if not m:
            return None
        name = m.group(2)
        v = True if name in ("PT", "UPT") else self.p.get(name)
        return None if v is None else (v != bool(m.group(1)))

    def val(self, text: str) -> int | None:
        t = text.strip()
        neg = inv = False
        if t.startswith("-"):
            neg, t = True, t[1:]
        if t.startswith("~"):
            inv, t = True, t[1:]
        if t.startswith("|") and t.endswith("|"):
            t = t[1:-1]
            v = self.val(t)
            if v is None:
                return None
            v = abs(v - (1 << 32) if v >> 31 else v) & M32
        else:
            t = t.replace(".reuse", "")
            if t in ("RZ", "URZ", "SRZ"):
                v = 0
            elif re.fullmatch(r"U?R\d+", t):
                v = self.r.get(t)
            elif re.fullmatch(r"0x[0-9a-f]+", t):
                v = int(t, 16) & M32
            elif re.fullmatch(r"\d+", t):
                v = int(t) & M32
            else:
                m = re.fullmatch(r"c\[0x0\]\[(0x[0-9a-f]+)\]", t)
                v = self.const.get(int(m.group(1), 16)) if m else None
        if v is None:
            return None
        if inv:
            v = ~v & M32
        if neg:
            v = -v & M32
        return v

    def address(self, args: str) -> int | None:
        """The 64-bit address of a memory operand ``[R4.64+0x10]`` (None when unknown)."""
        m = re.search(r"\[(U?R)(\d+)\.64(?:\+(0x[0-9a-f]+|\d+))?\]", args)
        if not m:
            return None
        lo, hi = self.r.get(f"{m.group(1)}{m.group(2)}"), self.r.get(f"{m.group(1)}{int(m.group(2)) + 1}")
        if lo is None or hi is None:
            return None
        return (lo | hi << 32) + (int(m.group(3), 0) if m.group(3) else 0)

    def set(self, name: str, v: int | None) -> None:
        name = name.replace(".reuse", "")
        if name in ("RZ", "URZ", "PT", "UPT"):
            return
        self.part.pop(name, None)
        if _PRED.match(name):
            self.p[name] = None if v is None else bool(v)
        elif re.fullmatch(r"U?R\d+", name):
            self.r[name] = None if v is None else v & M32

    def set_pair(self, name: str, v: int | None) -> None:
        m = re.fullmatch(r"(U?R)(\d+)", name)
        if not m:
            return
        self.set(name, None if v is None else v & M32)
        self.set(f"{m.group(1)}{int(m.group(2)) + 1}", None if v is None else (v >> 32) & M32)

    def clobber(self, insn: Insn) -> None:
        """Unknown results: the first operand and the predicates that follow it (carry outs)."""
        ops = _split_args(insn.args)
        if not ops or insn.op.startswith(NO_DEST):
            return
        first = ops[0].replace(".reuse", "")
        width = 4 if (".128" in insn.op or insn.op.startswith("HMMA")) else 2 if (
            ".64" in insn.op or "WIDE" in insn.op) else 1
        m = re.fullmatch(r"(U?R)(\d+)", first)
        if m:
            for i in range(width):
                self.set(f"{m.group(1)}{int(m.group(2)) + i}", None)
        elif _PRED.match(first):
            self.set(first, None)
        for o in ops[1:]:
            if _PRED.match(o.strip()) and not o.strip().startswith("!"):
                self.set(o.strip(), None)
            else:
                break

    def bits(self, text: str) -> tuple[int, int]:
        """(value, known-bit mask) of an operand: a known value is known in every bit."""
        t = text.strip().replace(".reuse", "")
        v = self.val(t)
        if v is not None:
            return v, M32
        inv = t.startswith("~")
        value, mask = self.part.get(t.lstrip("~"), (0, 0))
        return ((~value & M32) if inv else value), mask

    def _lop3_bits(self, ops: list[str]) -> tuple[int, int]:
        """LOP3.LUT d, a, b, c, lut bit by bit: a result bit is known where the LUT gives the same
        output for every value of the input bits that are unknown there."""
        (a, ma), (b, mb), (c, mc) = self.bits(ops[1]), self.bits(ops[2]), self.bits(ops[3])
        lut = self.val(ops[4])
        if lut is None:
            return 0, 0
        r = known = 0
        for bit in range(32):
            outs = set()
            for x in ((a >> bit & 1,) if ma >> bit & 1 else (0, 1)):
                for y in ((b >> bit & 1,) if mb >> bit & 1 else (0, 1)):
                    for z in ((c >> bit & 1,) if mc >> bit & 1 else (0, 1)):
                        outs.add(lut >> (x << 2 | y << 1 | z) & 1)
            if len(outs) == 1:
                known |= 1 << bit
                r |= outs.pop() << bit
        return r, known

    def _set_bits(self, name: str, value: int, mask: int) -> None:
        name = name.replace(".reuse", "")
        if mask == M32:
            self.set(name, value)
        else:
            self.set(name, None)
            if mask and re.fullmatch(r"U?R\d+", name):
                self.part[name] = (value & mask, mask)

    # -- execution of one instruction's integer effect
    def execute(self, insn: Insn) -> None:
        if insn.pred:
            g = self.pred(insn.pred)
            if g is False:
                return
            if g is None:
                ops = _split_args(insn.args)
                if insn.op.startswith(("LOP3", "ULOP3")) and not _PRED.match(ops[0]):
                    # executed or not: the bits both outcomes agree on stay known
                    old, mold = self.bits(ops[0])
                    new, mnew = self._lop3_bits(ops)
                    self._set_bits(ops[0], old, mold & mnew & ~(old ^ new) & M32)
                    return
                self.clobber(insn)
                return
        try:
            if not self._exact(insn):
                self.clobber(insn)
        except (IndexError, ValueError, TypeError):
            self.clobber(insn)

    def _exact(self, insn: Insn) -> bool:  # noqa: C901 - one opcode table
        op, ops = insn.op, _split_args(insn.args)
        base = op.split(".")[0]
        V = self.val
        if base in ("MOV", "UMOV", "MOV32I"):
            self.set(ops[0], V(ops[1]))
        elif base in ("S2R", "S2UR", "CS2R"):
            src = ops[1]
            v = 0 if src in ("SR_TID.X", "SR_TID.Y", "SR_TID.Z", "SR_CTAID.X", "SR_CTAID.Y", "SR_CTAID.Z",
                             "SR_LANEID", "SRZ") else None
            if base == "CS2R" and ".32" not in op:
                self.set_pair(ops[0], v)
            else:
                self.set(ops[0], v)
        elif base in ("LDC", "ULDC"):
            m = re.fullmatch(r"c\[0x0\]\[(0x[0-9a-f]+)\]", ops[1])
            if not m:
                return False
            off = int(m.group(1), 16)
            if ".64" in op:
                lo, hi = self.const.get(off), self.const.get(off + 4)
                self.set_pair(ops[0], None if lo is None or hi is None else lo | hi << 32)
            else:
                self.set(ops[0], self.const.get(off))
        elif base == "R2UR":
            self.set(ops[0], V(ops[1]))
        elif base in ("IMAD", "UIMAD"):
            a, b = V(ops[1]), V(ops[2])
            if ".WIDE" in op:
                c = ops[3]
                m = re.fullmatch(r"(U?R)(\d+)", c.replace(".reuse", ""))
                if c in ("RZ", "URZ"):
                    cv = 0
                elif m:
                    lo, hi = self.r.get(c.replace(".reuse", "")), self.r.get(f"{m.group(1)}{int(m.group(2)) + 1}")
                    cv = None if lo is None or hi is None else lo | hi << 32
                else:
                    cv = V(c)
                if None in (a, b, cv):
                    self.set_pair(ops[0], None)
                    return True
                if ".U32" not in op:
                    a, b = (a - (1 << 32) if a >> 31 else a), (b - (1 << 32) if b >> 31 else b)
                self.set_pair(ops[0], (a * b + cv) & ((1 << 64) - 1))
                return True
            c = V(ops[3]) if len(ops) > 3 else 0
            if ".X" in op:  # IMAD.X d, a, b, c, carry: a * b + c + carry (a 64-bit add's high word, or + 1 with PT)
                carry = self.pred(ops[4]) if len(ops) > 4 else False
                self.set(ops[0], None if None in (a, b, c, carry) else a * b + c + int(carry))
                return True
            if None in (a, b, c):
                self.set(ops[0], None)
            elif ".HI" in op:
                if ".U32" not in op:  # signed: the high word of the 64-bit signed product
                    a, b = (a - (1 << 32) if a >> 31 else a), (b - (1 << 32) if b >> 31 else b)
                self.set(ops[0], ((a * b) >> 32) + c)
            else:
                self.set(ops[0], a * b + c)
        elif base in ("IADD3", "UIADD3"):
            srcs = [o for o in ops[1:] if not _PRED.match(o.strip())]
            outs = [o for o in ops[1:3] if _PRED.match(o.strip())]  # carry-out predicates
            vals = [V(o) for o in srcs]
            if ".X" in op:  # carry-ins: the trailing predicates
                vals += [self.pred(o) for o in ops[1 + len(outs) + len(srcs):]]
            total = None if None in vals else sum(int(v) for v in vals)
            self.set(ops[0], total)
            for k, o in enumerate(outs):  # the first carry out: bit 32 (of a + b + c, 2 at most with 3 terms)
                self.set(o, None if total is None else (total >> 32) >> k & 1)
        elif base == "VIADD":
            a, b = V(ops[1]), V(ops[2])
            self.set(ops[0], None if None in (a, b) else a + b)
        elif base in ("LEA", "ULEA"):
            outs = [o for o in ops[1:2] if _PRED.match(o.strip())]
            srcs = [o for o in ops[1 + len(outs):] if not _PRED.match(o.strip())]
            if ".HI" in op:  # LEA.HI[.X] d, a, b, c, s[, carry]: d = high word of (c:a) << s, + b (+ carry)
                a, b, c, s = V(srcs[0]), V(srcs[1]), V(srcs[2]) if len(srcs) > 3 else 0, V(srcs[-1])
                carry = self.pred(ops[-1]) if ".X" in op else False
                r = None if None in (a, b, c, s, carry) else ((((c << 32) | a) << s) >> 32) + b + int(carry)
            else:
                a, b, s = V(srcs[0]), V(srcs[1]), V(srcs[2])
                r = None if None in (a, b, s) else ((a << s) & M32) + b
            self.set(ops[0], r)
            for o in outs:
                self.set(o, None if r is None else r >> 32 & 1)
        elif base in ("SHF", "USHF"):
            lo, s, hi = V(ops[1]), V(ops[2]), V(ops[3])
            if None in (lo, s, hi):
                self.set(ops[0], None)
            elif ".R" in op and ".HI" in op:
                x = hi - (1 << 32) if (".S32" in op and hi >> 31) else hi
                self.set(ops[0], x >> (s & 31))
            elif ".R" in op:
                self.set(ops[0], ((hi << 32 | lo) >> (s & 31)) & M32)
            elif ".L" in op and ".HI" in op:
                self.set(ops[0], ((hi << 32 | lo) << (s & 31)) >> 32)
            else:
                self.set(ops[0], lo << (s & 31))
        elif base in ("LOP3", "ULOP3"):
            pdest = ops.pop(0) if _PRED.match(ops[0]) else None  # LOP3.LUT P0, R1, ...: P0 = (result != 0)
            r, known = self._lop3_bits(ops)
            self._set_bits(ops[0], r, known)
            if pdest is not None:  # known when a known bit is set, or every bit is known
                self.set(pdest, 1 if r & known else 0 if known == M32 else None)
        elif op == "P2R":  # P2R d, PR, a, mask: the predicates P<b> of the mask's bits into d, a elsewhere
            a, mask = V(ops[2]), V(ops[3])
            bits = None if mask is None else [self.p.get(f"P{b}") for b in range(7) if mask >> b & 1]
            if None in (a, mask) or None in bits:
                self.set(ops[0], None)
            else:
                self.set(ops[0], (a & ~mask & M32) | sum(int(bool(self.p[f"P{b}"])) << b
                                                        for b in range(7) if mask >> b & 1))
        elif op == "R2P":  # R2P PR, a, mask: P<b> = bit b of a, for the mask's bits
            a, mask = V(ops[1]), V(ops[2])
            if mask is None:
                return False
            for b in range(7):
                if mask >> b & 1:
                    self.set(f"P{b}", None if a is None else a >> b & 1)
        elif base in ("SEL", "USEL"):
            g = self.pred(ops[3])
            self.set(ops[0], None if g is None else V(ops[1]) if g else V(ops[2]))
        elif base in ("VIMNMX", "IMNMX", "VIADDMNMX"):
            if base == "VIADDMNMX":
                a, b0, b, g = V(ops[1]), V(ops[2]), V(ops[3]), self.pred(ops[4])
                a = None if None in (a, b0) else (a + b0) & M32
            else:
                a, b, g = V(ops[1]), V(ops[2]), self.pred(ops[3])
            if None in (a, b, g):
                self.set(ops[0], None)
                return True
            if ".U32" not in op:
                sa, sb = (a - (1 << 32) if a >> 31 else a), (b - (1 << 32) if b >> 31 else b)
            else:
                sa, sb = a, b
            self.set(ops[0], (min if g else max)(sa, sb))
        elif base in ("ISETP", "UISETP"):
            return self._isetp(op, ops)
        elif base == "FSETP":
            return self._fsetp(op, ops)
        elif base in ("PLOP3", "UPLOP3"):
            a, b, c = self.pred(ops[2]), self.pred(ops[3]), self.pred(ops[4])
            lut = V(ops[5])
            if None in (a, b, c, lut):
                self.set(ops[0], None)
                self.set(ops[1], None)
                return True
            self.set(ops[0], (lut >> (a << 2 | b << 1 | c)) & 1)
            self.set(ops[1], (V(ops[6]) >> (a << 2 | b << 1 | c)) & 1 if len(ops) > 6 else None)
        elif base == "IABS":
            a = V(ops[1])
            self.set(ops[0], None if a is None else abs(a - (1 << 32) if a >> 31 else a))
        elif base == "I2F":
            a = V(ops[1])
            if a is None or ".F64" in op:
                return False
            x = a if (".U32" in op or ".S32" not in op and ".U" in op) else (a - (1 << 32) if a >> 31 else a)
            self.set(ops[0], _bits(float(x)))
        elif base == "MUFU":
            a = V(ops[1])
            if a is None or ".RCP" not in op or ".64H" in op:
                return False
            x = _f32(a)
            self.set(ops[0], _bits(1.0 / x) if x != 0 else 0x7F800000)
        elif base == "F2I":
            a = V(ops[1])
            if a is None or ".F64" in op:
                return False
            x = _f32(a)
            if x != x:
                return False
            v = int(x)
            self.set(ops[0], max(0, min(v, M32)) if ".U32" in op else v)
        elif base in ("SGXT", "USGXT"):  # SGXT[.U32] d, a, n: the low n bits of a, sign- or zero-extended
            a, n = V(ops[1]), V(ops[2])
            if None in (a, n):
                self.set(ops[0], None)
            else:
                n = n & 31 or 32
                low = a & ((1 << n) - 1)
                self.set(ops[0], low if ".U32" in op or not low >> (n - 1) else low - (1 << n))
        elif base in ("POPC", "UPOPC"):
            a = V(ops[1])
            self.set(ops[0], None if a is None else bin(a).count("1"))
        else:
            return False
        return True

    def _isetp(self, op: str, ops: list[str]) -> bool:
        parts = op.split(".")
        cmp_ = next(p for p in parts if p in ("LT", "LE", "GT", "GE", "EQ", "NE"))
        unsigned = "U32" in parts
        comb = next((p for p in parts if p in ("AND", "OR", "XOR")), "AND")
        a, b = self.val(ops[2]), self.val(ops[3])
        c = self.pred(ops[4]) if len(ops) > 4 else True
        if "EX" in parts:  # the high words of a 64-bit compare, the low words' result in ops[5]
            low = self.pred(ops[5]) if len(ops) > 5 else None
            if None in (a, b, low):
                r = None
            elif cmp_ in ("EQ", "NE"):
                r = (a == b and low) if cmp_ == "EQ" else (a != b or low)
            else:  # ordered: the high words decide unless equal, then the low words' (unsigned) result
                if not unsigned:
                    a, b = (a - (1 << 32) if a >> 31 else a), (b - (1 << 32) if b >> 31 else b)
                strict = {"LT": a < b, "LE": a < b, "GT": a > b, "GE": a > b}[cmp_]
                r = strict or (a == b and bool(low))
        elif None in (a, b):
            r = None
        else:
            if not unsigned:
                a, b = (a - (1 << 32) if a >> 31 else a), (b - (1 << 32) if b >> 31 else b)
            r = {"LT": a < b, "LE": a <= b, "GT": a > b, "GE": a >= b, "EQ": a == b, "NE": a != b}[cmp_]
        return self._set_compare(ops, r, c, comb)

    def _fsetp(self, op: str, ops: list[str]) -> bool:
        """FSETP.<cmp>[U].<comb> P, Q, a, b, c: a float32 compare (the U forms also true when either
        is NaN), known when both operands are (a zoneout kernel's p against 0.0 from the constant bank)."""
        parts = op.split(".")
        cmp_ = next((p for p in parts if p.rstrip("U") in ("LT", "LE", "GT", "GE", "EQ", "NE")), None)
        if cmp_ is None:
            return False
        comb = next((p for p in parts if p in ("AND", "OR", "XOR")), "AND")
        x, y = self._fval(ops[2]), self._fval(ops[3])
        c = self.pred(ops[4]) if len(ops) > 4 else True
        r = None
        if None not in (x, y):
            if x != x or y != y:
                r = cmp_.endswith("U")  # unordered: only the U forms hold
            else:
                r = {"LT": x < y, "LE": x <= y, "GT": x > y, "GE": x >= y, "EQ": x == y, "NE": x != y}[cmp_.rstrip("U")]
        return self._set_compare(ops, r, c, comb)

    def _fval(self, text: str) -> float | None:
        """A float operand: a register or constant-bank word as float32 (with - and |..| as float
        negation and absolute value), or an immediate (0.5, -1e-05, +INF, QNAN)."""
        t = text.strip().replace(".reuse", "")
        neg, t = t.startswith("-"), t.lstrip("-+")
        if t.startswith("|") and t.endswith("|"):
            v = self._fval(t[1:-1])
            v = None if v is None else abs(v)
        elif t in ("INF", "QNAN"):
            v = float("inf") if t == "INF" else float("nan")
        elif re.fullmatch(r"\d+\.\d*(e[-+]?\d+)?|\d+e[-+]?\d+", t):
            v = float(t)
        else:
            w = self.val(t)
            v = None if w is None else _f32(w)
        return None if v is None else -v if neg else v

    def _set_compare(self, ops: list[str], r: bool | None, c: bool | None, comb: str) -> bool:
        """A compare's result ``r`` combined with the predicate ``c``, into ops[0] (ops[1]: unknown)."""
        if comb == "AND":
            out = False if (r is False or c is False) else (None if None in (r, c) else True)
        elif comb == "OR":
            out = True if (r is True or c is True) else (None if None in (r, c) else False)
        else:
            out = None if None in (r, c) else (r != c)
        self.set(ops[0], out)
        if len(ops) > 1 and ops[1] not in ("PT", "UPT"):
            self.set(ops[1], None)
        return True


# ---------------------------------------------------------------------------------------------
# Issuing the executed path for one warp
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Latencies:
    """Clock cycles (1.75 GHz) for the variable-latency operations: the model's assumptions."""

    clk_ghz: float = 1.75
    l2: int = 350  # L2 hit round trip, 0.20 us: exchanged operand (cp.async), strong loads
    hbm: int = 788  # HBM round trip, 0.45 us: the cell's streamed inputs (plain LDG)
    smem: int = 30  # LDS / STS / shared atomics (assumption: H100 shared-memory load latency)
    hmma: int = 33  # HMMA.16816 dependent latency
    hmma_pipe: int = 16  # issue interval of one warp's HMMAs on its sub-partition's tensor pipe: 8 clk per
    #                      HMMA.16816 at 1024 FMA/clk/SM, shared by the 2 warps of a sub-partition
    xu: int = 20  # MUFU, conversions (I2F/F2I/F2F), POPC/FLO (assumption)
    const: int = 20  # LDC from the constant cache (assumption)
    s2r: int = 25  # special registers (assumption)
    other: int = 20  # any other scoreboarded operation (SHFL, VOTE, ...) (assumption)
    read: int = 4  # a read scoreboard: the source registers of a store / copy have been read
    cta_barrier: int = 35  # BAR.SYNC, 0.02 us: the model's __syncthreads


@dataclass
class Walk:
    """One step of one kernel for one warp: the executed path issued with its control words."""

    kernel: str
    executed: int = 0  # instructions issued (predicated-off ones included: they take issue slots)
    hmma: int = 0  # HMMAs issued, predicated-off ones included
    hmma_live: int = 0  # HMMAs whose predicate lane 0 holds true (or unpredicated)
    ldgsts: int = 0  # cp.async copies issued, predicated-off ones included
    ldgsts_live: int = 0
    stall_clk: int = 0  # Σ stall counts on the executed path: a hard lower bound for one warp
    issue_clk: int = 0  # the warp's last issue + its stall, scoreboards and cp.async groups waited for
    guessed: list[str] = field(default_factory=list)  # branches resolved by a rule, not by the plan
    stopped: str = ""  # why the walk ended, when not by completing the step

    def us(self, clk: int, lat: Latencies) -> float:
        return clk / (lat.clk_ghz * 1e3)


def _barrier_op(insn: Insn) -> bool:
    """The grid barrier's own operations (arrival atomic, fences, polls): their latency is the
    barrier phase, modelled on its own (Machine.barrier_us), not the compute phase."""
    op = insn.op
    return op.startswith(("ATOM", "RED", "MEMBAR", "ERRBAR", "CGAERRBAR")) or (
        op.startswith(("LD.", "LDG")) and "STRONG.GPU" in op)


def _latency(insn: Insn, lat: Latencies, strong_loads_l2: bool = False) -> int:
    op = insn.op
    if strong_loads_l2 and op.startswith("LDG") and "STRONG.GPU" in op:
        return lat.l2  # Triton's .cg operand loads (its barrier poll is an acquire load too: skipped at s = 0)
    if _barrier_op(insn):
        return 0
    if op.startswith("HMMA"):
        return lat.hmma
    if op.startswith(("LDG", "LD.")) or op == "LD":
        return lat.hbm
    if op.startswith(("LDS", "STS", "ATOMS", "LDSM")):
        return lat.smem
    if op.startswith(("MUFU", "I2F", "F2I", "F2F", "I2I", "POPC", "FLO", "BREV", "FRND")):
        return lat.xu
    if op.startswith(("LDC", "ULDC")):
        return lat.const
    if op.startswith(("S2R", "S2UR", "CS2R")):
        return lat.s2r
    return lat.other


def _region_kind(region: list[Insn]) -> str:
    ops = [i.op for i in region]
    if any(o.startswith(("CCTL", "NANOSLEEP")) for o in ops):  # an acquire poll, or a relaxed one's backoff
        return "ready-flag poll"
    if any(o.startswith("STG") and "STRONG.GPU" in o for o in ops) and any(o.startswith("MEMBAR") for o in ops) \
            and not any(o.startswith(("ATOM", "RED")) for o in ops):
        return "ready-flag release"
    if any(o.startswith("LDG") and "STRONG.GPU" in o for o in ops) and not any(o.startswith("LDGSTS") for o in ops):
        return "element-wise staging"
    return ""


class _Walker:
    def __init__(self, insns: list[Insn], const: dict[int, int], plan, lat: Latencies):
        self.insns, self.plan, self.lat = insns, plan, lat
        self.index = {i.addr: n for n, i in enumerate(insns)}
        self.m = Machine(const)
        self.guessed: list[str] = []

    def next_pc(self, n: int) -> int | None:
        """The index executed after instruction n (None: the thread exits)."""
        insn = self.insns[n]
        if insn.op.startswith("EXIT"):
            g = self.m.pred(insn.pred) if insn.pred else True
            return None if g is not False else n + 1
        if insn.op.startswith("BRX"):
            return self._switch(n)
        if insn.op.startswith("BRA.DIV"):  # taken only when the warp has diverged: one converged warp
            return n + 1
        target = insn.branch_target()
        if target is None or target not in self.index:
            return n + 1
        t = self.index[target]
        g = self.m.pred(insn.pred) if insn.pred else True
        if g is not None:
            return t if g else n + 1
        # a branch the plan does not decide (data- or pointer-alignment-dependent): by rule
        if self.insns[t].op.startswith(("BPT", "EXIT")) or (
                t + 1 < len(self.insns) and self.insns[t].op.startswith("BPT")):
            self.guessed.append(f"{insn.addr:#x} not taken: it leads to a trap or exit")
            return n + 1
        if t < n:
            self.guessed.append(f"{insn.addr:#x} backward branch, not taken (one trip)")
            return n + 1
        region = self.insns[n + 1:t]
        kind = _region_kind(region)
        if kind:
            self.guessed.append(f"{insn.addr:#x} skips {kind}")
            return t
        last = region[-1] if region else None
        if last is not None and last.op == "BRA" and not last.pred:  # if / else: the arm without the slow path
            end = self.index.get(last.branch_target() or -1, t)
            other = self.insns[t:end]
            if _region_kind(other) and not _region_kind(region):
                self.guessed.append(f"{insn.addr:#x} executes the arm without {_region_kind(other)}")
                return n + 1
        self.guessed.append(f"{insn.addr:#x} forward branch, not taken (guarded code executed)")
        return n + 1

    def _switch(self, n: int) -> int:
        """wait_due's switch on stage_slots - 1 (a jump table in the constant bank, not in the dump):
        the DEPBAR.LE with that count (kStages - 1 past the cases) after the BRX."""
        k = min(self.plan.stage_slots - 1, 7)
        for j in range(n + 1, min(n + 120, len(self.insns))):
            i = self.insns[j]
            if i.op.startswith("DEPBAR") and re.search(rf"SB0,\s*{hex(k)}\b", i.args):
                self.guessed.append(f"{self.insns[n].addr:#x} BRX: the switch case wait_group {k} "
                                    "(jump table not dumped)")
                return j
        self.guessed.append(f"{self.insns[n].addr:#x} BRX with no case found: fall through")
        return n + 1


def walk(insns: list[Insn], plan, const: dict[int, int], lat: Latencies = Latencies(), kernel: str = "",
         budget: int = 400_000, trace: list | None = None, strong_loads_l2: bool = False,
         loop: tuple[int, int] | None = None, load_latency=None, wait_at: int | None = None,
         wait_clk: int = 0, skip_steps: int = 0) -> Walk:
    """Run lane 0 of warp 0 of CTA 0 (integer state only) from the kernel's entry to its step loop,
    then one step of the loop issued with the control words (see bench/README.md).
    ``strong_loads_l2``: a strong LDG is an L2 round trip (the Triton kernels' .cg operand loads),
    not a barrier operation of no latency (the CUDA kernels' polls). ``loop``: the step loop's
    (first, last) index when the caller found it (default: ``step_loop_range``). ``load_latency``:
    (instruction, address or None) -> clocks or None (the default), for a global load whose address
    the integer machine knows (the caller maps it to the buffer it reads). ``wait_at``: the address
    where the step waits at a barrier that the walked step skips (Triton's s = 0): the warp waits
    ``wait_clk`` there (loads issued before it complete meanwhile), and the wait is taken out of
    the issue time again (the barrier is its own phase). ``skip_steps``: steps run for their values
    only before the one issued (the CUDA forward's first step skips the ready-flag wait that every
    later step has: with ready flags its second step is the representative one)."""
    rng = loop if loop is not None else step_loop_range(insns)
    out = Walk(kernel)
    if rng is None:
        out.stopped = "no step loop"
        return out
    start, end = rng
    w = _Walker(insns, const, plan, lat)
    pc, spent = 0, 0
    arrivals = 0
    while pc is not None and spent < budget:  # the prologue (and skipped steps): values only
        if pc == start:
            if arrivals == skip_steps:
                break
            arrivals += 1
        w.m.execute(insns[pc])
        pc = w.next_pc(pc)
        spent += 1
    if pc != start:
        out.stopped = "the prologue did not reach the step loop"
        return out
    w.guessed.clear()
    t = 0  # the cycle the next instruction may issue at
    sb = [0] * 6
    hmma_free = 0
    group_done = 0  # latest completion among the open cp.async group's copies
    groups: list[int] = []  # completion cycle of each committed group, oldest first (this step's)
    first = True
    waited = 0  # barrier waits added at wait_at, taken out at the end
    while spent < budget:
        if pc is None:
            out.stopped = "exit"
            break
        if pc == start and not first:
            break
        first = False
        insn = insns[pc]
        c = insn.ctrl or Control(1, 0, NO_BARRIER, NO_BARRIER, 0, 0)
        if wait_at is not None and insn.addr == wait_at:
            t += wait_clk
            waited += wait_clk
        issue = max([t] + [sb[b] for b in c.waits_on()])
        op = insn.op
        live = (w.m.pred(insn.pred) if insn.pred else True) is not False
        if op.startswith("HMMA"):
            out.hmma += 1
            if live:  # a predicated-off HMMA takes its issue slot, not the tensor pipe
                issue = max(issue, hmma_free)
                hmma_free = issue + lat.hmma_pipe
                out.hmma_live += 1
        if op.startswith("DEPBAR"):
            m = re.search(r"SB0,\s*(0x[0-9a-f]+|\d+)", insn.args)
            allowed = int(m.group(1), 0) if m else 0
            done = groups[:max(0, len(groups) - allowed)]
            issue = max([issue] + done)
        if op.startswith("LDGSTS"):
            out.ldgsts += 1
            if live:
                out.ldgsts_live += 1
                group_done = max(group_done, issue + lat.l2)
        if op.startswith("LDGDEPBAR"):
            groups.append(max(group_done, issue))
            group_done = 0
        stall = max(c.stall, 1)
        nxt = issue + stall
        if op.startswith("BAR.") and not op.startswith("BAR.ARV"):
            nxt = issue + max(stall, lat.cta_barrier)
        if c.wbar != NO_BARRIER:
            latency = _latency(insn, lat, strong_loads_l2) if live else 1
            if live and load_latency is not None and op.startswith(("LDG", "LD.")) \
                    and not op.startswith(("LDGSTS", "LDGDEPBAR")):
                latency = load_latency(insn, w.m.address(insn.args))
                latency = _latency(insn, lat, strong_loads_l2) if latency is None else latency
            sb[c.wbar] = max(sb[c.wbar], issue + latency)
        if c.rbar != NO_BARRIER:
            sb[c.rbar] = max(sb[c.rbar], issue + lat.read)
        out.stall_clk += stall
        out.executed += 1
        if trace is not None:  # (address, opcode, issue cycle, cycles waited beyond the previous stall)
            trace.append((insn.addr, op, issue, issue - t))
        t = nxt
        w.m.execute(insn)
        pc = w.next_pc(pc)
        spent += 1
    else:
        out.stopped = "instruction budget spent"
    out.issue_clk = max([t] + groups) - waited
    out.guessed = w.guessed
    return out


def report(dtypes: tuple[str, ...] = ("bf16",)) -> str:
    """The per-case table: analytic compute phase vs the SASS-derived one, per step (all MODEL)."""
    from . import cases, model_cuda
    from .perf_model import H100

    rows = ["MODEL, not measured (sm_90 SASS of the built extension; H100 assumptions of bench/perf_model.py)",
            "| case | dtype | fwd step us: analytic / SASS | fwd compute: analytic / SASS (stall sum) | "
            "bwd step us: analytic / SASS | bwd compute: analytic / SASS (stall sum) | "
            "fwd / f+b ms: analytic, then SASS |",
            "|---|---|---|---|---|---|---|"]
    for case in cases.CASES:
        for dtype in dtypes:
            est = model_cuda.model(case, dtype)
            if isinstance(est, str):
                why = "not applicable (zoneout)" if case.zoneout else \
                    "not applicable (LayerNorm)" if case.layernorm else "does not fit"
                rows.append(f"| {case.id} | {dtype} | {why} | | | | |")
                continue
            cells = []
            for p, step in zip(model_cuda.plans(case, dtype), (est.fwd_step, est.bwd_step)):
                body = model_cuda.backward_step if p.backward else model_cuda.forward_step
                old = body(p, case, H100, analytic=True)
                s = model_cuda.sass_compute(p, case, dtype, H100, training=p.backward)  # the forward: inference
                if s is None:
                    cells += [f"{old.us:.2f} / -", "no SASS"]
                else:
                    cells += [f"{old.us:.2f} / {step.us:.2f}", f"{s.analytic_us:.2f} / {s.us:.2f} ({s.stall_us:.2f})"]
            m = re.search(r"(\d+\.\d+) / (\d+\.\d+) ms fwd / fwd\+bwd(?!.*ms fwd / fwd\+bwd)", est.notes)
            old_ms = f"{m.group(1)} / {m.group(2)}" if m and "SASS" in est.notes else "-"
            cells.append(f"{old_ms} / {est.fwd_ms:.3f} / {est.fb_ms:.3f}")
            rows.append(f"| {case.id} | {dtype} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    import sys

    print(report(tuple(sys.argv[1:]) or ("bf16",)))
