"""Providers: the things being timed on one case, all fed the same inputs and weights.

  torch-nn            torch.nn.GRU/LSTM (cuDNN on a GPU, ATen on CPU); the ratio baseline
  torch-nn-nocudnn    the same inside torch.backends.cudnn.flags(enabled=False) (GPU only)
  cell-loop           a per-step torch.nn.GRUCell/LSTMCell loop in eager mode
  cell-loop-compiled  the same loop with the cell step under torch.compile (the step is compiled,
                      not the T-step loop: unrolling T=1500 steps would take minutes to compile)
  fusedrnn-triton     fusedrnn.GRU/LSTM(..., backend="triton")
  fusedrnn-cuda       fusedrnn.GRU/LSTM(..., backend="cuda")
  fusedrnn-torch      fusedrnn.GRU/LSTM(..., backend="torch")      (CPU demonstration)
  fusedrnn-reference  fusedrnn.GRU/LSTM(..., backend="reference")  (CPU demonstration)
  torch-nn-graphed, fusedrnn-triton-graphed, fusedrnn-cuda-graphed
                      streaming cases only (GPU): one T=1 call, state carried inside, captured in a
                      CUDA graph (torch.cuda.graph) and replayed once per step after copying that
                      step's input into the graph's input buffer

Streaming cases (``case.stream``) run T calls of one step each, the state of one call fed to the
next (inference only). For residual cases the torch baselines are what a user writes today: one single-layer torch.nn module
(or cell loop) per layer, plus ``y = rnn(x) + x``; fusedrnn gets ``residual=True``.

Zoneout cases (``case.zoneout = p``; fusedrnn/zoneout.py): with h~_t (c~_t) the cell's new state,
training runs h_t = m * h_{t-1} + (1 - m) * h~_t, m ~ Bernoulli(p) per element, row, step, layer
and direction (LSTM: c likewise, its own mask), and evaluation runs m = p. Mode "forward" is
inference, so it runs evaluation semantics (every module in eval(), m = p); "forward+backward" is
a training step (modules in train(), masks drawn).
  fusedrnn-triton, fusedrnn-cuda (and -graphed), fusedrnn-reference   zoneout=p: the masks are
                      Philox, generated in the step (the fused kernels regenerate them in the backward)
  fusedrnn-torch      Unavailable: that backend declines zoneout (its own reason is the message)
  cell-loop, cell-loop-compiled   the loop a user writes today: after each cell step,
                      torch.lerp(h~, h_prev, m) with m = torch.empty_like(h).bernoulli_(p) drawn by torch
                      per step (training) or the scalar p (evaluation); the compiled loop compiles the
                      zoned step (mask draw and blend inside the compiled function)
  torch-nn, torch-nn-nocudnn (and -graphed)   cannot express zoneout: they run the SAME shapes WITHOUT
                      zoneout, so the case's "x torch-nn" ratios are to cuDNN's un-zoned recurrence
                      (the cheaper computation: a handicap for the zoned providers, never a flattery).
                      ``caveat()`` says so in each such row's ``note`` (table and CSV).

LayerNorm cases (``case.layernorm``; fusedrnn/layernorm.py): LSTM a_t = LN_ih(x W_ihᵀ) + LN_hh(h W_hhᵀ)
+ b_ih + b_hh, h_t = o tanh(LN_c(c_t)); GRU gi = LN_ih(x W_ihᵀ) + b_ih, gh = LN_hh(h W_hhᵀ) + b_hh. The
gammas and betas are the inputs' ``norm_dict`` (drawn away from 1 and 0, cases._master).
  fusedrnn-*          fusedrnn.LayerNormLSTM / LayerNormGRU on that backend. Whether a backend runs
                      LayerNorm is its own call: ``layernorm_reasons`` asks its ``reasons()`` for the
                      case's call with and without layernorm, and a backend that adds a reason with it
                      is Unavailable with those reasons (its own words); one that adds none is run, so
                      a backend runs the case as soon as it accepts LayerNorm, with no change here
  cell-loop, cell-loop-compiled   the loop a user writes today: per step, with
                      fusedrnn.layernorm.norm for LN, the products by F.linear and the cell's gate math
                      written out (torch's fused cells cannot take LN between the product and the
                      gates); the compiled loop compiles that step
  torch-nn, torch-nn-nocudnn (and -graphed)   cannot express LayerNorm: they run the SAME shapes
                      WITHOUT LayerNorm (the cheaper computation), and ``caveat()`` says so in the
                      row's ``note``, as for zoneout.

``build(case_inputs, provider, mode)`` returns a zero-argument callable doing one timed call: in
"forward" one inference pass under torch.no_grad() with the modules in eval(); in "forward+backward"
(modules in train()) a forward pass and ``out.backward(dy)`` with a fixed random dy (gradients reset
to None first, outside autograd). The benchmark modules have no dropout, so eval()/train() changes
only zoneout and the train flag torch.nn passes to its op (cuDNN may then take its inference path).
Packed cases pack inside the call (torch.nn.utils.rnn.pack_padded_sequence) for every module
provider alike; the cell loops mask instead.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from .cases import Inputs
from .composed import ComposedTorch

TORCH_NN = "torch-nn"
TORCH_NN_PROVIDERS = ("torch-nn", "torch-nn-nocudnn", "torch-nn-graphed")  # torch.nn modules: no zoneout, no LayerNorm


class Unavailable(Exception):
    """The provider cannot run this measurement here; the message says why."""


@dataclass(frozen=True)
class Provider:
    name: str
    label: str
    devices: tuple[str, ...]  # device types it runs on
    fused: bool = False


PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider(TORCH_NN, "torch.nn (cuDNN on GPU)", ("cuda", "cpu")),
        Provider("torch-nn-nocudnn", "torch.nn, cuDNN off", ("cuda",)),
        Provider("cell-loop", "per-step cell loop, eager", ("cuda", "cpu")),
        Provider("cell-loop-compiled", "per-step cell loop, torch.compile'd step", ("cuda", "cpu")),
        Provider("fusedrnn-triton", "fusedrnn triton", ("cuda", "cpu"), fused=True),
        Provider("fusedrnn-cuda", "fusedrnn cuda", ("cuda",), fused=True),
        Provider("fusedrnn-torch", "fusedrnn torch backend", ("cuda", "cpu"), fused=True),
        Provider("fusedrnn-reference", "fusedrnn reference backend", ("cuda", "cpu"), fused=True),
        Provider("torch-nn-graphed", "torch.nn, one CUDA graph per streaming call", ("cuda",)),
        Provider("fusedrnn-triton-graphed", "fusedrnn triton, one CUDA graph per streaming call", ("cuda",),
                 fused=True),
        Provider("fusedrnn-cuda-graphed", "fusedrnn cuda, one CUDA graph per streaming call", ("cuda",), fused=True),
    )
}
GRAPHED = "-graphed"
GPU_DEFAULT = ("torch-nn", "torch-nn-nocudnn", "cell-loop", "cell-loop-compiled", "fusedrnn-triton", "fusedrnn-cuda",
               "torch-nn-graphed", "fusedrnn-triton-graphed", "fusedrnn-cuda-graphed")
CPU_DEMO_DEFAULT = ("torch-nn", "cell-loop", "fusedrnn-torch", "fusedrnn-reference")


def _zoneout_reasons() -> dict[str, str]:
    """provider -> why it cannot run zoneout: the backend's own reason (fusedrnn.backends)."""
    try:
        from fusedrnn.backends import native

        torch_why = native.ZONEOUT_REASON
    except Exception as e:  # noqa: BLE001 - an unimportable fusedrnn is a reason too
        torch_why = f"import fusedrnn.backends failed ({type(e).__name__}: {e})"
    return {"fusedrnn-torch": torch_why}


def layernorm_reasons(inp: Inputs, provider: str, mode: str) -> list[str]:
    """Why the fusedrnn backend of ``provider`` cannot run the LayerNorm of ``inp``'s case ([] when
    it can, or when the provider or the case is not concerned): the reasons the backend's own
    ``reasons()`` gives for the case's first layer-direction call with layernorm=True that it does
    not give for the same call without it. A backend that learns LayerNorm stops giving one, and
    its rows then run."""
    case = inp.case
    p = PROVIDERS.get(provider)
    if not case.layernorm or p is None or not p.fused:
        return []
    name = provider[len("fusedrnn-"):]
    name = name[: -len(GRAPHED)] if name.endswith(GRAPHED) else name
    try:
        from fusedrnn import backends

        backend = backends.get(name)

        def ask(layernorm: bool) -> list[str]:
            spec = backends.CallSpec(case.cell, inp.x.device, inp.x.dtype, case.T, case.B, case.I, case.H, case.H,
                                     case.residual, case.packed, False, False,
                                     needs_grad=mode == "forward+backward", zoneout=bool(case.zoneout),
                                     layernorm=layernorm)
            return list(backend.reasons(spec, forced=True))

        without = ask(False)
        return [r for r in ask(True) if r not in without]
    except Exception as e:  # noqa: BLE001 - a backend that cannot answer is a reason too
        return [f"could not ask fusedrnn backend {name!r} about layernorm ({type(e).__name__}: {e})"]


def caveat(case, provider: str) -> str:
    """What a row of ``provider`` on ``case`` runs that differs from the case ('' when nothing):
    the torch.nn baselines run a zoneout case without zoneout and a LayerNorm case without LayerNorm."""
    if provider not in TORCH_NN_PROVIDERS:
        return ""
    out = []
    if case.zoneout:
        out.append(f"WITHOUT zoneout (torch.nn has none; p={case.zoneout:g} not applied): x torch-nn of this case is "
                   f"to the un-zoned recurrence")
    if case.layernorm:
        out.append("WITHOUT LayerNorm (torch.nn has none; LN_ih, LN_hh" + (", LN_c" if case.cell == "lstm" else "")
                   + " not applied): x torch-nn of this case is to the un-normalised recurrence")
    return "; ".join(out)


def _layer_state(sd: dict, layer: int, direction: int, keep_reverse: bool = False) -> dict:
    """Weights of one layer-direction renamed as layer 0's (``weight_ih_l3_reverse`` ->
    ``weight_ih_l0_reverse`` with keep_reverse, else ``weight_ih_l0``)."""
    suffix = f"_l{layer}" + ("_reverse" if direction else "")
    new = "_l0" + ("_reverse" if direction and keep_reverse else "")
    return {k.replace(suffix, new): v for k, v in sd.items() if k.endswith(suffix)}


def _rnn_cls(cell: str, fused_backend: str | None, layernorm: bool = False):
    """torch.nn's class (fused_backend None: never layer-normalised), else fusedrnn's, the
    LayerNorm one (LayerNormGRU / LayerNormLSTM) with ``layernorm``."""
    if fused_backend is None:
        return torch.nn.GRU if cell == "gru" else torch.nn.LSTM
    try:
        import fusedrnn
    except Exception as e:  # noqa: BLE001 - any import failure is a reason, not a crash
        raise Unavailable(f"import fusedrnn failed ({type(e).__name__}: {e})") from e
    name = ("LayerNorm" if layernorm else "") + ("GRU" if cell == "gru" else "LSTM")
    cls = getattr(fusedrnn, name, None)
    if cls is None:
        raise Unavailable(f"fusedrnn.{name} not present in this checkout")
    return cls


def _load(module, inp: Inputs, fused: bool):
    """The shared weights into ``module``; a fusedrnn module of a LayerNorm case also gets the
    case's gammas and betas (strict: every parameter is the inputs')."""
    module.load_state_dict({**inp.state_dict, **inp.norm_dict} if fused else inp.state_dict)
    return module


def _module_model(inp: Inputs, fused_backend: str | None, training: bool = False):
    """(forward(x) -> out, params) for torch.nn or fusedrnn modules, in train() when ``training``
    (forward+backward) else eval() (inference: a zoneout case then runs m = p). fusedrnn modules
    get ``zoneout=case.zoneout``; torch.nn's have none (see ``caveat``)."""
    case = inp.case
    dtype, device = inp.x.dtype, inp.x.device
    cls = _rnn_cls(case.cell, fused_backend, case.layernorm)
    kw = {} if fused_backend is None else {"backend": fused_backend}
    if fused_backend is not None and case.zoneout:
        kw["zoneout"] = case.zoneout
    if case.residual and fused_backend is None:
        # torch baseline for a residual stack: one single-layer module per layer, then the add.
        template = _rnn_cls(case.cell, "reference")(case.I, case.H, num_layers=case.layers,
                                                    bidirectional=case.bidirectional, residual=True)
        template.load_state_dict(inp.state_dict)
        modules = ComposedTorch(template.to(device=device, dtype=dtype)).train(training)

        def run(seq):
            return modules(seq)[0]
    else:
        extra = dict(kw, residual=True) if case.residual else kw
        modules = cls(case.I, case.H, num_layers=case.layers, bidirectional=case.bidirectional, **extra)
        modules = _load(modules, inp, fused_backend is not None).to(device=device, dtype=dtype).train(training)

        def run(seq):
            return modules(seq)[0]

    if case.stream:
        if case.packed or case.residual:
            raise Unavailable("a streaming case is neither packed nor residual")

        def forward(x):
            state = None
            for t in range(x.shape[0]):  # one call per step, the state carried
                out, state = modules(x[t:t + 1], state)
            return out
    elif case.packed:
        if case.residual:
            raise Unavailable("packed + residual is not a benchmark case")
        lengths = inp.lengths

        def forward(x):
            packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
            return run(packed).data
    else:
        forward = run
    return forward, list(modules.parameters())


def _graphed_stream_model(inp: Inputs, fused_backend: str | None):
    """(forward(x) -> None, params): a streaming case with each call replayed from a CUDA graph.

    One T=1 call, with the new state copied into the state it read, is captured once (after a few
    warm-up calls on a side stream, torch's capture recipe: kernels compiled, plans cached, workspaces
    allocated); a timed call then copies each step's input into the graph's input buffer and replays."""
    case = inp.case
    if not case.stream:
        raise Unavailable("the CUDA-graph providers time the streaming cases only")
    if inp.x.device.type != "cuda":
        raise Unavailable("CUDA graphs need a GPU")
    cls = _rnn_cls(case.cell, fused_backend, case.layernorm)
    kw = {} if fused_backend is None else {"backend": fused_backend}
    if fused_backend is not None and case.zoneout:
        kw["zoneout"] = case.zoneout
    module = cls(case.I, case.H, num_layers=case.layers, bidirectional=case.bidirectional, **kw)
    module = _load(module, inp, fused_backend is not None)
    module = module.to(device=inp.x.device, dtype=inp.x.dtype).eval()  # inference: zoneout m = p
    x1 = inp.x[:1].clone()
    h = inp.x.new_zeros(case.layers * case.D, case.B, case.H)
    state = (h, torch.zeros_like(h)) if case.cell == "lstm" else h

    def one_call():
        _, new = module(x1, state)
        for old, fresh in zip(state if isinstance(state, tuple) else (state,), new if isinstance(new, tuple) else (new,)):
            old.copy_(fresh)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(3):
            one_call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        one_call()

    def forward(x):
        for t in range(x.shape[0]):
            x1.copy_(x[t:t + 1])
            graph.replay()

    return forward, list(module.parameters())


# --- the per-step cell loop -------------------------------------------------------------------------

def _gru_step(x_t, h, w_ih, w_hh, b_ih, b_hh):
    return torch.gru_cell(x_t, h, w_ih, w_hh, b_ih, b_hh)


def _lstm_step(x_t, h, c, w_ih, w_hh, b_ih, b_hh):
    return torch.lstm_cell(x_t, (h, c), w_ih, w_hh, b_ih, b_hh)


def _ln_gru_step(x_t, h, w_ih, w_hh, b_ih, b_hh, g_ih, be_ih, g_hh, be_hh):
    """One layer-normalised GRU step as a user writes it (fusedrnn/layernorm.py's semantics):
    gi = LN_ih(x W_ihᵀ) + b_ih, gh = LN_hh(h W_hhᵀ) + b_hh, then torch's GRU gate math."""
    from fusedrnn.layernorm import norm

    gi = norm(F.linear(x_t, w_ih), g_ih, be_ih) + b_ih
    gh = norm(F.linear(h, w_hh), g_hh, be_hh) + b_hh
    i_r, i_z, i_n = gi.chunk(3, 1)
    h_r, h_z, h_n = gh.chunk(3, 1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h


def _ln_lstm_step(x_t, h, c, w_ih, w_hh, b_ih, b_hh, g_ih, be_ih, g_hh, be_hh, g_c, be_c):
    """One layer-normalised LSTM step as a user writes it: a = LN_ih(x W_ihᵀ) + LN_hh(h W_hhᵀ) +
    b_ih + b_hh (gates i, f, g, o), c_t = σ(f) c + σ(i) tanh(g), h_t = σ(o) tanh(LN_c(c_t))."""
    from fusedrnn.layernorm import norm

    a = norm(F.linear(x_t, w_ih), g_ih, be_ih) + norm(F.linear(h, w_hh), g_hh, be_hh) + b_ih + b_hh
    i, f, g, o = a.chunk(4, 1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(norm(c_new, g_c, be_c)), c_new


def _step_fn(cell: str, layernorm: bool):
    """The step (x_t, h[, c], *weights) -> h_t or (h_t, c_t): torch's cell op, or the LayerNorm step."""
    if cell == "gru":
        return _ln_gru_step if layernorm else _gru_step
    return _ln_lstm_step if layernorm else _lstm_step


def _zone_fn(p: float, training: bool):
    """The zoneout a user of the cell loop writes: (new, old) -> the zoned state, fusedrnn's
    semantics (fusedrnn/zoneout.py) with torch's masks. Training: m = Bernoulli(p) drawn by torch at
    each call (one mask per element, row, step, layer, direction and state), lerp(new, old, m) =
    m * old + (1 - m) * new; evaluation: the expectation, lerp(new, old, p). None without zoneout."""
    if not p:
        return None
    if training:
        def zone(new, old):
            return torch.lerp(new, old, torch.empty_like(new).bernoulli_(p))
    else:
        def zone(new, old):
            return torch.lerp(new, old, p)
    return zone


def _compiled_step(cell: str, zone=None, layernorm: bool = False):
    # Weights are arguments, so layers of equal shapes share one compiled graph. Dynamo's caches
    # are reset first: each case brings new shapes, and past its recompile limit dynamo would
    # silently run the step eagerly. With zoneout the zoned step is compiled (draw and blend inside);
    # with LayerNorm the LayerNorm step (its gammas and betas are arguments too).
    torch._dynamo.reset()
    base = _step_fn(cell, layernorm)
    if zone is None:
        return torch.compile(base, dynamic=False)
    if cell == "gru":
        def zoned(x_t, h, *weights):
            return zone(base(x_t, h, *weights), h)
    else:
        def zoned(x_t, h, c, *weights):
            h_new, c_new = base(x_t, h, c, *weights)
            return zone(h_new, h), zone(c_new, c)
    return torch.compile(zoned, dynamic=False)


def _cell_loop_model(inp: Inputs, compiled: bool, training: bool = False):
    """The loop users write: torch.nn.GRUCell/LSTMCell per step, per layer, per direction.

    Variable lengths: a row's state is frozen and its output zeroed past its length (torch.where),
    which also gives the reverse direction its packed-sequence meaning. Zoneout (``case.zoneout``):
    each step's new states go through ``_zone_fn(p, training)`` (before the length mask, as in
    fusedrnn's kernels). LayerNorm (``case.layernorm``): the step is ``_ln_gru_step`` /
    ``_ln_lstm_step`` with the cell's weights and the inputs' gammas and betas (parameters here,
    so the backward computes their gradients too)."""
    case = inp.case
    dtype, device = inp.x.dtype, inp.x.device
    cells = []  # cells[layer][direction]
    for k, width in enumerate(case.layer_inputs()):
        row = []
        for d in range(case.D):
            c = (torch.nn.GRUCell if case.cell == "gru" else torch.nn.LSTMCell)(width, case.H)
            w = _layer_state(inp.state_dict, k, d)
            c.load_state_dict({name.replace("_l0", ""): v for name, v in w.items()})
            row.append(c.to(device=device, dtype=dtype))
        cells.append(row)
    norms = []  # norms[layer][direction]: the LayerNorm parameters in _ln_*_step's order (LayerNorm cases)
    if case.layernorm:
        kinds = ("ih", "hh", "c") if case.cell == "lstm" else ("ih", "hh")
        norms = [[tuple(torch.nn.Parameter(inp.norm_dict[f"layernorm_{kind}_{p}_l{k}{'_reverse' if d else ''}"].clone())
                        for kind in kinds for p in ("weight", "bias")) for d in range(case.D)]
                 for k in range(case.layers)]
    params = [p for row in cells for c in row for p in c.parameters()] + \
        [p for row in norms for group in row for p in group]
    T, B, H = case.T, case.B, case.H
    valid = None
    if inp.lengths is not None:
        valid = (torch.arange(T).view(T, 1) < inp.lengths.view(1, B)).to(device).unsqueeze(-1)  # (T, B, 1)
    zone = _zone_fn(case.zoneout, training)
    step = _compiled_step(case.cell, zone, case.layernorm) if compiled else None
    ln_step = _step_fn(case.cell, True) if case.layernorm else None

    def one_step(cell, norm, x_t, h, c):
        """(h_t, c_t or None) of one step: the eager cell (or LayerNorm step) then zoneout, or the
        compiled (zoned) step. ``norm``: the layer-direction's LayerNorm parameters, or None."""
        args = (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh, *(norm or ()))
        if step is None:
            if ln_step is not None:
                out = ln_step(x_t, h, *args) if case.cell == "gru" else ln_step(x_t, h, c, *args)
            else:
                out = cell(x_t, h) if case.cell == "gru" else cell(x_t, (h, c))
            h_new, c_new = (out, None) if case.cell == "gru" else out
            if zone is not None:
                h_new = zone(h_new, h)
                c_new = None if c_new is None else zone(c_new, c)
            return h_new, c_new
        if case.cell == "gru":
            return step(x_t, h, *args), None
        return step(x_t, h, c, *args)

    def direction(cell, norm, seq, reverse):
        h = seq.new_zeros(B, H)
        c = seq.new_zeros(B, H) if case.cell == "lstm" else None
        ys = [None] * T
        for t in (range(T - 1, -1, -1) if reverse else range(T)):
            h_new, c_new = one_step(cell, norm, seq[t], h, c)
            if valid is not None:
                h_new = torch.where(valid[t], h_new, h)
                if c_new is not None:
                    c_new = torch.where(valid[t], c_new, c)
                ys[t] = h_new * valid[t]
            else:
                ys[t] = h_new
            h, c = h_new, c_new
        return torch.stack(ys, 0)

    def stream(x):
        # one call per step, every layer, the states carried (what a streaming user writes)
        hs = [x.new_zeros(B, H) for _ in range(case.layers)]
        cs = [x.new_zeros(B, H) for _ in range(case.layers)] if case.cell == "lstm" else None
        for t in range(T):
            inp_t = x[t]
            for k in range(case.layers):
                hs[k], c_new = one_step(cells[k][0], norms[k][0] if norms else None, inp_t, hs[k],
                                        cs[k] if cs else None)
                if cs:
                    cs[k] = c_new
                inp_t = hs[k]
        return inp_t

    def forward(x):
        if case.stream:
            return stream(x)
        seq = x
        for k in range(case.layers):
            outs = [direction(cells[k][d], norms[k][d] if norms else None, seq, reverse=d == 1)
                    for d in range(case.D)]
            y = outs[0] if case.D == 1 else torch.cat(outs, -1)
            seq = y + seq if case.residual else y
        return seq

    return forward, params, valid


# --- build ---------------------------------------------------------------------------------------

def applies(case, provider: str, mode: str) -> bool:
    """Whether the grid holds this measurement at all: a streaming case is inference only, and the
    CUDA-graph providers time the streaming cases only. (Whether it can run here is build's call.)"""
    return mode in case.modes and (case.stream or not provider.endswith(GRAPHED))


def check_device(provider: str, device) -> None:
    p = PROVIDERS.get(provider)
    if p is None:
        raise ValueError(f"unknown provider {provider!r}; providers: {', '.join(PROVIDERS)}")
    dev = torch.device(device).type
    if dev not in p.devices:
        raise Unavailable(f"{provider} runs on {', '.join(p.devices)} only (this run: {dev})")


def build(inp: Inputs, provider: str, mode: str) -> Callable[[], None]:
    """A zero-argument callable doing one call of ``provider`` on ``inp`` in ``mode``.

    Raises Unavailable when the provider cannot serve here (missing module, backend refusing with
    its reasons); the first call inside build() also catches a backend's ValueError at dispatch."""
    case = inp.case
    if case.zoneout and provider in _zoneout_reasons():
        raise Unavailable(f"{provider}: {_zoneout_reasons()[provider]}")
    ln_why = layernorm_reasons(inp, provider, mode)
    if ln_why:  # the backend's own reasons; none once it runs LayerNorm
        raise Unavailable(f"{provider}: {'; '.join(ln_why)}")
    check_device(provider, inp.x.device)
    if mode not in case.modes:
        raise Unavailable(f"{case.id} is measured in {', '.join(case.modes)} only")
    if case.stream and case.bidirectional:
        raise Unavailable("a streaming case is unidirectional")
    ctx: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    mask = None
    training = mode == "forward+backward"  # "forward" is inference: eval(), zoneout m = p
    if provider in (TORCH_NN, "torch-nn-nocudnn"):
        forward, params = _module_model(inp, None, training)
        if provider == "torch-nn-nocudnn":
            def ctx():
                return torch.backends.cudnn.flags(enabled=False)
    elif provider in ("cell-loop", "cell-loop-compiled"):
        forward, params, mask = _cell_loop_model(inp, compiled=provider == "cell-loop-compiled", training=training)
    elif provider.endswith(GRAPHED):
        name = provider[: -len(GRAPHED)]
        forward, params = _graphed_stream_model(inp, None if name == TORCH_NN else name.split("-", 1)[1])
    else:
        forward, params = _module_model(inp, provider.split("-", 1)[1], training)

    if mode == "forward":
        def call():
            with ctx(), torch.no_grad():
                forward(inp.x)
    elif mode == "forward+backward":
        x = inp.x.detach().clone().requires_grad_()
        dy = inp.dy
        if case.packed:
            dy = pack_padded_sequence(dy, inp.lengths, enforce_sorted=False).data if mask is None else dy * mask

        def call():
            x.grad = None
            for p in params:
                p.grad = None
            with ctx():
                out = forward(x)
                out.backward(dy)
    else:
        raise ValueError(f"unknown mode {mode!r}")

    try:
        call()  # first call: dispatch checks, compilation, autotuning all happen here, untimed
    except ValueError as e:  # a forced fusedrnn backend that cannot serve explains itself this way
        raise Unavailable(str(e)) from e
    except NotImplementedError as e:
        raise Unavailable(f"not implemented: {e}") from e
    return call
