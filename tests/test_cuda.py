"""CPU-runnable checks of the cuda backend: dispatch reasons, declared limits, op registration,
fake (meta) shapes through forward and autograd, the extension's input checks and launch arithmetic.
The numerics need a GPU: tests/test_cuda_gpu.py."""

from __future__ import annotations

import pytest
import torch

import fusedrnn
from fusedrnn import _ext, backends, dispatch
from fusedrnn.backends import CallSpec

try:
    from fusedrnn.backends import cuda as cuda_ops
    _import_reason = ""
except Exception as e:  # noqa: BLE001
    cuda_ops, _import_reason = None, f"{type(e).__name__}: {e}"
needs_cuda_ops = pytest.mark.skipif(cuda_ops is None, reason=f"fusedrnn.backends.cuda: {_import_reason}")


def _ext_or_none():
    try:
        return _ext.load()
    except _ext.ExtensionError:
        return None


EXT = _ext_or_none()
needs_ext = pytest.mark.skipif(EXT is None or not hasattr(EXT, "rnn_fwd"), reason=f"extension: {_ext.build_info()}")


def _problem(cell="lstm", dtype=torch.bfloat16, H=256, proj=False, device="cuda:0"):
    return CallSpec(cell=cell, device=torch.device(device), dtype=dtype, T=8, B=2, I=H, H=H, P=H,
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
    """An sm_90 device with 132 SMs and 227 KiB of opt-in shared memory; the plan uses the real
    launch arithmetic (_C.launch_shape) when the extension is built, else a stand-in."""
    state = {"capability": (9, 0), "sms": 132, "optin": 227 * 1024}

    def plan(cell, backward, dtype_name, tf32, H, device_index):
        if EXT is not None and hasattr(EXT, "launch_shape"):
            shape = dict(EXT.launch_shape(cuda_ops._CELL_ID[cell], backward, dtype_name, tf32, H))
        else:
            shape = {"grid": (H + 15) // 16, "smem": 2 * 64 * H}
        fits_smem = shape["smem"] <= state["optin"]
        blocks = 1 if fits_smem else 0
        return {"grid": shape["grid"], "smem": shape["smem"], "blocks_per_sm": blocks, "num_sms": state["sms"],
                "max_smem_optin": state["optin"], "cooperative": True,
                "fits": fits_smem and shape["grid"] <= blocks * state["sms"]}

    monkeypatch.setattr(cuda_ops, "_plan", plan)
    cuda_ops.max_hidden_size.cache_clear()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: state["capability"])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    yield state
    cuda_ops.max_hidden_size.cache_clear()


@needs_cuda_ops
def test_unsupported_dtype_proj_and_capability(fake_gpu):
    assert any("dtype=torch.float64" in r for r in cuda_ops.limits(_problem(dtype=torch.float64), forced=True))
    assert any("proj_size" in r for r in cuda_ops.limits(_problem(proj=True), forced=True))
    fake_gpu["capability"] = (7, 5)
    assert any("compute capability 7.5" in r for r in cuda_ops.limits(_problem(), forced=True))


@needs_cuda_ops
@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_hidden_size_limit_is_stated_with_its_number(fake_gpu, cell, dtype):
    hmax = cuda_ops.max_hidden_size(cell, dtype, False, 0)
    assert hmax >= 256, hmax
    assert cuda_ops.limits(_problem(cell=cell, dtype=dtype, H=hmax), forced=True) == []
    reasons = cuda_ops.limits(_problem(cell=cell, dtype=dtype, H=hmax + 1), forced=True)
    assert len(reasons) == 1 and f"H={hmax + 1}" in reasons[0] and f"is {hmax}" in reasons[0], reasons


@needs_ext
def test_declared_limits_on_h100_and_a100(capsys):
    """The largest H per cell/dtype from the real launch arithmetic (H100: 132 SMs, 227 KiB;
    A100: 108 SMs, 163 KiB), printed for csrc/README.md; bf16 LSTM H=1024 must fit an H100."""

    def hmax(cell, dtype, tf32, sms, optin):
        best = 0
        for H in range(16, 16 * sms + 1, 16):
            ok = all(
                EXT.launch_shape(cuda_ops._CELL_ID[cell], bwd, dtype, tf32, H)["smem"] <= optin for bwd in (0, 1)
            )
            if ok:
                best = H
        return best

    table = {}
    for gpu, sms, optin in (("H100", 132, 227 * 1024), ("A100", 108, 163 * 1024)):
        for cell in ("gru", "lstm"):
            for dtype, tf32 in (("bfloat16", False), ("float16", False), ("float32", True), ("float32", False)):
                table[(gpu, cell, dtype, tf32)] = hmax(cell, dtype, tf32, sms, optin)
    with capsys.disabled():
        print()
        for k, v in table.items():
            print(f"  max H (multiple of 16) {k}: {v}")
    assert table[("H100", "lstm", "bfloat16", False)] >= 1024
    assert table[("H100", "gru", "bfloat16", False)] >= 1024


# ---------------------------------------------------------------------------------------------
# Op registration, fake shapes, autograd plumbing on meta tensors
# ---------------------------------------------------------------------------------------------


@needs_cuda_ops
def test_ops_registered():
    for name in ("cuda_gru_recurrence", "cuda_gru_recurrence_backward",
                 "cuda_lstm_recurrence", "cuda_lstm_recurrence_backward"):
        assert hasattr(torch.ops.fusedrnn, name), name


def _meta_inputs(cell, T=5, B=3, I=7, H=16, bias=True, residual=True, lengths=True):
    G = (3 if cell == "gru" else 4) * H
    mk = lambda *s: torch.empty(*s, device="meta", requires_grad=True)  # noqa: E731
    args = dict(x=mk(T, B, I), h0=mk(B, H), w_ih=mk(G, I), w_hh=mk(G, H),
                b_ih=mk(G) if bias else None, b_hh=mk(G) if bias else None,
                residual=mk(T, B, H) if residual else None,
                lengths=torch.full((B,), T, dtype=torch.int64, device="meta") if lengths else None)
    if cell == "lstm":
        args["c0"] = mk(B, H)
    return args


@needs_cuda_ops
@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("bias,residual,lengths", [(True, True, True), (False, False, False)])
def test_fake_forward_and_autograd_shapes(cell, bias, residual, lengths):
    a = _meta_inputs(cell, bias=bias, residual=residual, lengths=lengths)
    if cell == "gru":
        outs = cuda_ops.gru(a["x"], a["h0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["residual"],
                            a["lengths"], False)
    else:
        outs = cuda_ops.lstm(a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], None,
                             a["residual"], a["lengths"], True)
    T, B, _ = a["x"].shape
    H = a["h0"].shape[1]
    assert outs[0].shape == (T, B, H) and all(o.shape == (B, H) for o in outs[1:])
    loss = sum(o.sum() for o in outs)
    leaves = [v for k, v in a.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    grads = torch.autograd.grad(loss, leaves)
    for leaf, g in zip(leaves, grads):
        assert g is not None and g.shape == leaf.shape and g.device.type == "meta"


@needs_cuda_ops
def test_fake_saved_buffer_only_when_grad_needed():
    gx = torch.empty(4, 2, 48, device="meta")
    h0, w = torch.empty(2, 16, device="meta"), torch.empty(48, 16, device="meta")
    _, _, hist, saved = torch.ops.fusedrnn.cuda_gru_recurrence(gx, h0, w, None, None, None, False, False, False)
    assert hist.shape == (4, 2, 16) and saved.numel() == 0
    _, _, _, saved = torch.ops.fusedrnn.cuda_gru_recurrence(gx, h0, w, None, None, None, False, True, False)
    assert saved.shape == (4, 2, 64) and saved.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# The extension itself (no GPU): named input checks and launch arithmetic
# ---------------------------------------------------------------------------------------------


@needs_ext
def test_extension_input_checks_name_the_argument():
    gx = torch.randn(4, 2, 48)
    with pytest.raises(RuntimeError, match="gx must be a 3-D CUDA tensor"):
        EXT.rnn_fwd(0, gx, torch.zeros(2, 16), None, torch.zeros(48, 16), None, None, None, False, False, False)
    with pytest.raises(RuntimeError, match="cell must be 0"):
        EXT.rnn_fwd(5, gx, torch.zeros(2, 16), None, torch.zeros(48, 16), None, None, None, False, False, False)


@needs_ext
def test_launch_shape_arithmetic():
    # LSTM bf16 H=1024: 64 CTAs of 16 units; forward W_hh slice 64 x (1024+8) bf16 = 129 KiB.
    d = EXT.launch_shape(1, False, "bfloat16", False, 1024)
    assert d["grid"] == 64 and d["threads"] == 256 and d["units_per_cta"] == 16
    a_bytes = 64 * (1024 + 8) * 2
    stage = 16 * (512 + 8) * 2
    partial = 2 * 64 * 16 * 4
    assert d["smem"] == a_bytes + stage + partial
    b = EXT.launch_shape(1, True, "bfloat16", False, 1024)  # backward: W_hhᵀ slice 16 x (4096+8)
    assert b["smem"] == 16 * (4096 + 8) * 2 + stage + 8 * 16 * 16 * 4
    assert EXT.launch_shape(0, False, "float32", True, 500)["grid"] == 32
