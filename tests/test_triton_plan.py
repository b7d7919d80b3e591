"""The Triton launch plans (kernels/plan.py) and the host-side choices around the kernels: which
strategy, tiles and W residency a shape gets, that every plan is launchable (shape rules, shared
memory, co-residency), that the tests exercise the paths they claim to, and the dispatch-facing
pieces (limits, dot precision). Fast: no kernel runs here except where a GPU is asked for.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from executors import executor_device, executor_params  # noqa: E402

import fusedrnn.functional as F  # noqa: E402
from fusedrnn import backends  # noqa: E402
from fusedrnn.backends import triton as triton_ops  # noqa: E402
from fusedrnn.kernels import common, plan as plans  # noqa: E402

SHAPES = [(B, H) for B in (1, 3, 16, 17, 32, 64, 128, 1000, 4096) for H in (1, 3, 20, 40, 100, 257, 512, 768, 1024,
                                                                           2048, 4096)]


def test_strategies_are_what_the_tests_exercise():
    """The persistent cases of tests/test_triton_kernels.py really split H over several programs
    (a grid barrier; under the interpreter, a launch per step), and the batch-tile ones use one
    program per batch tile; both W residencies and both warp splits occur."""
    p = plans.make_plan("gru", "fwd", 3, 40, 4, strategy="persistent")
    assert p.nprog_h > 1 and p.grid_barrier and p.resident and p.nprog_h == p.n_blk
    p = plans.make_plan("gru", "fwd", 3, 257, 4, strategy="persistent")
    assert p.nprog_h > 1 and p.resident and p.KS > 1
    p = plans.make_plan("lstm", "fwd", 1, 257, 4, strategy="batch_tile")
    assert p.nprog_h == 1 and p.n_blk > 1 and not p.grid_barrier and not p.resident and p.KS == 1
    p = plans.make_plan("lstm", "bwd", 17, 100, 4, strategy="batch_tile")
    assert p.nprog_h == 1 and p.n_btiles == 2 and not p.grid_barrier
    p = plans.make_plan("lstm", "fwd", 40, 24, 4, strategy="persistent")
    assert p.n_btiles == 3 and p.grid_barrier


def test_gate_slots_per_cell():
    """The Elman RNN's one gate takes one slot: its product has BH columns forward and HP rows
    backward (GRU's three gates and LSTM's four take four); the backend's fake shapes save what
    the kernels save."""
    assert {c: plans.gate_slots(c) for c in plans.CELLS} == {"gru": 4, "lstm": 4, "rnn_tanh": 1, "rnn_relu": 1}
    assert plans.CELLS == backends.CELLS and triton_ops._SAVED_ACTS == plans.SAVED_ACTS
    for cell in ("rnn_tanh", "rnn_relu"):
        for B, H in [(3, 40), (16, 768), (1, 257)]:
            fwd = plans.make_plan(cell, "fwd", B, H, 2)
            bwd = plans.make_plan(cell, "bwd", B, H, 2)
            gru_fwd = plans.make_plan("gru", "fwd", B, H, 2)
            assert fwd.N == fwd.BH and bwd.K == bwd.HP and gru_fwd.N == 4 * gru_fwd.BH


@pytest.mark.parametrize("device", [plans.H100, plans.A100], ids=lambda d: d.name)
@pytest.mark.parametrize("elem", [2, 4, 8])
def test_every_plan_is_launchable(device, elem):
    """Shape rules hold, shared memory fits the device, grid-barrier grids stay within the SM
    count (co-residency), a resident W means one unit block per program, and every unit of
    every batch tile is owned by exactly one program."""
    for cell in plans.CELLS:
        for direction in plans.DIRECTIONS:
            for B, H in SHAPES:
                for strategy in (None, *plans.STRATEGIES):
                    p = plans.make_plan(cell, direction, B, H, elem, device, strategy)
                    p.check()
                    assert p.smem_bytes <= device.smem_budget, p.describe()
                    if p.grid_barrier:
                        assert p.nprog_h * p.n_btiles <= device.n_sm, p.describe()
                    assert p.n_blk * p.BH >= H and (p.n_blk - 1) * p.BH < max(H, 1)
                    assert p.n_btiles * p.BB >= B
                    assert p.nprog_h <= p.n_blk


@pytest.mark.parametrize("elem", [2, 4, 8])
def test_streamed_forward_tiles_stay_within_the_table(elem):
    """A forward that streams W with the warps on the columns keeps its (BB, 4*BH) tile within the
    table's stream_cols_tile (the K loop's pipeline holds registers besides the tile: the larger
    tile spilled, tests/test_triton_codegen.py), also where a larger block would fit the programs."""
    limit = plans._TABLE[elem].stream_cols_tile
    seen = 0
    for device in (plans.H100, plans.A100):
        for cell in plans.CELLS:
            for B, H in SHAPES:
                for strategy in (None, *plans.STRATEGIES):
                    p = plans.make_plan(cell, "fwd", B, H, elem, device, strategy)
                    if not p.resident and p.KS == 1:
                        seen += 1
                        assert p.BB * p.N <= limit or p.BH == plans.MIN_BLOCK_H, p.describe()
    assert seen
    db = plans.make_plan("lstm", "fwd", 128, 1024, 2, plans.H100)  # deepbench-lstm, bf16
    assert not db.resident and db.KS == 1 and db.BB * db.N <= plans._TABLE[2].stream_cols_tile


@pytest.mark.parametrize("executor", executor_params("triton", "host", None))
def test_plans_fill_but_do_not_exceed_the_gpu(executor):
    """On a GPU, with its real SM count and shared memory (the interpreter plans for an H100)."""
    device = common.device_of(torch.device(executor_device(executor)))
    for B, H in [(16, 768), (64, 512), (128, 1024), (1, 512), (4096, 1024)]:
        p = plans.make_plan("lstm", "fwd", B, H, 2, device, "persistent")
        if p.grid_barrier:  # co-residency is required only when programs meet at a barrier
            assert p.nprog_h * p.n_btiles <= device.n_sm, p
        assert p.smem_bytes <= device.smem_budget


def test_strategy_crossover():
    """batch_tile when one program keeps all of W_hh on chip (no barrier, the step stays in the
    CTA) or when batch tiles alone fill the GPU; persistent (split H) otherwise."""
    assert plans.choose_strategy("lstm", 4, 32, 2) == "batch_tile"
    assert plans.choose_strategy("gru", 16, 64, 2) == "batch_tile"
    assert plans.choose_strategy("lstm", 16, 768, 2) == "persistent"
    assert plans.choose_strategy("gru", 1, 512, 2) == "persistent"
    assert plans.choose_strategy("lstm", 16 * 132, 768, 2) == "batch_tile"


def test_flashrnn_plan_keeps_w_on_chip():
    """The design point: LSTM B=16 H=768 bf16 on an H100 keeps every program's W_hh slice on chip
    in the forward, with the reduction split over the warps. The backward splits the reduction too
    but streams W: its resident form loads the (16, 4*1024) operand as one group, 512 B per thread,
    and spilled with Triton 3.6 (tests/test_triton_codegen.py); the table allows 256."""
    for direction in plans.DIRECTIONS:
        p = plans.make_plan("lstm", direction, 16, 768, 2, plans.H100)
        assert p.strategy == "persistent" and p.KS == p.num_warps, p.describe()
        operand = p.BB * p.K * p.elem_bytes // (32 * p.num_warps)
        assert p.resident == (direction == "fwd"), p.describe()
        assert (operand <= plans._TABLE[2].resident_operand) == (direction == "fwd")


def test_limits_explain_projection():
    p = backends.CallSpec(cell="lstm", device=torch.device("cpu"), dtype=torch.float32, T=2, B=1, I=2, H=4, P=2,
                         has_residual=False, has_lengths=False, reverse=False, has_proj=True)
    assert any("proj_size" in r for r in triton_ops.limits(p))
    assert triton_ops.limits(backends.CallSpec(cell="gru", device=torch.device("cpu"), dtype=torch.float64,
                                              T=2, B=1, I=2, H=4, P=4, has_residual=True, has_lengths=True,
                                              reverse=True, has_proj=False)) == []
    x = torch.randn(2, 1, 2)
    with pytest.raises(ValueError, match="proj_size"):
        F.lstm(x, torch.zeros(1, 2), torch.zeros(1, 4), torch.randn(16, 2), torch.randn(16, 2), None, None,
               torch.randn(2, 4), backend="triton")


def test_gpu_only_paths_stay_off_under_the_interpreter():
    """Interpreter-only choices follow the kernels actually in use, and GPU-only ones never apply
    on the CPU: low-precision torch GEMMs, TF32, the cooperative grid barrier."""
    if not common.interpreter_on():
        pytest.skip("the Triton interpreter is off (FUSEDRNN_TEST_DEVICE=cuda)")
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        assert not common.lowp_torch_gemms(torch.empty(1, dtype=dtype))
    cpu = torch.device("cpu")
    assert common.dot_precision(torch.bfloat16, cpu, allow_tf32=True) == "upcast"
    assert common.dot_precision(torch.float32, cpu, allow_tf32=True) == "ieee"
    assert common.device_of(cpu) == plans.INTERPRETER_DEVICE


def test_tf32_follows_torchs_switch_with_either_api():
    """triton_ops passes torch's TF32 matmul switch to the kernels; torch >= 2.9 raises on reading
    the legacy allow_tf32 once the new fp32_precision API was used, so both must read (in a
    subprocess: the setting is process-global)."""
    script = (
        "import torch\n"
        "from fusedrnn.backends import triton as triton_ops\n"
        "read = triton_ops.cuda_matmul_allows_tf32\n"
        "m = torch.backends.cuda.matmul\n"
        "assert read() is False\n"
        "m.allow_tf32 = True; assert read() is True\n"
        "m.allow_tf32 = False; assert read() is False\n"
        "if hasattr(m, 'fp32_precision'):\n"
        "    m.fp32_precision = 'tf32'; assert read() is True\n"
        "    m.fp32_precision = 'ieee'; assert read() is False\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]


def test_latency_model_of_the_shipped_plans_meets_the_flashrnn_target():
    """MODEL, not a measurement: bench/model_triton.py on the plans make_plan ships puts the
    flashrnn forward (LSTM B16 H768 T1024, bf16) within 2x cuDNN's measured 2.01 ms. A plan change
    that breaks this shows here before a GPU does."""
    from fusedrnn.bench import cases, perf_model

    e = perf_model.estimate("fusedrnn-triton", cases.get("flashrnn"), "bf16")
    assert not isinstance(e, str), e
    assert e.fwd_ms <= 2 * perf_model.CUDNN_ANCHORS["flashrnn"][0], e.fwd_step.describe()


@pytest.mark.parametrize("cell,B,H", [("lstm", 16, 32), ("gru", 4, 64), ("lstm", 64, 128), ("lstm", 16, 256),
                                      ("gru", 1, 512), ("lstm", 16, 768)])
def test_strategy_crossover_agrees_with_the_latency_model(cell, B, H):
    """choose_strategy picks the strategy whose forward step bench/model_triton.py models faster
    (MODEL; bf16 on an H100), both by the analytic step and, where Triton and cuobjdump are here, by
    the step whose compute phase is walked in the sm_90 SASS of each strategy's kernel: where all
    of W fits one program, no grid barrier wins."""
    from fusedrnn.bench import model_triton, perf_model
    from fusedrnn.bench.cases import Case

    case = Case("crossover", cell, B=B, H=H, T=100)
    device = plans.Device("H100", perf_model.H100.n_sm, perf_model.H100.smem_optin_bytes, 90)
    analytic, sassed = {}, {}
    for strategy in plans.STRATEGIES:
        p = plans.make_plan(cell, "fwd", B, H, 2, device, strategy)
        analytic[strategy] = model_triton.step(cell, "fwd", case, "bf16", False, plan=p)[1].us
        q, st = model_triton.sass_step(case, "fwd", "bf16", False, strategy=strategy)
        assert q == p
        if model_triton.SASS_PHASE in [ph.name for ph in st.phases]:
            sassed[strategy] = st.us
    chosen = plans.choose_strategy(cell, B, H, 2, device)
    assert analytic[chosen] <= min(analytic.values()), (chosen, analytic)
    if len(sassed) == len(plans.STRATEGIES):
        assert sassed[chosen] <= min(sassed.values()), (chosen, sassed)
