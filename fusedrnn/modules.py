"""Drop-in modules: fusedrnn.GRU / fusedrnn.LSTM / fusedrnn.RNN subclass torch.nn.GRU / torch.nn.LSTM /
torch.nn.RNN (the Elman RNN, nonlinearity "tanh" or "relu": cells rnn_tanh / rnn_relu).
fusedrnn.LayerNormLSTM / LayerNormGRU subclass fusedrnn.LSTM / GRU with layer-normalised cells
(fusedrnn/layernorm.py): extra parameters, planned with CallSpec.layernorm (the reference runs them).

Construction, parameters, initialisation, state_dict, argument checks and the shape of the
results are torch's own (inherited, or mirrored line by line from torch's forward). Each forward
asks fusedrnn.dispatch once for a plan: a backend per layer-direction. Then:
- every layer-direction on torch's op and no residual (nor lengths=, nor dropconnect in training,
  nor zoneout):
  torch.nn's own forward runs (same op, same
  dropout draws, bitwise the same results; nothing is added but the plan lookup);
- every layer-direction on torch's op, with residual adds: torch's op layer by layer plus the adds;
- otherwise the module composes layers, directions, inter-layer dropout, packing and residual adds
  around the planned backends' one-layer-direction calls.

Extra keyword-only arguments:
  residual=False | True | k   y_l = rnn_l(x_l) + x_l for layers k, k+1, ... (True: every layer whose
                              input width equals its output width D*P). h_n stays the RNN state.
  backend="auto" | "cuda" | "triton" | "torch" | "reference"
  dropconnect=p               float in [0, 1): in training, each layer-direction's weight_hh is used as
                              weight_hh * m / (1 - p), m ~ Bernoulli(1 - p) elementwise, drawn once per
                              forward call (_dropconnect). In evaluation weight_hh is used as is.
  zoneout=p | (p_h, p_c)      floats in [0, 1) (a pair for LSTM only: h and c; a float sets both):
                              with h~_t (c~_t) the ordinary step's new state, in training
                              h_t = m * h_{t-1} + (1 - m) * h~_t, m ~ Bernoulli(p) per element, batch
                              row, step, layer and direction (fusedrnn/zoneout.py: counter-based
                              Philox masks, seeds drawn from torch's generator at every forward); in
                              evaluation m = p. The outputs are the zoned states. torch's op cannot
                              run it: the Triton kernels (GPU) or the reference (CPU) do.

forward(input, hx=None, *, lengths=None): ``lengths`` (an integer tensor of shape (B,), on any
device) gives each row of a padded input its valid length, with the results of packing with
``pack_padded_sequence(enforce_sorted=False)`` and unpacking with ``total_length=T``; nothing is
packed and, with lengths on the GPU, nothing waits for the device (fusedrnn.functional.check_lengths).
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from . import dispatch
from . import zoneout as _zoneout
from .backends import CELLS, native
from .dispatch import check_backend_name
from .functional import _on_device, check_lengths
from .layernorm import LayerNorm

__all__ = ["GRU", "LSTM", "RNN", "LayerNormGRU", "LayerNormLSTM", "convert", "unconvert"]


def _residual_layers(residual, num_layers: int, layer_widths: list[tuple[int, int]]) -> tuple[int, ...]:
    """Which layers get y_l = rnn_l(x_l) + x_l. layer_widths[l] = (input width, output width)."""
    if isinstance(residual, bool):
        if not residual:
            return ()
        layers = tuple(k for k, (w_in, w_out) in enumerate(layer_widths) if w_in == w_out)
        if not layers:
            warnings.warn(
                "residual=True but no layer has equal input and output widths; no residual adds "
                f"(layer widths (in, out): {layer_widths})",
                stacklevel=4,  # the user's constructor call
            )
        return layers
    if not isinstance(residual, int):
        raise TypeError(f"residual should be a bool or an int layer index, got: {type(residual).__name__}")
    if not 0 <= residual < num_layers:
        raise ValueError(f"residual={residual} is not a layer index in [0, {num_layers - 1}] (num_layers={num_layers})")
    for k in range(residual, num_layers):
        w_in, w_out = layer_widths[k]
        if w_in != w_out:
            raise ValueError(
                f"residual={residual} asks for a residual add on layer {k}, whose input width {w_in} "
                f"differs from its output width {w_out}"
            )
    return tuple(range(residual, num_layers))


def _check_dropconnect(p) -> float:
    if isinstance(p, bool) or not isinstance(p, (float, int)):
        raise ValueError(f"dropconnect should be a float in [0, 1), got: {p!r} ({type(p).__name__})")
    if not 0 <= p < 1:
        raise ValueError(f"dropconnect should be a float in [0, 1), got: {p!r}")
    return float(p)


class _FusedRNNMixin:
    """Shared by GRU, LSTM and RNN: extra arguments, and the layer/direction stack over the functional op."""

    _cell: str  # "gru" | "lstm" | "rnn_tanh" | "rnn_relu"
    _layernorm = False  # the layer-normalised cells (LayerNormLSTM / LayerNormGRU)

    def __init__(self, *args, residual=False, backend: str = "auto", dropconnect: float = 0.0, zoneout=0.0,
                 **kwargs):
        dropconnect = _check_dropconnect(dropconnect)
        super().__init__(*args, **kwargs)
        self._init_extras(residual, backend, dropconnect, zoneout)

    def _init_extras(self, residual, backend, dropconnect: float = 0.0, zoneout=0.0) -> None:
        D = 2 if self.bidirectional else 1
        P = self.proj_size if self.proj_size > 0 else self.hidden_size
        widths = [(self.input_size if k == 0 else D * P, D * P) for k in range(self.num_layers)]
        self.residual = residual
        self._residual_layers = _residual_layers(residual, self.num_layers, widths)
        self.backend = check_backend_name(backend)
        self.dropconnect = _check_dropconnect(dropconnect)
        self.zoneout = zoneout

    @property
    def zoneout(self):
        """The ``zoneout=`` argument: a float, or for LSTM a pair (p_h, p_c); validated when set."""
        return self.__dict__.get("_zoneout", 0.0)

    @zoneout.setter
    def zoneout(self, value) -> None:
        self.__dict__["_zoneout_p"] = _zoneout.check_zoneout(value, self._cell)
        self.__dict__["_zoneout"] = value

    @property
    def _zoned(self) -> bool:
        """Any state is zoned (in training and in evaluation alike)."""
        return self._zoneout_p != (0.0, 0.0)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.residual is not False:
            s += f", residual={self.residual}"
        if self.dropconnect:
            s += f", dropconnect={self.dropconnect}"
        if self._zoned:
            s += f", zoneout={self.zoneout}"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state.pop("_last_plan", None)  # caches: this process's dispatch decision, derived shapes
        state.pop("_flat_weight_shapes", None)
        return state

    def __setstate__(self, d):
        super().__setstate__(d)
        # A state without fusedrnn's extras (e.g. a torch.nn module's pickle loaded as this class) gets the defaults.
        self.__dict__.setdefault("residual", False)
        self.__dict__.setdefault("_residual_layers", ())
        self.__dict__.setdefault("backend", "auto")
        self.__dict__.setdefault("dropconnect", 0.0)
        self.__dict__.setdefault("_zoneout", 0.0)
        self.__dict__.setdefault("_zoneout_p", (0.0, 0.0))

    def _zero_states(self, batch: int, input: Tensor) -> tuple[Tensor, ...]:
        """Default hx: zeros (L*D, batch, P) (and c0 (L*D, batch, H) for LSTM) in the input's dtype/device."""
        D = 2 if self.bidirectional else 1
        P = self.proj_size if self.proj_size > 0 else self.hidden_size
        widths = (P, self.hidden_size) if self._cell == "lstm" else (P,)
        return tuple(
            torch.zeros(self.num_layers * D, batch, w, dtype=input.dtype, device=input.device) for w in widths
        )

    def _layer_weights(self, weights: list, layer: int, direction: int) -> list:
        D = 2 if self.bidirectional else 1
        per = len(weights) // (self.num_layers * D)
        start = (layer * D + direction) * per
        return weights[start : start + per]

    def _dropout_between_layers(self, output: Tensor, lengths: Tensor | None) -> Tensor:
        if lengths is None:
            return F.dropout(output, p=self.dropout, training=True)
        # torch drops out the packed data (valid steps only): same shape, same random draws.
        packed = torch.nn.utils.rnn.pack_padded_sequence(output, lengths, enforce_sorted=True)
        dropped = PackedSequence(F.dropout(packed.data, p=self.dropout, training=True), packed.batch_sizes)
        return torch.nn.utils.rnn.pad_packed_sequence(dropped, total_length=output.shape[0])[0]

    def forward(self, input, hx=None, *, lengths=None):
        if lengths is not None and isinstance(input, PackedSequence):
            raise ValueError("lengths: must be None for a PackedSequence input (its lengths are in its batch_sizes); "
                             "pass either a padded tensor with lengths= or a PackedSequence")
        plan = self._plan(input, hx, lengths)
        if (plan is not None and plan.on_torch and not self._residual_layers and lengths is None
                and not self._dropconnect_active() and not self._zoned):
            if hx is not None or isinstance(input, PackedSequence):
                self._checks_torch_skips(input, hx)
            return super().forward(input, hx)  # torch.nn.GRU/LSTM.forward: the stack exactly as torch runs it
        return self._forward(input, hx, plan, lengths)

    def _plan(self, input, hx, lengths=None) -> dispatch.StackPlan | None:
        """The backends of this call (fusedrnn.dispatch.plan_module), or None when the input is
        malformed (the checks of the full path then raise torch's error). On the CPU the plan
        depends only on the dtype, autocast, packing and the backend asked for, so the last one is
        kept on the module and reused while those stay the same: a T=1 streaming call then pays a
        few attribute reads and a tuple comparison, not a decision."""
        packed = isinstance(input, PackedSequence)
        x = input.data if packed else input
        if not isinstance(x, Tensor):
            return None
        has_lengths = packed or lengths is not None  # per-row lengths: packed, or padded with lengths=
        device_lengths = isinstance(lengths, Tensor) and _on_device(lengths)
        if x.is_cpu:
            key = (x.dtype, has_lengths, self.backend, dispatch.env_backend(), torch._C._is_any_autocast_enabled(),
                   device_lengths, self._zoneout_p)
            cached = self.__dict__.get("_last_plan")
            if cached is not None and cached[0] == key:
                plan = cached[1]
                # torch's op is what an exported graph holds too; torch.compile decides at trace time.
                if (plan.on_torch and not torch.compiler.is_compiling()) or not dispatch.tracing():
                    return plan
            if not dispatch.tracing():
                plan = self._plan_for(x.device, key[0], key[4], has_lengths, 0, 0, False, device_lengths)
                self.__dict__["_last_plan"] = (key, plan)
                return plan
        if x.dim() not in ((2,) if packed else (2, 3)):
            return None
        if x.is_cuda:
            return self._plan_gpu(x, input, hx, packed, has_lengths, device_lengths)
        return self._plan_for(x.device, x.dtype, torch._C._is_any_autocast_enabled(), has_lengths, 0, 0, False,
                              device_lengths)

    def _plan_gpu(self, x, input, hx, packed, has_lengths, device_lengths) -> dispatch.StackPlan:
        # The measured GPU choices depend on the shape and on whether a backward will run.
        if packed:
            T, B = input.batch_sizes.numel(), int(input.batch_sizes[0])
        elif x.dim() == 2:
            T, B = x.shape[0], 1
        else:
            T, B = (x.shape[1], x.shape[0]) if self.batch_first else (x.shape[0], x.shape[1])
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or any(w.requires_grad for w in self._flat_weights)
            or any(h.requires_grad for h in _as_tuple(hx))
        )
        return self._plan_for(x.device, x.dtype, torch._C._is_any_autocast_enabled(), has_lengths, T, B, needs_grad,
                              device_lengths)

    def _plan_for(self, device, dtype, autocast: bool, packed: bool, T: int, B: int, needs_grad: bool,
                  device_lengths: bool = False):
        if autocast:
            autocast_dtype = self._autocast_dtype_for(device.type, packed)
            if autocast_dtype is not None and autocast_dtype is not _INPUT_DTYPE:
                dtype = autocast_dtype
        return dispatch.plan_module(
            self.backend, self._cell, device, dtype, T, B, self.input_size, self.hidden_size, self.proj_size,
            self.num_layers, self.bidirectional, self._residual_layers, packed, needs_grad, device_lengths,
            self._zoned, self._layernorm,
        )

    def _checks_torch_skips(self, input, hx) -> None:
        """Before torch.nn's own forward runs the call: the checks fusedrnn makes that torch does not
        (hx dtype named in a ValueError; an LSTM's PackedSequence input width)."""
        data = input.data if isinstance(input, PackedSequence) else input
        if hx is not None and not _autocast_on(data.device.type):
            if self._cell == "lstm":
                _check_lstm_hx_pair(hx)
            _check_hx_dtype(data, _as_tuple(hx))
        if self._cell == "lstm" and isinstance(input, PackedSequence):
            self.check_input(data, input.batch_sizes)

    def _dropconnect_active(self) -> bool:
        return self.training and self.dropconnect > 0

    def _dropconnect(self, weights: list) -> list:
        """DropConnect on the recurrent weights, the one place it happens: in training with p > 0,
        each weight_hh (in _flat_weights_names order, one draw each from torch's generator) becomes
        weight_hh * (Bernoulli(1 - p) mask / (1 - p)), the same for every step and batch row of this
        call. Autograd of the multiply carries the gradient to the real parameter. Every backend
        then runs the transformed weights unchanged."""
        if not self._dropconnect_active():
            return weights
        keep = 1.0 - self.dropconnect
        out = list(weights)
        for i, name in enumerate(self._flat_weights_names):
            if name.startswith("weight_hh_l"):
                w = out[i]
                mask = torch.bernoulli(torch.full_like(w, keep, memory_format=torch.contiguous_format))
                out[i] = w * (mask / keep)
        return out

    def _check_weights(self, weights: list) -> None:
        """The flat weights still have the shapes torch.nn gave them (a replaced parameter could
        have another): torch's op would fail on them, so the planned backends must too."""
        for name, w, want in zip(self._flat_weights_names, weights, self._weight_shapes()):
            if w is None or w.shape != want:
                got = None if w is None else tuple(w.shape)
                raise RuntimeError(f"{self._cell.upper()}: parameter {name} has shape {got}, expected {want}")

    def _weight_shapes(self) -> tuple[tuple[int, ...], ...]:
        """The shape of each flat weight, in _flat_weights_names order (computed once per module)."""
        shapes = self.__dict__.get("_flat_weight_shapes")
        if shapes is None:
            D = 2 if self.bidirectional else 1
            G = CELLS[self._cell] * self.hidden_size
            P = self.proj_size if self.proj_size > 0 else self.hidden_size
            kinds = {"weight_hh": (G, P), "bias_ih": (G,), "bias_hh": (G,), "weight_hr": (P, self.hidden_size)}
            shapes = []
            for name in self._flat_weights_names:
                kind, layer = name.split("_l")[0], int(name.split("_l")[1].split("_")[0])
                shapes.append((G, self.input_size if layer == 0 else D * P) if kind == "weight_ih" else kinds[kind])
            shapes = tuple(shapes)
            self.__dict__["_flat_weight_shapes"] = shapes
        return shapes

    def _norm_weights(self) -> list | None:
        """Each layer-direction's fusedrnn.layernorm.LayerNorm (index layer * D + direction), or None
        for the cells without LayerNorm."""
        return None

    def _run_stack(self, x: Tensor, states: tuple[Tensor, ...], lengths: Tensor | None, weights: list,
                   plan: dispatch.StackPlan, sorted_lengths: bool = True, norms: list | None = None):
        """x (T, B, I) time-major; states: (h0,) or (h0, c0), each (L*D, B, .); weights: the flat list
        in torch's order (passed in, never swapped on self, so concurrent calls cannot see each
        other's casts); norms: _norm_weights() (cast likewise) or None. Each layer-direction runs on
        its planned backend. -> y, final states.
        ``sorted_lengths``: lengths come from a PackedSequence (sorted, on the CPU), so inter-layer
        dropout can draw exactly as torch does on packed data; otherwise (lengths=) it draws over
        the padded output, whose padding is zero and stays zero."""
        D = 2 if self.bidirectional else 1
        finals: list[list[Tensor]] = [[] for _ in states]
        P = self.proj_size if self.proj_size > 0 else self.hidden_size
        zoneouts = self._zoneouts(x.device)
        layer_input = x
        for layer in range(self.num_layers):
            residual = layer_input if layer in self._residual_layers else None
            outputs = []
            for direction in range(D):
                idx = layer * D + direction
                backend = plan.backends[idx]
                w = self._layer_weights(weights, layer, direction)
                w_ih, w_hh = w[0], w[1]
                b_ih, b_hh = (w[2], w[3]) if self.bias else (None, None)
                res = None if residual is None else residual[..., direction * P : (direction + 1) * P]
                ln = None if norms is None else norms[idx]
                if self._cell != "lstm":  # gru, rnn_tanh, rnn_relu: one state
                    y, h_n = getattr(backend, self._cell)(layer_input, states[0][idx], w_ih, w_hh, b_ih, b_hh, res,
                                                          lengths, direction == 1, zoneouts[idx], ln)
                    new_states = (h_n,)
                else:
                    w_hr = w[-1] if self.proj_size > 0 else None
                    y, h_n, c_n = backend.lstm(layer_input, states[0][idx], states[1][idx], w_ih, w_hh, b_ih, b_hh,
                                               w_hr, res, lengths, direction == 1, zoneouts[idx], ln)
                    new_states = (h_n, c_n)
                outputs.append(y)
                for acc, s in zip(finals, new_states):
                    acc.append(s)
            output = outputs[0] if D == 1 else torch.cat(outputs, dim=-1)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                output = self._dropout_between_layers(output, lengths if sorted_lengths else None)
            layer_input = output
        return layer_input, tuple(torch.stack(acc, 0) for acc in finals)

    def _zoneouts(self, device) -> list:
        """Each layer-direction's zoneout for this call (None without zoneout): in training with
        seeds from one draw of torch's generator of ``device`` (fusedrnn.zoneout.draw_seeds), in
        evaluation without (m = p)."""
        n = self.num_layers * (2 if self.bidirectional else 1)
        if not self._zoned:
            return [None] * n
        p_h, p_c = self._zoneout_p
        if not self.training:
            return [_zoneout.Zoneout(p_h, p_c)] * n
        seeds = _zoneout.draw_seeds(n, device)
        return [_zoneout.Zoneout(p_h, p_c, seeds[i]) for i in range(n)]

    def _run_torch_layers(self, x: Tensor, batch_sizes: Tensor | None, states: tuple[Tensor, ...], weights: list):
        """Every layer on torch's op (both directions in one call, as torch.nn runs a layer), with
        the residual adds between layers: the stack a user would write from torch.nn layers. x is
        dense in the module's layout or packed data; -> output in the same layout, final states."""
        D = 2 if self.bidirectional else 1
        per_layer = len(weights) // self.num_layers
        finals: list[list[Tensor]] = [[] for _ in states]
        layer_input = x
        for layer in range(self.num_layers):
            hx = tuple(s[layer * D : (layer + 1) * D] for s in states)
            params = weights[layer * per_layer : (layer + 1) * per_layer]
            output, layer_finals = native.layer(self._cell, layer_input, batch_sizes, hx, params, self.bias,
                                                self.bidirectional, self.batch_first)
            if layer in self._residual_layers:
                output = output + layer_input
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                output = F.dropout(output, p=self.dropout, training=True)
            for acc, s in zip(finals, layer_finals):
                acc.append(s)
            layer_input = output
        return layer_input, tuple(torch.cat(acc, 0) for acc in finals)

    def _compute(self, input: Tensor, hx: tuple[Tensor, ...], batch_sizes: Tensor | None, plan: dispatch.StackPlan,
                 lengths: Tensor | None = None):
        """Replaces torch's _VF call: input is (T,B,I)/(B,T,I) dense or packed data (N, I); ``lengths``
        (dense input only): each row's valid length (forward's lengths=)."""
        if batch_sizes is None and input.size(0 if not self.batch_first else 1) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        if lengths is not None:
            T, B = (input.size(1), input.size(0)) if self.batch_first else (input.size(0), input.size(1))
            lengths = check_lengths(lengths, T, B)
        weights = self._flat_weights
        norms = self._norm_weights()
        _check_devices(input, hx, weights if norms is None else
                       list(weights) + [t for n in norms for t in n.tensors() if t is not None])
        self._check_weights(weights)
        weights = self._dropconnect(weights)
        if batch_sizes is not None:
            _check_batch_sizes(batch_sizes)
        dtype = self._autocast_dtype(input, packed=batch_sizes is not None or lengths is not None)
        # Autocast is handled here once, as torch's RNN ops do; inside, the stack runs in `dtype`.
        with torch.autocast(input.device.type, enabled=False) if dtype is not None else contextlib.nullcontext():
            if dtype is not None:
                input, hx, weights = input.to(dtype), tuple(h.to(dtype) for h in hx), [w.to(dtype) for w in weights]
                norms = None if norms is None else [n.to(dtype) for n in norms]  # cast with the weights
            if lengths is not None:
                return self._compute_padded(input, hx, lengths, weights, plan, norms)
            if plan.on_torch:
                return self._run_torch_layers(input, batch_sizes, hx, weights)
            if batch_sizes is None:
                x, lengths = (input.transpose(0, 1) if self.batch_first else input), None
            else:
                # Packed data -> time-major padded (T, B, I) in the packed (sorted) order, with lengths.
                x, lengths = torch.nn.utils.rnn.pad_packed_sequence(PackedSequence(input, batch_sizes))
            y, finals = self._run_stack(x, hx, lengths, weights, plan, norms=norms)
        if batch_sizes is None:
            return (y.transpose(0, 1) if self.batch_first else y), finals
        return torch.nn.utils.rnn.pack_padded_sequence(y, lengths, enforce_sorted=True).data, finals

    def _compute_padded(self, input: Tensor, hx: tuple[Tensor, ...], lengths: Tensor, weights: list,
                        plan: dispatch.StackPlan, norms: list | None = None):
        """Dense input with per-row ``lengths`` (int64, validated). On torch's op throughout: packed
        as pack_padded_sequence(enforce_sorted=False) would (torch's op needs lengths on the CPU,
        which the plan guarantees), run, unpacked with total_length=T. Otherwise the planned
        backends take the padded sequence and the lengths as they are: nothing is packed or sorted,
        and lengths go to the input's device without a synchronisation."""
        T = input.size(1 if self.batch_first else 0)
        if plan.on_torch:
            packed = torch.nn.utils.rnn.pack_padded_sequence(input, lengths, batch_first=self.batch_first,
                                                             enforce_sorted=False)
            order, unorder = packed.sorted_indices, packed.unsorted_indices
            data, finals = self._run_torch_layers(packed.data, packed.batch_sizes,
                                                  tuple(h.index_select(1, order) for h in hx), weights)
            y = torch.nn.utils.rnn.pad_packed_sequence(
                PackedSequence(data, packed.batch_sizes, order, unorder), batch_first=self.batch_first, total_length=T
            )[0]
            return y, tuple(h.index_select(1, unorder) for h in finals)
        x = input.transpose(0, 1) if self.batch_first else input
        if not any(b.name == "torch" for b in plan.backends):  # torch's op (mixed stacks) reads them on the CPU
            lengths = lengths.to(x.device, non_blocking=True)
        y, finals = self._run_stack(x, hx, lengths, weights, plan, sorted_lengths=False, norms=norms)
        return (y.transpose(0, 1) if self.batch_first else y), finals

    def _autocast_dtype(self, x: Tensor, packed: bool):
        """The dtype torch's RNN op would run in under autocast, or None when autocast is off."""
        dtype = self._autocast_dtype_for(x.device.type, packed)
        return x.dtype if dtype is _INPUT_DTYPE else dtype

    def _autocast_dtype_for(self, device_type: str, packed: bool):
        """Under autocast, torch's RNN ops run: CUDA: float16 for everything (cuDNN's policy, even
        when bf16 was asked); CPU: LSTM in the autocast dtype, except packed input, which torch
        leaves alone; RNN (tanh/relu) in the autocast dtype, packed or not; GRU in the input's dtype
        (_INPUT_DTYPE). None when autocast is off."""
        if not _autocast_on(device_type):
            return None
        if device_type == "cuda":
            return torch.float16
        if device_type == "cpu" and ((self._cell == "lstm" and not packed) or self._cell in ("rnn_tanh", "rnn_relu")):
            return torch.get_autocast_dtype("cpu")
        return _INPUT_DTYPE

    def _forward_one_state(self, input, hx, plan, lengths=None):
        """GRU and RNN: mirrors torch.nn.GRU.forward / torch.nn.RNN.forward (the same code but for
        the message naming the module); the _VF call is replaced."""
        self._update_flat_weights()
        orig_input = input
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            max_batch_size = int(batch_sizes[0])
            if hx is None:
                (hx,) = self._zero_states(max_batch_size, input)
            else:
                hx = self.permute_hidden(hx, sorted_indices)
        else:
            batch_sizes = None
            if input.dim() not in (2, 3):
                raise ValueError(self._input_dim_error.format(input.dim()))
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
                if hx is not None:
                    if hx.dim() != 2:
                        raise RuntimeError(
                            f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor"
                        )
                    hx = hx.unsqueeze(1)
            else:
                if hx is not None and hx.dim() != 3:
                    raise RuntimeError(
                        f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor"
                    )
            max_batch_size = input.size(0) if self.batch_first else input.size(1)
            sorted_indices = None
            unsorted_indices = None
            if hx is None:
                (hx,) = self._zero_states(max_batch_size, input)
            else:
                hx = self.permute_hidden(hx, sorted_indices)
        self.check_forward_args(input, hx, batch_sizes)
        if not _autocast_on(input.device.type):
            _check_hx_dtype(input, (hx,))
        output, (hidden,) = self._compute(input, (hx,), batch_sizes, plan, lengths)
        if isinstance(orig_input, PackedSequence):
            output_packed = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
            return output_packed, self.permute_hidden(hidden, unsorted_indices)
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = hidden.squeeze(1)
        return output, self.permute_hidden(hidden, unsorted_indices)


_INPUT_DTYPE = object()  # "the input's own dtype", from _autocast_dtype_for


def _as_tuple(hx) -> tuple:
    if hx is None:
        return ()
    return tuple(hx) if isinstance(hx, (tuple, list)) else (hx,)


def _check_batch_sizes(batch_sizes: Tensor) -> None:
    """A PackedSequence's batch sizes (on the CPU, as torch keeps them): positive, non-increasing."""
    if batch_sizes.dim() != 1 or batch_sizes.device.type != "cpu" or batch_sizes.dtype != torch.int64:
        raise ValueError(f"PackedSequence.batch_sizes: expected a 1-D int64 CPU tensor, got "
                         f"{batch_sizes.dim()}-D {batch_sizes.dtype} on {batch_sizes.device}")
    if batch_sizes.numel() and (int(batch_sizes[-1]) < 1 or bool((batch_sizes[1:] > batch_sizes[:-1]).any())):
        raise ValueError("PackedSequence.batch_sizes: expected positive, non-increasing batch sizes, got "
                         f"{batch_sizes.tolist()}")


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # device types without autocast (meta, ...)
        return False


def _check_devices(x: Tensor, hx, weights) -> None:
    # torch's messages (ATen RNN.cpp check_attributes).
    for w in weights:
        if w.device != x.device:
            raise RuntimeError(
                "Input and parameter tensors are not at the same device, found input tensor at "
                f"{x.device} and parameter tensor at {w.device}"
            )
    for h in hx:
        if h.device != x.device:
            raise RuntimeError(
                "Input and hidden tensors are not at the same device, found input tensor at "
                f"{x.device} and hidden tensor at {h.device}"
            )


def _check_lstm_hx_pair(hx) -> None:
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise RuntimeError("lstm expects two hidden states")


def _check_hx_dtype(input: Tensor, hx: tuple[Tensor, ...]) -> None:
    names = ("hx",) if len(hx) == 1 else ("hx[0]", "hx[1]")
    for name, h in zip(names, hx):
        if h.dtype != input.dtype:
            raise ValueError(f"{name}: expected dtype {input.dtype} (the dtype of input), got {h.dtype}")


class GRU(_FusedRNNMixin, torch.nn.GRU):
    __doc__ = (
        "Drop-in torch.nn.GRU running on fusedrnn's fused kernels.\n\n"
        "Same arguments, parameters, state_dict, outputs and errors as torch.nn.GRU, plus keyword-only\n"
        "``residual`` (False | True | first layer index), ``backend``, ``dropconnect`` and ``zoneout``\n"
        "(see fusedrnn.modules).\n"
    )
    _cell = "gru"
    _input_dim_error = "GRU: Expected input to be 2D or 3D, got {}D instead"  # torch's message

    def _forward(self, input, hx, plan, lengths=None):
        return self._forward_one_state(input, hx, plan, lengths)


class LSTM(_FusedRNNMixin, torch.nn.LSTM):
    __doc__ = (
        "Drop-in torch.nn.LSTM running on fusedrnn's fused kernels.\n\n"
        "Same arguments (proj_size included), parameters, state_dict, outputs and errors as\n"
        "torch.nn.LSTM, plus keyword-only ``residual``, ``backend``, ``dropconnect`` and ``zoneout``\n"
        "(a float, or a pair (p_h, p_c); see fusedrnn.modules).\n"
        "Unlike torch, PackedSequence input is checked against input_size.\n"
    )
    _cell = "lstm"

    def _forward(self, input, hx, plan, lengths=None):  # mirrors torch.nn.LSTM.forward; the _VF call is replaced
        self._update_flat_weights()
        orig_input = input
        batch_sizes = None
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            max_batch_size = int(batch_sizes[0])
            if hx is None:
                hx = self._zero_states(max_batch_size, input)
            else:
                _check_lstm_hx_pair(hx)
                hx = self.permute_hidden(hx, sorted_indices)
            # torch skips this check for packed input and computes garbage; fusedrnn checks.
            self.check_forward_args(input, hx, batch_sizes)
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            max_batch_size = input.size(0) if self.batch_first else input.size(1)
            sorted_indices = None
            unsorted_indices = None
            if hx is None:
                hx = self._zero_states(max_batch_size, input)
                self.check_forward_args(input, hx, batch_sizes)
            else:
                _check_lstm_hx_pair(hx)
                if is_batched:
                    if hx[0].dim() != 3 or hx[1].dim() != 3:
                        raise RuntimeError(
                            "For batched 3-D input, hx and cx should "
                            f"also be 3-D but got ({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                        )
                else:
                    if hx[0].dim() != 2 or hx[1].dim() != 2:
                        raise RuntimeError(
                            "For unbatched 2-D input, hx and cx should "
                            f"also be 2-D but got ({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                        )
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
                self.check_forward_args(input, hx, batch_sizes)
                hx = self.permute_hidden(hx, sorted_indices)
        if not _autocast_on(input.device.type):
            _check_hx_dtype(input, tuple(hx))
        output, hidden = self._compute(input, tuple(hx), batch_sizes, plan, lengths)
        if isinstance(orig_input, PackedSequence):
            output_packed = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
            return output_packed, self.permute_hidden(hidden, unsorted_indices)
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1))
        return output, self.permute_hidden(hidden, unsorted_indices)


class RNN(_FusedRNNMixin, torch.nn.RNN):
    __doc__ = (
        "Drop-in torch.nn.RNN (the Elman RNN, nonlinearity 'tanh' or 'relu') running on fusedrnn's\n"
        "fused kernels.\n\n"
        "Same arguments, parameters, state_dict, outputs and errors as torch.nn.RNN, plus keyword-only\n"
        "``residual``, ``backend``, ``dropconnect`` and ``zoneout`` (see fusedrnn.modules). The cell is torch's\n"
        "mode: rnn_tanh or rnn_relu (fusedrnn.functional.rnn_tanh / rnn_relu).\n"
    )
    _input_dim_error = "RNN: Expected input to be 2D or 3D, got {}D tensor instead"  # torch's message

    @property
    def _cell(self) -> str:
        return self.mode.lower()  # "RNN_TANH" -> "rnn_tanh": what torch.nn.RNN.forward runs

    def _forward(self, input, hx, plan, lengths=None):
        return self._forward_one_state(input, hx, plan, lengths)


class _LayerNormMixin:
    """LayerNormLSTM / LayerNormGRU on top of fusedrnn.LSTM / GRU: the LayerNorm parameters
    (registered after torch's, which stay torch's: _flat_weights is torch's four per
    layer-direction), their initialisation, and each call's fusedrnn.layernorm.LayerNorm per
    layer-direction. Everything else (arguments, checks, packing, lengths=, residual, dropconnect,
    zoneout, autocast) is the plain module's; the plan asks for backends that run LayerNorm, so
    torch.nn's own forward never runs."""

    _layernorm = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.proj_size > 0:
            raise ValueError(f"{type(self).__name__}: proj_size={self.proj_size} is not supported (proj_size must "
                             "be 0: the layer-normalised LSTM has no projection)")
        G = CELLS[self._cell] * self.hidden_size
        like = self.weight_ih_l0
        for names in self._layernorm_names():
            for name in names:
                width = self.hidden_size if name.startswith("layernorm_c_") else G
                fill = torch.ones if "_weight_" in name else torch.zeros
                setattr(self, name, torch.nn.Parameter(fill(width, device=like.device, dtype=like.dtype)))

    def _layernorm_names(self) -> list[tuple[str, ...]]:
        """Per layer-direction (index layer * D + direction): the LayerNorm parameters' names in
        fusedrnn.layernorm.LayerNorm's field order."""
        kinds = ("ih", "hh", "c") if self._cell == "lstm" else ("ih", "hh")
        return [tuple(f"layernorm_{k}_{p}_l{layer}{'_reverse' if d else ''}" for k in kinds for p in ("weight", "bias"))
                for layer in range(self.num_layers) for d in range(2 if self.bidirectional else 1)]

    def reset_parameters(self) -> None:
        """torch's initialisation (uniform over every parameter), then the LayerNorm parameters to
        gamma = 1, beta = 0. (Within torch's constructor the LayerNorm parameters do not exist yet:
        torch's four get exactly the values torch.nn gives them under the same seed.)"""
        super().reset_parameters()
        with torch.no_grad():
            for names in self._layernorm_names():
                for name in names:
                    p = self._parameters.get(name)
                    if p is not None:
                        p.fill_(1.0 if "_weight_" in name else 0.0)

    def _norm_weights(self) -> list[LayerNorm]:
        G = CELLS[self._cell] * self.hidden_size
        out = []
        for names in self._layernorm_names():
            tensors = [getattr(self, name) for name in names]
            for name, t in zip(names, tensors):
                want = (self.hidden_size if name.startswith("layernorm_c_") else G,)
                if t is None or t.shape != want:
                    got = None if t is None else tuple(t.shape)
                    raise RuntimeError(f"{type(self).__name__}: parameter {name} has shape {got}, expected {want}")
            out.append(LayerNorm(*tensors))
        return out


_LAYERNORM_DOC = """

With LN(v) = (v - mean(v)) / sqrt(var(v) + 1e-5) * gamma + beta over the whole vector (biased
variance), Ba et al. 2016 (fusedrnn/layernorm.py):
{formulas}
Parameters per layer k and direction (suffix "" or "_reverse"): torch's weight_ih_l{{k}}, weight_hh_l{{k}},
bias_ih_l{{k}}, bias_hh_l{{k}} (same names, shapes and initialisation: load_state_dict(torch_module.state_dict(),
strict=False) fills them and reports exactly the LayerNorm parameters missing), plus
layernorm_ih_weight_l{{k}}, layernorm_ih_bias_l{{k}}, layernorm_hh_weight_l{{k}}, layernorm_hh_bias_l{{k}}
(gamma / beta of LN_ih and LN_hh, shape ({gates}*hidden_size,)){c_params}; every gamma is initialised
to 1, every beta to 0. With bias=False, b_ih and b_hh are absent (as in torch) but the LayerNorm
gammas and betas stay. proj_size is not supported (ValueError).

Runs on the reference backend and on the Triton kernels (LN_hh and LN_c fused in the step; torch's
RNN op has no LayerNorm and the CUDA kernels none yet: backend="torch" / "cuda" raise a ValueError
naming layernorm).
fusedrnn.convert leaves these modules alone; fusedrnn.unconvert refuses them (torch.nn cannot
express LayerNorm).
"""


class LayerNormLSTM(_LayerNormMixin, LSTM):
    __doc__ = (
        "Layer-normalised LSTM: torch.nn.LSTM's constructor arguments (no proj_size) and forward, plus\n"
        "fusedrnn.LSTM's keyword-only residual, backend, dropconnect and zoneout." + _LAYERNORM_DOC.format(
            formulas=(
                "    a_t = LN_ih(x_t W_ihᵀ) + LN_hh(h_{t-1} W_hhᵀ) + b_ih + b_hh    (gate order i, f, g, o)\n"
                "    c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g)    (carried as it is, returned as c_n)\n"
                "    h_t = sigmoid(o) tanh(LN_c(c_t))\n"),
            gates=4,
            c_params=",\nand layernorm_c_weight_l{k}, layernorm_c_bias_l{k} (LN_c, shape (hidden_size,))")
    )


class LayerNormGRU(_LayerNormMixin, GRU):
    __doc__ = (
        "Layer-normalised GRU: torch.nn.GRU's constructor arguments and forward, plus fusedrnn.GRU's\n"
        "keyword-only residual, backend, dropconnect and zoneout." + _LAYERNORM_DOC.format(
            formulas=(
                "    gi = LN_ih(x_t W_ihᵀ) + b_ih,  gh = LN_hh(h_{t-1} W_hhᵀ) + b_hh\n"
                "    r = sigmoid(gi_r + gh_r), z = sigmoid(gi_z + gh_z), n = tanh(gi_n + r * gh_n)\n"
                "    h_t = (1 - z) n + z h_{t-1}\n"),
            gates=3, c_params="")
    )


_LAYERNORM_CLASSES = (LayerNormGRU, LayerNormLSTM)
_TWINS = {torch.nn.GRU: GRU, torch.nn.LSTM: LSTM, torch.nn.RNN: RNN}
_TORCH_OF = {GRU: torch.nn.GRU, LSTM: torch.nn.LSTM, RNN: torch.nn.RNN}
# What fusedrnn's modules keep on top of torch.nn's state (options and per-process caches).
_EXTRAS = ("residual", "_residual_layers", "backend", "dropconnect", "_zoneout", "_zoneout_p", "_last_plan",
           "_flat_weight_shapes")


def _path(name: str) -> str:
    return repr(name) if name else "the model itself"


def _left_alone(module: torch.nn.Module) -> str | None:
    """Why convert leaves this recurrent torch module as it is, or None (not recurrent, or converted)."""
    from torch.nn.utils import parametrize

    if type(module) in _TWINS or isinstance(module, (GRU, LSTM, RNN)):
        return None  # converted; or already fusedrnn's, and converting again changes nothing
    base = next((cls for cls in _TWINS if isinstance(module, cls)), None)
    if base is not None:
        if parametrize.is_parametrized(module):
            return (f"a parametrized torch.nn.{module._get_name().removeprefix('Parametrized')} "
                    "(converting would drop its parametrizations)")
        return f"a subclass of torch.nn.{base.__name__} (its own forward would be replaced)"
    if isinstance(module, torch.nn.RNNBase):
        return "a recurrent module fusedrnn has no twin for"
    if isinstance(module, torch.nn.RNNCellBase):
        return "a single-step cell (fusedrnn converts whole-sequence GRU/LSTM/RNN modules)"
    return None


def convert(model: torch.nn.Module, strict: bool = False) -> torch.nn.Module:
    """Turn every torch.nn.GRU / torch.nn.LSTM / torch.nn.RNN in ``model`` (or ``model`` itself) into
    its fusedrnn twin, in place, and return the model.

    The module object stays the same and only its class changes, so everything it holds is kept:
    the Parameter objects (optimizers holding them keep working), device, dtype, training mode,
    hooks, extra attributes, weight_norm, and sharing (a module used twice stays one module). No
    random numbers are drawn. Modules already converted are left as they are, so converting twice
    changes nothing and says nothing.

    Every other recurrent torch module is left as it is, with a warning naming its path in the
    model and why: single-step cells, subclasses of torch's GRU/LSTM/RNN (their own forward),
    other torch.nn.RNNBase modules and parametrized modules (torch.nn.utils.parametrize; converting
    would drop the parametrizations). With ``strict=True`` those raise one ValueError naming them
    all instead, and nothing is converted.
    """
    left = [(f"{_path(name)} ({type(module).__name__})", why) for name, module in model.named_modules()
            if (why := _left_alone(module)) is not None]
    if left and strict:
        raise ValueError("fusedrnn.convert(strict=True): cannot convert "
                         + "; ".join(f"{n}: {why}" for n, why in left))
    for module in list(model.modules()):
        cls = type(module)
        if cls in _TWINS:
            module.__class__ = _TWINS[cls]
            module._init_extras(False, "auto")
    for name, why in left:
        warnings.warn(f"fusedrnn.convert: left {name} unconverted: {why}", stacklevel=2)
    return model


def unconvert(model: torch.nn.Module) -> torch.nn.Module:
    """The inverse of convert: turn every fusedrnn.GRU / fusedrnn.LSTM / fusedrnn.RNN in ``model`` (or
    ``model`` itself) back into exactly torch.nn.GRU / torch.nn.LSTM / torch.nn.RNN, in place, and
    return the model.

    The module objects and their Parameter objects stay the same (optimizers keep working); the
    outputs are torch.nn's, which are fusedrnn's own bit for bit wherever fusedrnn runs torch's op
    (the CPU default). ``backend`` is dropped: it chooses where the same function runs, not what it
    computes. The result pickles and exports as plain torch.nn, so checkpoints load without
    fusedrnn installed; ``convert`` turns it back.

    Options torch.nn cannot express (a residual add on some layer, dropconnect > 0, zoneout > 0, the
    layer-normalised LayerNormLSTM / LayerNormGRU) raise a ValueError naming each such module's
    path in the model and the option; every module is checked before any is changed, so on an
    error nothing is. Subclasses of fusedrnn's modules (their own code) and
    parametrized ones raise as well.
    """
    from torch.nn.utils import parametrize

    swaps, problems = [], []
    for name, module in model.named_modules():
        if not isinstance(module, (GRU, LSTM, RNN)):
            continue
        cls = type(module)
        if cls in _LAYERNORM_CLASSES:
            problems.append(f"{_path(name)} is a fusedrnn.{cls.__name__} (layer-normalised cells), which "
                            f"torch.nn.{next(c.__name__ for c in _TORCH_OF if isinstance(module, c))} cannot express")
        elif cls not in _TORCH_OF:
            why = ("parametrized (remove the parametrization first: torch.nn.utils.parametrize."
                   "remove_parametrizations)" if parametrize.is_parametrized(module)
                   else f"a subclass {cls.__qualname__} of "
                   f"fusedrnn.{next(c.__name__ for c in _TORCH_OF if isinstance(module, c))} (its own code "
                   "would be dropped)")
            problems.append(f"{_path(name)} is {why}")
        elif module._residual_layers:
            problems.append(f"{_path(name)} has residual={module.residual!r} (residual adds on layers "
                            f"{list(module._residual_layers)}), which torch.nn.{cls.__name__} cannot express")
        elif module.dropconnect > 0:
            problems.append(f"{_path(name)} has dropconnect={module.dropconnect!r} (a random mask on weight_hh "
                            f"in training), which torch.nn.{cls.__name__} cannot express")
        elif module._zoned:
            problems.append(f"{_path(name)} has zoneout={module.zoneout!r} (zoned states in training and "
                            f"evaluation), which torch.nn.{cls.__name__} cannot express")
        else:
            swaps.append(module)
    if problems:
        raise ValueError("fusedrnn.unconvert: nothing was changed: " + "; ".join(problems))
    for module in swaps:
        module.__class__ = _TORCH_OF[type(module)]
        for key in _EXTRAS:
            module.__dict__.pop(key, None)
    return model
