"""The cuda backend's glue, checked without a GPU: what limits() says and why, the launch plan (the C++
arithmetic against bench/model_cuda.py's copy of it, and the limit tables csrc/README.md states), op
registration, fake (meta) shapes through forward and autograd, the built extension's input checks.
The kernels' numerics: tests/test_cuda_kernels.py."""

from __future__ import annotations

import itertools

import cuda_emu
import pytest
import torch

import fusedrnn
from fusedrnn import _ext, backends, dispatch
from fusedrnn.backends import CELLS, CallSpec
from fusedrnn.bench import model_cuda

try:
    from fusedrnn.backends import cuda as cuda_ops
    _import_reason = ""
except Exception as e:  # noqa: BLE001 - the skip says why
    cuda_ops, _import_reason = None, f"{type(e).__name__}: {e}"
needs_cuda_ops = pytest.mark.skipif(cuda_ops is None, reason=f"fusedrnn.backends.cuda: {_import_reason}")


def _ext_or_none():
    try:
        return _ext.load()
    except _ext.ExtensionError:
        return None


EXT = _ext_or_none()
needs_ext = pytest.mark.skipif(EXT is None or not hasattr(EXT, "gru_forward"), reason=f"extension: {_ext.build_info()}")
H100 = (132, 227 * 1024)
A100 = (108, 163 * 1024)


def _plan_source():
    """launch_shape from the built extension, else from the CPU emulator build (same csrc/rnn_launch.h)."""
    if EXT is not None and hasattr(EXT, "launch_shape"):
        return EXT
    if cuda_emu.unavailable_reason() is None:
        return cuda_emu.load()
    pytest.skip("neither fusedrnn._C nor the CPU emulator can be built here")


def _problem(cell="lstm", dtype=torch.bfloat16, H=256, B=2, proj=False, device="cuda:0"):
    return CallSpec(cell=cell, device=torch.device(device), dtype=dtype, T=8, B=B, I=H, H=H, P=H,
                    has_residual=False, has_lengths=False, reverse=False, has_proj=proj)


# ---------------------------------------------------------------------------------------------
# Dispatch on this (GPU-less) machine
# ---------------------------------------------------------------------------------------------


@needs_cuda_ops
def test_unavailable_says_why_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    reasons = cuda_ops.unavailable()
    assert any("no CUDA device" in r for r in reasons), reasons


def test_forced_cuda_on_cpu_raises_with_reasons():
    x = torch.randn(4, 2, 8)
    h0 = torch.zeros(2, 8)
    w_ih, w_hh = torch.randn(24, 8), torch.randn(24, 8)
    with pytest.raises(ValueError, match="backend 'cuda' cannot run this GRU call"):
        fusedrnn.functional.gru(x, h0, w_ih, w_hh, backend="cuda")


def test_auto_does_not_pick_cuda_on_cpu():
    p = _problem(device="cpu", dtype=torch.float32)
    assert dispatch.choose("auto", p).name != "cuda"
    assert backends.get("cuda").reasons(p, forced=False)


# ---------------------------------------------------------------------------------------------
# limits(): the reasons, with the GPU queries replaced by a fake H100-like device
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def fake_gpu(monkeypatch):
    """An sm_90 device with 132 SMs and 227 KiB of opt-in shared memory; the plan is the real launch
    arithmetic (launch_shape of the extension or the emulator build)."""
    state = {"capability": (9, 0), "sms": 132, "optin": 227 * 1024}
    source = _plan_source()

    def plan(cell, backward, dtype_name, tf32, H, B, device_index):
        d = dict(source.launch_shape(cell, backward, dtype_name, tf32, H, B, state["sms"], state["optin"]))
        fits_smem = d["smem"] <= state["optin"]
        d.update(blocks_per_sm=1 if fits_smem else 0, num_sms=state["sms"], max_smem_optin=state["optin"],
                 cooperative=True)
        return d

    monkeypatch.setattr(cuda_ops, "_plan", plan)
    cuda_ops.max_hidden_size.cache_clear()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: state["capability"])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    yield state
    cuda_ops.max_hidden_size.cache_clear()


@needs_cuda_ops
def test_limits_state_only_what_the_kernels_cannot_do(fake_gpu):
    """No validation policy in limits(): forced or not, a problem the kernels serve has no reason."""
    assert cuda_ops.limits(_problem(), forced=True) == []
    assert cuda_ops.limits(_problem(), forced=False) == []
    assert not hasattr(cuda_ops, "VALIDATED_ON_GPU")


@needs_cuda_ops
def test_unsupported_dtype_proj_and_capability(fake_gpu):
    assert any("dtype=torch.float64" in r for r in cuda_ops.limits(_problem(dtype=torch.float64), forced=True))
    assert any("proj_size" in r for r in cuda_ops.limits(_problem(proj=True), forced=True))
    fake_gpu["capability"] = (7, 5)
    assert any("compute capability 7.5" in r for r in cuda_ops.limits(_problem(), forced=True))


@needs_cuda_ops
@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_hidden_size_limit_is_stated_with_its_number(fake_gpu, cell, dtype):
    hmax = cuda_ops.max_hidden_size(cell, dtype, False, 0)
    assert hmax >= 256, hmax
    for B in (1, 16, 40, 64):  # the limit holds for every batch size the kernels take
        assert cuda_ops.limits(_problem(cell=cell, dtype=dtype, H=hmax, B=B), forced=True) == []
    reasons = cuda_ops.limits(_problem(cell=cell, dtype=dtype, H=hmax + 1, B=64), forced=True)
    assert len(reasons) == 1 and f"H={hmax + 1}" in reasons[0] and f"is {hmax}" in reasons[0], reasons


@needs_cuda_ops
def test_batch_limit_is_stated(fake_gpu):
    """Past 64 rows per CTA x the batch groups H leaves room for, the reason says so (H=1024 LSTM:
    64 unit groups, two batch groups: 128 rows)."""
    assert cuda_ops.limits(_problem(H=1024, B=128), forced=True) == []
    reasons = cuda_ops.limits(_problem(H=1024, B=129), forced=True)
    assert len(reasons) == 1 and "batch size B=129" in reasons[0] and "128 rows" in reasons[0], reasons


def test_declared_limits_on_h100_and_a100(capsys):
    """The largest H per cell/dtype from the launch arithmetic, as csrc/README.md's table states it
    (for every batch the kernels take; H100: 132 SMs, 227 KiB; A100: 108 SMs, 163 KiB)."""
    source = _plan_source()

    def hmax(cell, dtype, tf32, sms, optin):
        def fits(H):
            return all(source.launch_shape(cell, bwd, dtype, tf32, H, 64, sms, optin)["fits"] for bwd in (0, 1))

        lo, hi = 0, 16 * sms
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        return lo

    table = {}
    for (gpu, (sms, optin)), cell, (dtype, tf32) in itertools.product(
            (("H100", H100), ("A100", A100)), ("gru", "lstm", "rnn_tanh", "rnn_relu"),
            (("bfloat16", False), ("float32", True), ("float32", False))):
        table[(gpu, cell, dtype, tf32)] = hmax(cell, dtype, tf32, sms, optin)
    with capsys.disabled():
        print()
        for k, v in table.items():
            print(f"  max H {k}: {v}")
    assert table == {
        ("H100", "gru", "bfloat16", False): 2112, ("H100", "gru", "float32", True): 1408,
        ("H100", "gru", "float32", False): 1024, ("H100", "lstm", "bfloat16", False): 2048,
        ("H100", "lstm", "float32", True): 1024, ("H100", "lstm", "float32", False): 640,
        ("A100", "gru", "bfloat16", False): 1728, ("A100", "gru", "float32", True): 1024,
        ("A100", "gru", "float32", False): 640, ("A100", "lstm", "bfloat16", False): 1536,
        ("A100", "lstm", "float32", True): 768, ("A100", "lstm", "float32", False): 384,
    } | {  # the Elman RNN (one gate): the grid, 16 units per CTA on every SM, in every dtype and mode
        (gpu, cell, dtype, tf32): 16 * sms for gpu, (sms, _) in (("H100", H100), ("A100", A100))
        for cell in ("rnn_tanh", "rnn_relu") for dtype, tf32 in (("bfloat16", False), ("float32", True),
                                                                 ("float32", False))
    }


def test_model_plan_is_the_kernels_plan():
    """bench/model_cuda.py repeats csrc/rnn_launch.h's make_plan in Python so the latency model runs
    anywhere: the two agree on every field for every cell, direction, dtype, math mode, and a spread
    of sizes, batches and devices."""
    source = _plan_source()
    fields = ("grid", "smem", "units", "mtiles", "unit_groups", "batch_groups", "rows", "passes", "pass_ntiles",
              "kblock", "blocks_per_warp", "reg_blocks", "smem_blocks", "stage_slots", "mode", "fits")
    for cell, bwd, (dtype, tf32), H, B, (sms, optin) in itertools.product(
            ("gru", "lstm", "rnn_tanh", "rnn_relu"), (False, True), (("bfloat16", False), ("float16", False),
                                                                     ("float32", True),
                                             ("float32", False)),
            (1, 17, 100, 256, 768, 1024, 2048), (1, 8, 9, 16, 33, 128, 300), (H100, A100, (4, 227 * 1024))):
        c = dict(source.launch_shape(cell, bwd, dtype, tf32, H, B, sms, optin))
        py = model_cuda.make_plan(cell, bwd, {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}[dtype], tf32,
                                  H, B, sms, optin)
        mine = dict(grid=py.grid, smem=py.smem, units=py.units, mtiles=py.mtiles, unit_groups=py.unit_groups,
                    batch_groups=py.batch_groups, rows=py.rows, passes=py.passes, pass_ntiles=py.pass_ntiles,
                    kblock=py.kblock, blocks_per_warp=py.blocks_per_warp, reg_blocks=py.reg_blocks,
                    smem_blocks=py.smem_blocks, stage_slots=py.stage_slots, mode=py.mode, fits=py.fits(sms, optin))
        assert {f: c[f] for f in fields} == mine, (cell, bwd, dtype, tf32, H, B, sms)


def test_launch_shape_arithmetic():
    """LSTM bf16 H=768 B=16 on an H100 (the flashrnn case): forward 48 unit groups x 2 batch groups of
    8 rows, 3 K blocks of 32 per warp, all in registers; backward 32 units (24 x 2 CTAs), K = 3072:
    12 blocks per warp, 6 in registers, 8 in flight through the cp.async ring."""
    source = _plan_source()
    f = source.launch_shape("lstm", False, "bfloat16", False, 768, 16, *H100)
    assert (f["grid"], f["unit_groups"], f["batch_groups"], f["rows"], f["blocks_per_warp"], f["reg_blocks"]) == \
        (96, 48, 2, 8, 3, 3)
    partials = 8 * 4 * 2 * 512  # 8 warps x 4 m-tiles x 2 n-tiles x (32 lanes x 16 bytes)
    stage = 8 * 3 * 1 * 512  # 8 warps x 3 blocks x 1 n-tile
    states = 2 * 64 * 16 * 4 + 64 * 4  # h and c, lengths: 64 rows
    assert f["smem"] == stage + partials + states
    b = source.launch_shape("lstm", True, "bfloat16", False, 768, 16, *H100)
    assert (b["grid"], b["units"], b["blocks_per_warp"], b["reg_blocks"], b["smem_blocks"], b["stage_slots"]) == \
        (48, 32, 12, 6, 6, 8)


@needs_cuda_ops
def test_step_boundary_default_is_the_models_choice(monkeypatch):
    """Until a GPU measures both, the default step boundary is the one the latency model prices
    lower; FUSEDRNN_CUDA_READY_FLAGS=1 / 0 force ready flags / grid barriers."""
    from fusedrnn.bench import model_cuda
    from fusedrnn.bench.perf_model import H100

    monkeypatch.delenv("FUSEDRNN_CUDA_READY_FLAGS", raising=False)
    assert cuda_ops._ready_flags() == (model_cuda.READY_FLAGS_US < H100.barrier_us) == cuda_ops.READY_FLAGS_DEFAULT
    assert model_cuda.DEFAULT_FLAGS == cuda_ops.READY_FLAGS_DEFAULT
    monkeypatch.setenv("FUSEDRNN_CUDA_READY_FLAGS", "1")
    assert cuda_ops._ready_flags()
    monkeypatch.setenv("FUSEDRNN_CUDA_READY_FLAGS", "0")
    assert not cuda_ops._ready_flags()


# ---------------------------------------------------------------------------------------------
# Op registration, fake shapes, autograd plumbing on meta tensors
# ---------------------------------------------------------------------------------------------


@needs_cuda_ops
def test_ops_registered():
    for name in ("cuda_gru_recurrence", "cuda_gru_recurrence_backward",
                 "cuda_lstm_recurrence", "cuda_lstm_recurrence_backward",
                 "cuda_rnn_recurrence", "cuda_rnn_recurrence_backward"):
        assert hasattr(torch.ops.fusedrnn, name), name


def _meta_inputs(cell, T=5, B=3, I=7, H=16, bias=True, residual=True, lengths=True):  # noqa: E741
    G = CELLS[cell] * H
    mk = lambda *s: torch.empty(*s, device="meta", requires_grad=True)  # noqa: E731
    args = dict(x=mk(T, B, I), h0=mk(B, H), w_ih=mk(G, I), w_hh=mk(G, H),
                b_ih=mk(G) if bias else None, b_hh=mk(G) if bias else None,
                residual=mk(T, B, H) if residual else None,
                lengths=torch.full((B,), T, dtype=torch.int64, device="meta") if lengths else None)
    if cell == "lstm":
        args["c0"] = mk(B, H)
    return args


@needs_cuda_ops
@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("bias,residual,lengths,zoned", [(True, True, True, False), (False, False, False, False),
                                                         (True, False, True, "training"), (False, True, False, "eval")])
def test_fake_forward_and_autograd_shapes(cell, bias, residual, lengths, zoned):
    from fusedrnn.zoneout import Zoneout

    a = _meta_inputs(cell, bias=bias, residual=residual, lengths=lengths)
    seeds = torch.empty(2, dtype=torch.int64, device="meta") if zoned == "training" else None
    zo = Zoneout(0.3, 0.4, seeds) if zoned else None
    if cell == "gru":
        outs = cuda_ops.gru(a["x"], a["h0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["residual"],
                            a["lengths"], False, zo)
    elif cell != "lstm":
        outs = cuda_ops.rnn(cell, a["x"], a["h0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["residual"],
                            a["lengths"], True, zo)
    else:
        outs = cuda_ops.lstm(a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], None,
                             a["residual"], a["lengths"], True, zo)
    T, B, _ = a["x"].shape
    H = a["h0"].shape[1]
    assert outs[0].shape == (T, B, H) and all(o.shape == (B, H) for o in outs[1:])
    loss = sum(o.sum() for o in outs)
    leaves = [v for k, v in a.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    grads = torch.autograd.grad(loss, leaves)
    for leaf, g in zip(leaves, grads):
        assert g is not None and g.shape == leaf.shape and g.device.type == "meta"


@needs_cuda_ops
def test_rnn_entry_refuses_what_it_cannot_run():
    """The Elman RNN entry: another cell name or a LayerNorm handed to it directly is a ValueError
    naming it (dispatch never hands it one: reasons() declines those calls); a zoneout it runs."""
    from fusedrnn.zoneout import Zoneout

    a = _meta_inputs("rnn_tanh")
    args = (a["x"], a["h0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["residual"], a["lengths"], False)
    with pytest.raises(ValueError, match="cell must be 'rnn_tanh' or 'rnn_relu', got 'gru'"):
        cuda_ops.rnn("gru", *args)
    with pytest.raises(ValueError, match="no LayerNorm"):
        cuda_ops.BACKEND.rnn("rnn_relu", *args, layernorm=object())
    y, h_n = cuda_ops.BACKEND.rnn("rnn_tanh", *args, zoneout=Zoneout(0.2, 0.2))  # the fakes: shapes only
    assert y.shape == a["x"].shape[:2] + (16,) and h_n.shape == a["h0"].shape


@needs_cuda_ops
def test_backend_takes_zoneout_calls():
    """The cuda backend's reasons() no longer decline zoneout (the kernels run it: template parameter
    ZO of csrc/rnn_kernels.cuh); a LayerNorm call is still declined by name."""
    import dataclasses

    from fusedrnn import backends

    cuda = backends.get("cuda")
    for cell in ("gru", "lstm", "rnn_tanh", "rnn_relu"):
        spec = backends.CallSpec(cell, torch.device("cpu"), torch.float32, 8, 4, 16, 16, 16, False, False, False,
                                 False)
        zoned = dataclasses.replace(spec, zoneout=True)
        assert cuda.reasons(zoned, forced=True) == cuda.reasons(spec, forced=True)
        assert not any("zoneout" in r for r in cuda.reasons(zoned, forced=True))
        assert any("LayerNorm" in r for r in cuda.reasons(dataclasses.replace(spec, layernorm=True), forced=True))


@needs_cuda_ops
def test_fake_saved_buffer_only_when_grad_needed():
    gx = torch.empty(4, 2, 48, device="meta")
    h0, w = torch.empty(2, 16, device="meta"), torch.empty(48, 16, device="meta")
    _, _, hist, saved = torch.ops.fusedrnn.cuda_gru_recurrence(gx, h0, w, None, None, None, False, False, False, [], None)
    assert hist.shape == (4, 2, 16) and saved.numel() == 0
    _, _, _, saved = torch.ops.fusedrnn.cuda_gru_recurrence(gx, h0, w, None, None, None, False, True, False, [], None)
    assert saved.shape == (4, 2, 64) and saved.dtype == torch.float32
    w1 = torch.empty(16, 16, device="meta")  # the Elman RNN: one gate, one saved activation (h')
    for cell in ("rnn_tanh", "rnn_relu"):
        _, _, hist, saved = torch.ops.fusedrnn.cuda_rnn_recurrence(cell, gx[..., :16], h0, w1, None, None, None, False,
                                                                   False, False, [], None)
        assert hist.shape == (4, 2, 16) and saved.numel() == 0
        _, _, _, saved = torch.ops.fusedrnn.cuda_rnn_recurrence(cell, gx[..., :16], h0, w1, None, None, None, False,
                                                                True, False, [], None)
        assert saved.shape == (4, 2, 16) and saved.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# The built extension itself (no GPU): named checks before any device work
# ---------------------------------------------------------------------------------------------


@needs_ext
def test_extension_input_checks_name_the_argument():
    gx = torch.randn(4, 2, 48)
    with pytest.raises(RuntimeError, match="gx must be a 3-D CUDA tensor"):
        EXT.gru_forward(gx, torch.zeros(2, 16), torch.zeros(48, 16), None, None, None, False, False, False)
    with pytest.raises(RuntimeError, match="cell must be 'gru', 'lstm', 'rnn_tanh' or 'rnn_relu'"):
        EXT.launch_shape("rnn", False, "float32", False, 16, 2, *H100)
    with pytest.raises(RuntimeError, match="gx must be a 3-D CUDA tensor"):
        EXT.elman_forward("rnn_tanh", gx[..., :16], torch.zeros(2, 16), torch.zeros(16, 16), None, None, None, False,
                          False, False)
