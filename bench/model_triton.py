"""Latency model (MODEL, not measured) of the Triton kernels (kernels/rnn.py) on the plans the
launcher uses (kernels/plan.py, imported: pure Python, no triton).

The step structure is read from the sm_90 SASS of rnn_fwd_kernel / rnn_bwd_kernel (Triton 3.8;
tests/test_triton_codegen.py keeps checking the parts the phases rely on):

- before the barrier wait: every load that other programs do not write (gx / act / dy tiles,
  the block's own state, the residual) is issued, so it is in flight during the spin (``prefetch``
  costs only what the barrier does not hide);
- ``barrier``: bar.sync, membar + one red.release per program, then the acquire poll;
- ``operand``: the product's left operand (h_{t-1} forward, dgates_{t+1} backward: every unit of
  the batch tile) as one group of 16-byte .cg loads from L2 (8 x LDG.E.128.STRONG.GPU per thread
  for flashrnn): one L2 round trip plus the transfer, limited by the SM's share of L2 bandwidth
  and by L2's aggregate bandwidth (every program loads the same operand);
- ``stage``: the operand into shared memory (STS.128, bar.sync) for ldmatrix;
- ``MMA``: ldmatrix of the resident W slice and of the operand (read by every warp when the warps
  split the columns), overlapped with the HMMA chains (KS warps each reduce K/KS: K/(16 KS)
  dependent steps): max(shared-memory bytes / bandwidth, chain); fp32 without TF32 and fp64 run
  FMA instead (``FMA_PER_CLK_SM`` below);
- ``partial sums`` (KS > 1): the warps' partials reduced through shared memory, one round per
  16x8 accumulator tile: bar.sync, STS.128, bar.sync, LDS.128, log2(KS) dependent shuffles;
- ``epilogue``: gate math (dependent MUFU ex2/rcp) and the layout conversions Triton puts before
  the coalesced stores (STS, bar.sync, LDS each): ``conversions`` below, counted in the SASS;
- ``zoneout`` (a case with ``zoneout`` > 0 only; ``zoneout_phase`` below): per zoned state (GRU h;
  LSTM h and c) and element of the program's tile, in training the Philox 4x32-10 mask (tl.rand:
  10 rounds of 2 umulhi, 2 mul, 4 xor, 2 key adds) plus its counter, float map, compare and
  select, once in the forward and once more in the backward (the masks are regenerated, never
  stored); in evaluation (the "forward" mode, inference) the blend p*old + (1-p)*new. Integer ops
  at ``ALU_OPS_PER_CLK_SM``, the tile's replicas included (a K-split plan holds the gate tile in
  every warp), against the dependent Philox chain of one element; on the critical path after the
  gate math (the masks depend only on the seed and the step, but the step loop computes them
  after the barrier). Independent of p's value; absent when p = 0;
- streamed plans replace operand/stage/MMA by the K loop: a pipeline fill (one L2 trip) plus, per
  BLOCK_K chunk, the larger of the chunk's L2 transfer (operand + W), its shared-memory reads and
  its MMA chain, the asynchronous copies keeping the next chunks in flight.

Every program runs the same step, so a step's time is one program's. Assumptions beyond
bench/perf_model.py's machine table are the module constants below (to be measured on a GPU).
"""

from __future__ import annotations

import math

from .cases import Case
from .perf_model import H100, Estimate, Machine, Phase, Step, elem_bytes, projection_gemms_us, register, \
    smem_us, whole_call_ms

# L2 -> SM bandwidth: per SM (bytes/clk) and for the whole chip (TB/s), H100 microbenchmark range
# 5.5-7 TB/s aggregate: central values, to be measured.
L2_BYTES_PER_CLK_SM = 64
L2_TBPS = 5.5
BAR_CLK = 20  # bar.sync with every warp arriving together
SMEM_TRIP_CLK = 30  # STS -> bar.sync -> LDS visibility round trip
SHFL_CLK = 25  # dependent warp shuffle
MUFU_CHAIN_CLK = 120  # the gate math's dependent ex2 / rcp / FMA chain
FMA_PER_CLK_SM = {"fp32": 128, "fp64": 64}  # FFMA / DFMA issue rate per SM (H100 non-tensor)
# Layout conversions before the stores, per unit block and step (SASS, flashrnn shapes): forward
# h/c state, exchange, y (+ 4 saved activations when training); backward dgates/exchange/carries.
CONVERSIONS = {("fwd", False): 4, ("fwd", True): 8, ("bwd", True): 6}
# Zoneout (kernels/cells.py zone / zone_grad; fusedrnn/zoneout.py). Counted from the source
# (tl.rand's philox_impl and the code around it), not from SASS: ptxas fuses a 3-input xor into
# one LOP3 and may keep the scalar key adds per warp, so the instruction count is likely lower.
PHILOX_ROUNDS = 10  # tl.rand's default
PHILOX_OPS_PER_ROUND = {"umulhi": 2, "mul": 2, "xor": 4, "key add": 2}  # per element
# per element around the Philox rounds: the 64-bit counter (t*B + b)*H + j (2 adds, 1 shift), the
# uint32 -> [0, 1) map (compare + select, I2F, FMUL), the compare with p; then the select of the
# forward, or the two selects and the add into dh_{t-1} (dc_{t-1}) of the backward
MASK_OPS = {"fwd": 3 + 4 + 1 + 1, "bwd": 3 + 4 + 1 + 2 + 1}
EVAL_OPS = 2  # p * old + (1 - p) * new: FMUL + FFMA
LSTM_C_RECOMPUTE_OPS = 2  # the backward recomputes the un-zoned c~_t = f * c_{t-1} + i * g
ALU_OPS_PER_CLK_SM = 64  # 32-bit integer multiply / logic / add issue rate per SM (H100: 16 lanes per sub-partition)
PHILOX_ROUND_CLK = 10  # one round's dependent path (IMAD.HI, then LOP3), assumed


def _plan(cell: str, direction: str, case: Case, dtype_name: str, m: Machine):
    from fusedrnn.kernels import plan as kplan

    device = kplan.Device(m.name, m.n_sm, m.smem_optin_bytes, 90)
    # fp32 is exact fp32 (torch's default matmul precision): FMA plans
    return kplan.make_plan(cell, direction, case.B, case.H, elem_bytes(dtype_name), device,
                           fma=dtype_name == "fp32")


def _clk(n: float, m: Machine) -> float:
    return n * m.clk_us


def _l2_transfer_us(bytes_per_program: float, programs: int, m: Machine) -> float:
    per_sm = _clk(bytes_per_program / L2_BYTES_PER_CLK_SM, m)
    aggregate = bytes_per_program * programs / (L2_TBPS * 1e12) * 1e6
    return max(per_sm, aggregate)


def _operand_readers(p) -> int:
    """Warps that each read the whole staged operand: one per column slice when the warps split
    the columns (KS == 1), none shared when they split the reduction (each reads its own part)."""
    return 1 if p.KS > 1 else min(p.num_warps, max(1, p.N // 8))


def _mma_us(p, dtype_name: str, k: int, m: Machine) -> tuple[float, str]:
    """The product over ``k`` reduction columns for one program: tensor-core chain or FMA rate."""
    if dtype_name in ("fp32", "fp64"):  # exact fp32 (torch's default) and fp64: FMA, not MMA
        fmas = p.BB * p.N * k
        return _clk(fmas / FMA_PER_CLK_SM[dtype_name], m), f"{fmas} FMA at {FMA_PER_CLK_SM[dtype_name]}/clk"
    steps = k // (16 * p.KS) if p.KS > 1 else k // 16
    return _clk(steps * m.hmma_clk, m), f"{steps} dependent HMMA steps"


def step(cell: str, direction: str, case: Case, dtype_name: str, save: bool, m: Machine = H100, plan=None):
    """(plan, Step) of one step of ``direction``; ``plan`` overrides the launcher's (to compare)."""
    p = plan if plan is not None else _plan(cell, direction, case, dtype_name, m)
    e = p.elem_bytes
    blocks = math.ceil(p.n_blk / p.nprog_h)  # unit blocks each program walks per step
    rows = min(case.B, p.BB)  # rows of the operand actually fetched (masked rows are not)
    k_valid = (-(-case.H // 16) * 16) * (1 if direction == "fwd" else case.gates)
    operand_bytes = rows * k_valid * e
    programs = p.nprog_h * p.n_btiles
    phases = []
    if p.grid_barrier:
        phases.append(Phase("barrier", m.barrier_us, "bar.sync + red.release, acquire poll"))
        prefetch = max(0.0, m.hbm_us - m.barrier_us) if p.resident else m.hbm_us
        phases.append(Phase("prefetch", prefetch, "gx/act/state tiles issued before the wait"
                            if p.resident else "gx/act/state tiles after the wait"))
    else:
        phases.append(Phase("CTA barrier", _clk(BAR_CLK, m), "one program per batch tile"))
        phases.append(Phase("prefetch", m.hbm_us, "gx/act/state tiles (nothing to hide them behind)"))
    mma_us, mma_why = _mma_us(p, dtype_name, p.K, m)
    if p.resident:
        phases.append(Phase("operand", blocks * (m.l2_us + _l2_transfer_us(operand_bytes, programs, m)),
                            f"{operand_bytes // 1024} KB per program, one group of .cg loads"))
        staged = p.BB * p.K * e
        phases.append(Phase("stage", blocks * (smem_us(staged, m) + _clk(2 * BAR_CLK, m)), "STS + bar.sync"))
        reads = p.w_slice_bytes + staged * _operand_readers(p)
        phases.append(Phase("MMA", blocks * max(smem_us(reads, m), mma_us),
                            f"ldmatrix {reads // 1024} KB vs {mma_why}"))
    else:
        chunks = p.K // p.BLOCK_K
        chunk_bytes = (rows * p.BLOCK_K + p.BLOCK_K * p.N) * e
        chunk_reads = (p.BB * p.BLOCK_K * _operand_readers(p) + p.BLOCK_K * p.N) * e
        per_chunk = max(_l2_transfer_us(chunk_bytes, programs, m), smem_us(chunk_bytes + chunk_reads, m),
                        mma_us / chunks)
        phases.append(Phase("K loop", blocks * (m.l2_us + chunks * per_chunk),
                            f"{chunks} chunks of {p.BLOCK_K} ({chunk_bytes // 1024} KB each from L2), "
                            f"{p.num_stages}-stage cp.async pipeline"))
    if p.KS > 1:
        rounds = (p.BB // 16) * max(1, p.N // 8)
        per_round = 2 * BAR_CLK + SMEM_TRIP_CLK + int(math.log2(p.KS)) * SHFL_CLK
        phases.append(Phase("partial sums", blocks * _clk(rounds * per_round, m),
                            f"{rounds} rounds over {p.KS} warps"))
    conversions = CONVERSIONS[(direction, save)] if (direction, save) in CONVERSIONS else 6
    phases.append(Phase("epilogue", blocks * _clk(MUFU_CHAIN_CLK + conversions * (2 * BAR_CLK + SMEM_TRIP_CLK), m),
                        f"gate math, {conversions} layout conversions, stores"))
    zo = zoneout_phase(p, case, direction, save, blocks, m)
    if zo is not None:
        phases.append(zo)
    return p, Step(tuple(phases))


def zoneout_ops(cell: str, direction: str, training: bool) -> int:
    """Integer/float ops per element of the program's tile that zoneout adds to one step (every
    zoned state: GRU and RNN h, LSTM h and c, as a case's one ``zoneout`` float zones both)."""
    states = 2 if cell == "lstm" else 1
    if not training:  # evaluation: the blend (only a forward runs in evaluation here)
        return states * EVAL_OPS
    ops = states * (PHILOX_ROUNDS * sum(PHILOX_OPS_PER_ROUND.values()) + MASK_OPS[direction])
    if direction == "bwd" and cell == "lstm":
        ops += LSTM_C_RECOMPUTE_OPS
    return ops


def zoneout_phase(p, case: Case, direction: str, save: bool, blocks: int, m: Machine = H100) -> Phase | None:
    """The zoneout term of one step of plan ``p`` (None without zoneout): a training step (the
    forward that saves activations, and every backward) generates the masks; the inference forward
    blends with p. max(issue of every replica's ops at ALU_OPS_PER_CLK_SM, one element's dependent
    chain), per unit block the program walks."""
    if not getattr(case, "zoneout", 0.0):
        return None
    training = save or direction == "bwd"
    ops = zoneout_ops(case.cell, direction, training)
    replicas = p.KS if p.KS > 1 else 1  # a K-split plan holds the (BB, BH) gate tile in every warp
    lanes = max(p.BB * p.BH * replicas, 32 * p.num_warps)  # elements computed per block, replicas included
    rate = ALU_OPS_PER_CLK_SM if training else FMA_PER_CLK_SM["fp32"]  # the blend is float FMUL/FFMA
    issue_clk = lanes * ops / rate
    chain_clk = PHILOX_ROUNDS * PHILOX_ROUND_CLK if training else 2 * 4
    what = (f"Philox 4x32-{PHILOX_ROUNDS} masks{' regenerated' if direction == 'bwd' else ''}" if training
            else "evaluation blend p*old + (1-p)*new")
    return Phase("zoneout", blocks * _clk(max(issue_clk, chain_clk), m),
                 f"{what}: {ops} ops x {lanes} elements ({p.BB}x{p.BH} tile x {replicas} warp replicas) at "
                 f"{rate}/clk/SM vs a {chain_clk}-clk dependent chain")


@register("fusedrnn-triton")
def model(case: Case, dtype_name: str, m: Machine = H100) -> Estimate | str:
    try:
        pf, fwd_inf = step(case.cell, "fwd", case, dtype_name, False, m)
        _, fwd_train = step(case.cell, "fwd", case, dtype_name, True, m)
        pb, bwd = step(case.cell, "bwd", case, dtype_name, True, m)
    except ImportError as e:  # fusedrnn.kernels not importable here
        return f"kernels/plan.py not importable: {e}"
    fwd_extra = bwd_extra = 0.0
    for layer_input in case.layer_inputs():
        f, b = projection_gemms_us(case, dtype_name, layer_input, m)
        fwd_extra += (f + m.launch_us) / case.layers
        bwd_extra += (b + m.launch_us) / case.layers
    fwd_ms, _ = whole_call_ms(case, dtype_name, fwd_inf, None, fwd_extra, 0.0, m)
    train_ms, fb_ms = whole_call_ms(case, dtype_name, fwd_train, bwd, fwd_extra, bwd_extra, m)
    plan = f"fwd: {pf.describe()}; bwd: {pb.describe()}"
    notes = f"training forward {fwd_train.us:.2f} us/step (saves activations)"
    if case.zoneout:
        zo = {s_: next(ph.us for ph in st.phases if ph.name == "zoneout")
              for s_, st in (("inference", fwd_inf), ("training fwd", fwd_train), ("bwd", bwd))}
        notes += (f"; zoneout p={case.zoneout:g} (MODEL, independent of p): "
                  + ", ".join(f"{k} +{v:.2f}" for k, v in zo.items()) + " us/step")
    return Estimate("fusedrnn-triton", case.id, dtype_name, plan, fwd_inf, bwd, fwd_ms, fb_ms, notes=notes)
