"""The benchmark suite's CPU side: the case table in bench/README.md is the registry's, and `python -m fusedrnn.bench`
without a GPU runs the labelled CPU demonstration, writes CSV/JSON, and exits 0 exactly when every
correctness check that could run passed."""

import csv
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from fusedrnn.bench import cases, cpu_overhead

README = os.path.join(os.path.dirname(__file__), "..", "bench", "README.md")


def test_readme_case_table_is_the_registry():
    """bench/README.md's case table (as `python -m fusedrnn.bench --list` prints it) holds exactly
    the registry's cases, so the documentation cannot drift from bench/cases.py."""
    from fusedrnn.bench.__main__ import list_cases

    text = open(README).read()
    block = text.split("<!-- cases: python -m fusedrnn.bench --list -->")[1].split("```")[1].strip("\n")
    assert block == list_cases().split("\n\nproviders:")[0].strip("\n")
    assert all(c.I == c.H for c in cases.CASES)
    assert set(cases.MODES) == {"forward", "forward+backward"}
    assert set(cases.DTYPES) == {"bf16", "fp16", "fp32"}


def test_packed_lengths_deterministic_and_bounded():
    c = cases.get("packed-bilstm")
    a, b = c.lengths(), c.lengths()
    assert torch.equal(a, b) and a.dtype == torch.int64 and a.shape == (c.B,)
    assert int(a.max()) == c.T <= 200 and int(a.min()) >= 1
    assert cases.get("flashrnn").lengths() is None


def test_flop_and_byte_counts():
    c = cases.get("fastrnns")  # LSTM, G = 4H, one layer-direction: 2·N·G·(I+H)
    N, G = c.B * c.T, 4 * c.H
    assert c.flops("forward") == 2 * N * G * (c.H + c.H)
    assert c.flops("forward+backward") == 3 * c.flops("forward")
    W = G * c.H + G * c.H + 2 * G
    assert c.min_bytes("forward", 2) == 2 * (N * c.H + N * c.H + W + 2 * 2 * c.B * c.H)
    assert c.min_bytes("forward+backward", 2) > c.min_bytes("forward", 2)
    bi = cases.get("packed-bilstm")  # layer 1 reads both directions of layer 0: I = 2H
    assert bi.layer_inputs() == [bi.H, 2 * bi.H]


def test_cli_cpu_demo(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-m", "fusedrnn.bench", "--quick", "--no-progress", "--cases", "small-lstm,residual-gru",
         "--out", str(out)],
        capture_output=True, text=True, timeout=240, env=env,
    )
    log = proc.stdout + proc.stderr
    assert "No CUDA GPU is visible" in proc.stdout and "CPU DEMONSTRATION" in proc.stdout, log
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["results"]) == {"small-lstm", "residual-gru"}
    assert doc["meta"]["label"].startswith("CPU demonstration")
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["case"] for r in rows} == {"small-lstm", "residual-gru"}
    assert all(r["label"].startswith("CPU demonstration") for r in rows)
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["provider"] for r in ok} >= {"torch-nn", "fusedrnn-torch", "fusedrnn-reference", "cell-loop"}, log
    assert all(float(r["median_ms"]) > 0 for r in ok)

    checks = doc["checks"]
    statuses = {c["status"] for c in checks}
    assert statuses <= {"pass", "fail", "error", "unavailable"}
    # The harness itself (residual stacks on the auto/reference backends) must pass; the triton
    # checks report whatever the Triton backend does today, and the exit status must say so.
    for c in checks:
        if c["backend"] in ("auto", "reference"):
            assert c["status"] == "pass", c
    failed = [c for c in checks if c["status"] in ("fail", "error")]
    assert proc.returncode == (1 if failed else 0), log
    overhead = doc["cpu_overhead"]
    assert len(overhead) == 2 * len(cpu_overhead.ROWS)
    assert all(r["fusedrnn_us"] > 0 and r["torch_nn_us"] > 0 for r in overhead)
    assert "CPU overhead over torch.nn" in proc.stdout and "MEASURED on this CPU" in proc.stdout


def test_cli_model_table():
    proc = subprocess.run([sys.executable, "-m", "fusedrnn.bench", "--model", "--cases", "flashrnn", "--dtypes", "bf16"],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Latency model (MODEL, not measured" in proc.stdout
    from fusedrnn.bench import perf_model

    perf_model.estimates(cases=[cases.get("flashrnn")], dtypes=["bf16"])  # loads the backends' models
    assert {"fusedrnn-cuda", "fusedrnn-triton"} <= set(perf_model.MODELS)
    for provider in perf_model.MODELS:
        assert f"flashrnn       bf16  {provider}" in proc.stdout, proc.stdout


@pytest.mark.parametrize("argv", [["--cases", "nope"], ["--providers", "cudnn-x"]])
def test_cli_rejects_unknown_names(argv):
    proc = subprocess.run([sys.executable, "-m", "fusedrnn.bench", *argv], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 2 and "unknown" in proc.stderr


def test_model_table_takes_measured_rows():
    """On a GPU the grid's rows are put beside the model: the table carries them by provider, case,
    dtype and mode, and cuDNN's (torch-nn) measured time beside."""
    from fusedrnn.bench import perf_model

    case = cases.get("flashrnn")
    fake = [dict(provider=p, case="flashrnn", dtype="bf16", mode=m, status="ok", median_ms=ms)
            for p, m, ms in (("fusedrnn-cuda", "forward", 3.0), ("fusedrnn-cuda", "forward+backward", 9.0),
                             ("torch-nn", "forward", 2.5))]
    rows = perf_model.table([case], ["bf16"], measured_rows=fake)
    cuda = next(r for r in rows if r["provider"] == "fusedrnn-cuda")
    assert (cuda["measured_fwd_ms"], cuda["measured_fb_ms"], cuda["measured_cudnn_fwd_ms"]) == (3.0, 9.0, 2.5)
    triton = next(r for r in rows if r["provider"] == "fusedrnn-triton")
    assert triton["measured_fwd_ms"] is None
    assert "meas fwd" in perf_model.format_table(rows)


def test_import_cost_figure():
    """`python -m fusedrnn.bench --import-cost` reports the figure (fresh processes; no time is
    asserted: the figure is for reading, sys.modules is what tests/test_import_cost.py asserts)."""
    from fusedrnn.bench import import_cost
    from fusedrnn.bench.__main__ import parse_args

    assert parse_args(["--import-cost"]).import_cost
    r = import_cost.measure(n=1)
    assert r["n"] == 1 and 0 < r["import torch"] and 0 < r["import fusedrnn after torch"] < r["import torch, fusedrnn"]
    text = import_cost.format_figure(r)
    assert "median of 1 fresh processes" in text and "import torch, fusedrnn" in text and "(difference " in text


# --- streaming and stack cases ---------------------------------------------------------------------


def test_streaming_cases_are_inference_only_and_graph_providers_time_only_them():
    from fusedrnn.bench import providers

    stream = [c for c in cases.CASES if c.stream]
    assert {c.id for c in stream} >= {"stream-gru2-b1", "stream-gru2-b64"}
    assert all(c.modes == ("forward",) and c.layers == 2 and not c.bidirectional for c in stream)
    assert providers.applies(stream[0], "torch-nn-graphed", "forward")
    assert not providers.applies(stream[0], "torch-nn", "forward+backward")
    assert not providers.applies(cases.get("flashrnn"), "fusedrnn-cuda-graphed", "forward")
    assert providers.applies(cases.get("flashrnn"), "fusedrnn-cuda", "forward+backward")
    # the weights and states are read once per call
    s = stream[0]
    one = dataclasses.replace(s, T=1, stream=False)
    assert s.min_bytes("forward", 2) == pytest.approx(s.T * one.min_bytes("forward", 2))
    with pytest.raises(providers.Unavailable, match="runs on cuda only"):
        inp = cases.make_inputs(cases.get("small-lstm").scaled_down(tiny=True), torch.float32, "cpu", "forward")
        providers.build(inp, "torch-nn-graphed", "forward")


@pytest.mark.parametrize("provider", ["torch-nn", "fusedrnn-reference", "cell-loop"])
def test_streaming_providers_carry_the_state(provider):
    """A streaming call (T calls of one step, the state carried) ends where one call over the whole
    sequence ends: every provider times the same computation."""
    from fusedrnn.bench import providers

    case = cases.get("stream-gru2-b64").scaled_down(tiny=True)
    inp = cases.make_inputs(case, torch.float64, "cpu", "forward")
    whole = torch.nn.GRU(case.I, case.H, num_layers=case.layers).double()
    whole.load_state_dict(inp.state_dict)
    want = whole(inp.x)[0][-1]
    if provider == "cell-loop":
        forward, _, _ = providers._cell_loop_model(inp, compiled=False)
    else:
        forward, _ = providers._module_model(inp, None if provider == "torch-nn" else "reference")
    with torch.no_grad():
        got = forward(inp.x)
    torch.testing.assert_close(got.reshape(want.shape), want)
    assert providers.build(inp, provider, "forward") is not None  # builds and runs once


def test_stack_and_streaming_cases_are_modelled():
    from fusedrnn.bench import perf_model

    picked = [cases.get(i) for i in ("lstm-stack4", "gru-stack8", "stream-gru2-b1")]
    rows = perf_model.table(picked, ["bf16"])
    for r in rows:
        assert "why" not in r, r
        if r["case"].startswith("stream"):
            assert r["model_fb_ms"] is None and "streaming: 256 eager calls" in r["notes"]
        else:
            assert r["model_fb_ms"] > r["model_fwd_ms"] > 0
