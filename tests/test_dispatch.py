"""Dispatch (fusedrnn/dispatch.py): which backend runs a call, and why.

The GPU rules (validation gate, measured table, cudnn.benchmark timing) are checked here without a
GPU: the specs name a CUDA device, the backends' own reasons and the device family are replaced by
fakes, and the records are synthetic files in a temporary directory.
"""

from __future__ import annotations

import json
import logging
import warnings

import pytest
import torch

import fusedrnn
from fusedrnn import backends, dispatch, evidence
from fusedrnn.backends import CallSpec

GPU = torch.device("cuda", 0)


def spec(cell="gru", dtype=torch.bfloat16, device=GPU, H=256, B=16, T=64, needs_grad=False) -> CallSpec:
    return CallSpec(cell, device, dtype, T, B, H, H, H, False, False, False, False, needs_grad=needs_grad)


@pytest.fixture(autouse=True)
def fresh_caches():
    dispatch.clear_caches()
    yield
    dispatch.clear_caches()


class FakeBackend(backends.Backend):
    def __init__(self, name):
        self.name, self.description = name, f"fake {name}"

    def reasons(self, spec, forced):
        return []


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """Every backend serves every call; the GPU is an sm_90; the records live in tmp_path; the
    installed kernels have the fingerprints 'cu-1' / 'tr-1'; Triton is 3.6."""
    fakes = {n: FakeBackend(n) for n in backends.NAMES}
    monkeypatch.setattr(dispatch, "BACKENDS", fakes)
    monkeypatch.setattr(evidence, "RECORDS_DIR", tmp_path)
    monkeypatch.setattr(evidence, "device_family", lambda device: "sm_90")
    monkeypatch.setattr(evidence, "kernel_fingerprint", lambda b: {"cuda": "cu-1", "triton": "tr-1"}[b])
    monkeypatch.setattr(evidence, "_triton_minor", lambda: "3.6")
    monkeypatch.setattr(dispatch, "cuda_matmul_allows_tf32", lambda: False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    return tmp_path


def write_validated(dir_, *records):
    (dir_ / evidence.VALIDATED_FILE).write_text(json.dumps({"format": 1, "records": list(records)}))
    dispatch.clear_caches()


def record(backend="cuda", family="sm_90", fingerprint="cu-1", passed=None, **extra):
    return {"backend": backend, "family": family, "fingerprint": fingerprint, "triton_minor": "3.6",
            "commit": "abc", "passed": passed or {"gru": ["bfloat16"], "lstm": []}, **extra}


# ----------------------------------------------------------------------------- CPU rules


def test_auto_on_cpu_picks_torch_for_fp32_and_reference_for_half(caplog):
    p32 = spec(dtype=torch.float32, device=torch.device("cpu"))
    p16 = spec(dtype=torch.float16, device=torch.device("cpu"))
    with caplog.at_level(logging.DEBUG, logger="fusedrnn"):
        assert dispatch.choose("auto", p32).name == "torch"
        assert dispatch.choose("auto", p16).name == "reference"
    skipped = [r.getMessage() for r in caplog.records if "skipping backend" in r.getMessage()]
    assert any("'cuda'" in m for m in skipped) and any("'triton'" in m for m in skipped)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="fusedrnn"):
        dispatch.choose("auto", p32)
        dispatch.choose("auto", p16)
    assert not [r for r in caplog.records if "skipping backend" in r.getMessage()], "logged once, not per call"


def test_forced_backend_that_cannot_serve_raises_with_reasons():
    p = spec("lstm", torch.float16, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"backend 'torch' cannot run this LSTM call: dtype=torch.float16"):
        dispatch.choose("torch", p)
    with pytest.raises(ValueError, match=r"backend 'cuda' cannot run"):
        dispatch.choose("cuda", p)


def test_env_var_overrides_default(monkeypatch):
    p = spec(dtype=torch.float32, device=torch.device("cpu"))
    monkeypatch.setenv("FUSEDRNN_BACKEND", "reference")
    assert dispatch.choose("auto", p).name == "reference"
    assert dispatch.choose("torch", p).name == "torch"  # an explicit choice wins over the env var
    monkeypatch.setenv("FUSEDRNN_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="FUSEDRNN_BACKEND='nonsense'"):
        dispatch.choose("auto", p)


# ----------------------------------------------------------------------------- the validation gate


def test_gate_without_records_uses_torch(fake_gpu):
    for cell in ("gru", "lstm"):
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            assert dispatch.choose("auto", spec(cell, dtype)).name == "torch"
    assert "no GPU run has validated the cuda kernels on sm_90" in dispatch.gate_reasons("cuda", spec())[0]


def test_gate_opens_only_for_what_was_validated(fake_gpu):
    write_validated(fake_gpu, record("cuda", passed={"gru": ["bfloat16"], "lstm": []}))
    # no dispatch table: a validated fused backend is a candidate, but only a measurement makes
    # auto leave cuDNN; cudnn.benchmark timing is one such measurement.
    assert dispatch.choose("auto", spec("gru", torch.bfloat16)).name == "torch"
    assert dispatch.gate_reasons("cuda", spec("gru", torch.bfloat16)) == []
    assert "not GRU float16" in dispatch.gate_reasons("cuda", spec("gru", torch.float16))[0]
    assert "not LSTM bfloat16" in dispatch.gate_reasons("cuda", spec("lstm", torch.bfloat16))[0]
    assert dispatch.gate_reasons("triton", spec("gru", torch.bfloat16))  # another backend's record is not its own
    assert dispatch.gate_reasons("cuda", spec("gru", torch.bfloat16, device=torch.device("cpu"))) == []


def test_gate_needs_the_same_family_kernels_and_triton_version(fake_gpu, monkeypatch):
    write_validated(fake_gpu, record("cuda", family="sm_80"))
    assert "on sm_90" in dispatch.gate_reasons("cuda", spec())[0]
    write_validated(fake_gpu, record("cuda", fingerprint="cu-0", commit="old"))
    assert "kernel sources cu-0 (commit old), but this installation's are cu-1" in dispatch.gate_reasons("cuda", spec())[0]
    write_validated(fake_gpu, record("triton", fingerprint="tr-1"))
    assert dispatch.gate_reasons("triton", spec()) == []
    monkeypatch.setattr(evidence, "_triton_minor", lambda: "3.8")
    dispatch.clear_caches()
    assert "another Triton version" in dispatch.gate_reasons("triton", spec())[0]


def write_table(dir_, rows, fingerprints=None):
    data = {"format": 1, "family": "sm_90", "provenance": {"gpu": "fake", "fingerprints": fingerprints or
                                                           {"cuda": "cu-1", "triton": "tr-1"}}, "rows": rows}
    (dir_ / "dispatch_sm_90.json").write_text(json.dumps(data))
    dispatch.clear_caches()


def row(cell="gru", dtype="bfloat16", mode="inference", H=(129, 512), B=(1, 32), ms=None):
    return {"cell": cell, "dtype": dtype, "mode": mode, "H": list(H), "B": list(B), "T": None,
            "ms": ms or {"torch": 1.0, "cuda": 0.4, "triton": 0.6}}


def test_table_picks_the_fastest_validated_candidate(fake_gpu):
    write_validated(fake_gpu, record("cuda", passed={"gru": ["bfloat16"], "lstm": ["bfloat16"]}),
                    record("triton", fingerprint="tr-1", passed={"gru": ["bfloat16", "float16"], "lstm": []}))
    write_table(fake_gpu, [row(), row(dtype="float16"), row(mode="training", ms={"torch": 1.0, "cuda": 1.5, "triton": 1.2}),
                           row(cell="lstm", ms={"torch": 1.0, "triton": 0.1})])
    assert dispatch.choose("auto", spec("gru", torch.bfloat16)).name == "cuda"
    assert dispatch.choose("auto", spec("gru", torch.float16)).name == "triton"  # cuda not validated for fp16
    assert dispatch.choose("auto", spec("gru", torch.bfloat16, needs_grad=True)).name == "torch"  # training row
    assert dispatch.choose("auto", spec("lstm", torch.bfloat16)).name == "torch"  # triton unvalidated for LSTM
    assert dispatch.choose("auto", spec("gru", torch.bfloat16, H=1024)).name == "torch"  # no row holds H=1024
    assert dispatch.choose("auto", spec("gru", torch.bfloat16, B=64)).name == "torch"
    assert dispatch.choose("auto", spec("gru", torch.float32)).name == "torch"


def test_elman_rnn_cells_are_gated_and_tabled_on_their_own(fake_gpu):
    """A record that vouches for rnn_tanh and a table row of rnn_tanh open exactly that cell: not
    rnn_relu (another instantiation of the kernels), not GRU."""
    write_validated(fake_gpu, record("cuda", passed={"gru": [], "lstm": [], "rnn_tanh": ["bfloat16"], "rnn_relu": []}))
    write_table(fake_gpu, [row(cell="rnn_tanh"), row(cell="rnn_relu"), row()])
    assert dispatch.choose("auto", spec("rnn_tanh", torch.bfloat16)).name == "cuda"
    assert dispatch.choose("auto", spec("rnn_relu", torch.bfloat16)).name == "torch"  # validated for tanh only
    assert dispatch.choose("auto", spec("gru", torch.bfloat16)).name == "torch"


def test_dispatch_sweep_measures_every_cell_gated_cells_first():
    """The sweep's grid names every cell a record can vouch for (the gated cells' whole grid before
    the Elman RNN's), and each point's call runs (here on the CPU through torch, training)."""
    from fusedrnn.bench import dispatch_sweep

    assert set(dispatch_sweep.CELLS) == set(evidence.CELLS)
    order = [c for cells in dispatch_sweep.CELL_ORDER for c in cells]
    assert sorted(order) == sorted(dispatch_sweep.CELLS)
    for cell in dispatch_sweep.CELLS:
        dispatch_sweep.point_fn("torch", cell, torch.float32, 8, 2, 3, torch.device("cpu"), True)()


def test_evidence_for_sm90_bf16_gru_opens_exactly_that(fake_gpu, monkeypatch):
    """Validated for sm_90 bf16 GRU only, and a table in which the fused kernels win everywhere:
    fused for sm_90 bf16 GRU, torch for every other cell, dtype and GPU family."""
    write_validated(fake_gpu, record("cuda", passed={"gru": ["bfloat16"], "lstm": []}))
    rows = [row(cell=c, dtype=d, mode=m, H=(1, 4096), B=(1, 4096), ms={"torch": 1.0, "cuda": 0.1})
            for c in ("gru", "lstm") for d in ("bfloat16", "float16", "float32") for m in ("inference", "training")]
    write_table(fake_gpu, rows)
    assert dispatch.choose("auto", spec("gru", torch.bfloat16)).name == "cuda"
    assert dispatch.choose("auto", spec("gru", torch.bfloat16, needs_grad=True)).name == "cuda"
    for cell, dtype in (("gru", torch.float16), ("gru", torch.float32), ("lstm", torch.bfloat16), ("lstm", torch.float16)):
        assert dispatch.choose("auto", spec(cell, dtype)).name == "torch", (cell, dtype)
    monkeypatch.setattr(evidence, "device_family", lambda device: "sm_80")
    dispatch.clear_caches()
    assert dispatch.choose("auto", spec("gru", torch.bfloat16)).name == "torch"


def test_table_measured_with_other_kernels_is_ignored(fake_gpu):
    write_validated(fake_gpu, record("cuda"))
    write_table(fake_gpu, [row()], fingerprints={"cuda": "cu-0", "triton": "tr-1"})
    assert dispatch.choose("auto", spec()).name == "torch"


def test_cudnn_benchmark_times_candidates_once_per_shape(fake_gpu, monkeypatch, caplog):
    write_validated(fake_gpu, record("cuda"), record("triton", fingerprint="tr-1"))
    write_table(fake_gpu, [row(ms={"torch": 1.0, "cuda": 0.1, "triton": 0.2})])  # ignored under benchmark
    timed = []
    fake_ms = {"torch": 0.5, "cuda": 0.9, "triton": 0.3}

    def fake_time(name, s):
        timed.append((name, s.B))
        return fake_ms[name]

    monkeypatch.setattr(dispatch.timing, "time_call", fake_time)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    with caplog.at_level(logging.DEBUG, logger="fusedrnn"):
        assert dispatch.choose("auto", spec(B=16)).name == "triton"
        assert dispatch.choose("auto", spec(B=16)).name == "triton"
    assert sorted(timed) == [("cuda", 16), ("torch", 16), ("triton", 16)], "each candidate timed once"
    assert any("autotune" in r.getMessage() and "-> triton" in r.getMessage() for r in caplog.records)
    fake_ms["triton"] = 5.0
    assert dispatch.choose("auto", spec(B=8)).name == "torch"  # a new shape is timed anew
    assert len(timed) == 6
    assert dispatch.choose("auto", spec(B=16)).name == "triton"  # the winner is kept for the process


def test_cudnn_benchmark_skips_a_failing_candidate(fake_gpu, monkeypatch):
    write_validated(fake_gpu, record("cuda"))

    def fake_time(name, s):
        if name == "cuda":
            raise RuntimeError("launch failed")
        return 1.0

    monkeypatch.setattr(dispatch.timing, "time_call", fake_time)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    assert dispatch.choose("auto", spec()).name == "torch"


def test_forcing_an_unvalidated_fused_backend_warns_once(fake_gpu):
    with pytest.warns(RuntimeWarning, match=r"backend='cuda' runs kernels that no recorded GPU run validated"):
        assert dispatch.choose("cuda", spec()).name == "cuda"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dispatch.choose("cuda", spec())
    write_validated(fake_gpu, record("cuda"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dispatch.choose("cuda", spec())  # validated: no warning


def test_exporting_takes_torchs_op(fake_gpu, monkeypatch):
    write_validated(fake_gpu, record("cuda"))
    write_table(fake_gpu, [row()])
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    assert dispatch.choose("auto", spec()).name == "torch"
    assert dispatch.choose("cuda", spec()).name == "torch"


# ----------------------------------------------------------------------------- evidence records


def report_lines(tests, finished=True):
    lines = [{"event": "test", "id": f"t{i}", **t} for i, t in enumerate(tests)]
    return lines + ([{"event": "finished", "exitstatus": 0}] if finished else [])


def test_summarize_report_rules():
    ok = dict(backend="cuda", outcome="passed")
    lines = report_lines([
        {**ok, "cell": "gru", "dtype": "bfloat16"}, {**ok, "cell": "gru", "dtype": "float16"},
        {**ok, "cell": "lstm", "dtype": "bfloat16"}, {**ok, "cell": "lstm", "dtype": "float16"},
        {**ok, "cell": None, "dtype": "float32"},  # names no cell: vouches for nothing
        {**ok, "cell": "gru", "dtype": "float32"}, {**ok, "cell": "lstm", "dtype": "float32"},
        {"backend": "cuda", "outcome": "failed", "cell": "gru", "dtype": "float16"},
        {"backend": "triton", "outcome": "passed", "cell": "gru", "dtype": "bfloat16"},
        {"backend": "triton", "outcome": "failed", "cell": None, "dtype": None},  # e.g. the grid barrier
        {**ok, "cell": "rnn_tanh", "dtype": "bfloat16"},  # the Elman RNN cells are vouched for one by one
    ])
    s = evidence.summarize_report(lines)
    assert s["cuda"]["passed"] == {"gru": ["bfloat16", "float32"], "lstm": ["bfloat16", "float16", "float32"],
                                   "rnn_tanh": ["bfloat16"], "rnn_relu": []}
    assert s["cuda"]["failed"] == ["t7"]
    assert s["triton"]["passed"] == {"gru": [], "lstm": [], "rnn_tanh": [], "rnn_relu": []}
    assert evidence.summarize_report(report_lines([{**ok, "cell": "gru", "dtype": "bfloat16"}], finished=False)) == {}


def test_record_validation_writes_and_replaces(tmp_path, monkeypatch):
    monkeypatch.setattr(evidence, "RECORDS_DIR", tmp_path)
    monkeypatch.setattr(evidence, "_environment", lambda: {"gpu": "NVIDIA H200", "family": "sm_90", "commit": "c1"})
    monkeypatch.setattr(evidence, "kernel_fingerprint", lambda b: "fp-" + b)
    write_validated(tmp_path, record("cuda", family="sm_80"), record("cuda", family="sm_90", fingerprint="old"))
    report = tmp_path / "report.jsonl"
    lines = report_lines([{"backend": "cuda", "outcome": "passed", "cell": "lstm", "dtype": "float16"},
                          {"backend": "triton", "outcome": "failed", "cell": None, "dtype": None}])
    report.write_text("\n".join(json.dumps(x) for x in lines))
    new = evidence.record_validation(report)
    assert [(r["backend"], r["family"], r["fingerprint"]) for r in new] == [("cuda", "sm_90", "fp-cuda")]
    records = json.loads((tmp_path / evidence.VALIDATED_FILE).read_text())["records"]
    assert sorted((r["family"], r["fingerprint"]) for r in records) == [("sm_80", "cu-1"), ("sm_90", "fp-cuda")]
    assert evidence.main(["record", str(report)]) == 0


# ----------------------------------------------------------------------------- the module path


@pytest.mark.parametrize("cls", [fusedrnn.GRU, fusedrnn.LSTM])
def test_module_call_plans_once_and_never_revalidates_per_layer(cls, monkeypatch):
    calls = {"plan": 0, "spec": 0}
    real_plan = dispatch.plan_module

    def counting_plan(*a, **k):
        calls["plan"] += 1
        return real_plan(*a, **k)

    real_spec = fusedrnn.functional._spec

    def counting_spec(*a, **k):
        calls["spec"] += 1
        return real_spec(*a, **k)

    monkeypatch.setattr(dispatch, "plan_module", counting_plan)
    monkeypatch.setattr(fusedrnn.functional, "_spec", counting_spec)
    for backend, residual in (("auto", False), ("auto", True), ("reference", True)):
        m = cls(8, 8, num_layers=3, bidirectional=True, residual=residual, backend=backend)
        calls.update(plan=0, spec=0)
        m(torch.randn(5, 2, 8))
        assert calls == {"plan": 1, "spec": 0}, (backend, residual)


def test_cpu_stack_on_torch_is_bitwise_torch_nn():
    torch.manual_seed(0)
    for cls, tcls in ((fusedrnn.GRU, torch.nn.GRU), (fusedrnn.LSTM, torch.nn.LSTM)):
        ours = cls(6, 8, num_layers=2, bidirectional=True, dropout=0.3)
        theirs = tcls(6, 8, num_layers=2, bidirectional=True, dropout=0.3)
        theirs.load_state_dict(ours.state_dict())
        lens = torch.tensor([5, 2, 4])
        x = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(5, 3, 6), lens, enforce_sorted=False)
        for training in (False, True):
            ours.train(training), theirs.train(training)
            torch.manual_seed(1)
            a = ours(x)
            torch.manual_seed(1)
            b = theirs(x)
            assert torch.equal(a[0].data, b[0].data)
            for s, t in zip(a[1] if isinstance(a[1], tuple) else (a[1],), b[1] if isinstance(b[1], tuple) else (b[1],)):
                assert torch.equal(s, t)


def test_info_shows_the_gate_state():
    from fusedrnn import info

    text = info.report()
    assert "validation records" in text and "dispatch table" in text


def test_validation_report_from_a_pytest_run(tmp_path):
    """The conftest hook writes what summarize_report reads: a real pytest run over a tiny test file."""
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "conftest.py").write_text((Path(__file__).parent / "conftest.py").read_text())
    (tmp_path / "test_fake_gpu.py").write_text(
        "import pytest, torch\n"
        "@pytest.mark.validates('cuda')\n"
        "@pytest.mark.parametrize('cell', ['gru', 'lstm', 'rnn_relu'])\n"
        "@pytest.mark.parametrize('dtype', [torch.bfloat16, 'fp16'])\n"
        "def test_numerics(cell, dtype):\n"
        "    assert not (cell == 'lstm' and dtype == 'fp16')\n"
        "@pytest.mark.validates('triton')\n"
        "def test_barrier():\n"
        "    pytest.skip('no GPU')\n"
        "def test_unmarked():\n"
        "    pass\n")
    report = tmp_path / "report.jsonl"
    env = {**__import__("os").environ, "FUSEDRNN_VALIDATION_REPORT": str(report)}
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)], env=env,
                   capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = [json.loads(x) for x in report.read_text().splitlines()]
    assert lines[-1]["event"] == "finished" and len(lines) == 8
    s = evidence.summarize_report(lines)
    assert s["cuda"]["passed"] == {"gru": ["bfloat16", "float16"], "lstm": ["bfloat16"], "rnn_tanh": [],
                                   "rnn_relu": ["bfloat16", "float16"]}
    assert s["triton"]["tests"] == {"passed": 0, "failed": 0, "skipped": 1}


def test_no_autotuning_while_a_cuda_graph_is_captured(monkeypatch):
    """cudnn.benchmark's timing synchronises and draws inputs: a call first seen during a CUDA-graph
    capture is decided as without it (and cached under that key, not the timed one)."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    assert dispatch._switches(spec())[0] is True
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert dispatch._switches(spec())[0] is False
