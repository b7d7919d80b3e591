"""The benchmark suite's CPU side: the case table in bench/README.md is the registry's, and `python -m fusedrnn.bench`
without a GPU runs the labelled CPU demonstration, writes CSV/JSON, and exits 0 exactly when every
correctness check that could run passed."""

import csv
import dataclasses
import json
import os
import re
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
        [sys.executable, "-m", "fusedrnn.bench", "--quick", "--no-progress", "--cases",
         "small-lstm,residual-gru,zoneout-gru,layernorm-lstm", "--out", str(out)],
        capture_output=True, text=True, timeout=240, env=env,
    )
    log = proc.stdout + proc.stderr
    assert "No CUDA GPU is visible" in proc.stdout and "CPU DEMONSTRATION" in proc.stdout, log
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["results"]) == {"small-lstm", "residual-gru", "zoneout-gru", "layernorm-lstm"}
    assert doc["meta"]["label"].startswith("CPU demonstration")
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["case"] for r in rows} == {"small-lstm", "residual-gru", "zoneout-gru", "layernorm-lstm"}
    zo = {(r["provider"], r["mode"]): r for r in rows if r["case"] == "zoneout-gru"}
    assert {r["zoneout"] for r in zo.values()} == {"0.1"} and {r["zoneout"] for r in rows} == {"0.0", "0.1"}
    for mode in cases.MODES:  # the demo's default providers on the zoneout case
        assert zo[("torch-nn", mode)]["status"] == "ok" and "WITHOUT zoneout" in zo[("torch-nn", mode)]["note"]
        assert zo[("cell-loop", mode)]["status"] == "ok" and zo[("fusedrnn-reference", mode)]["status"] == "ok", log
        declined = zo[("fusedrnn-torch", mode)]
        assert declined["status"] == "unavailable" and "zoneout" in declined["reason"]
    ln = {(r["provider"], r["mode"]): r for r in rows if r["case"] == "layernorm-lstm"}
    assert {r["layernorm"] for r in ln.values()} == {"True"}
    for mode in cases.MODES:  # the demo's default providers on the LayerNorm case (scaled down, on the CPU)
        assert ln[("torch-nn", mode)]["status"] == "ok" and "WITHOUT LayerNorm" in ln[("torch-nn", mode)]["note"]
        assert ln[("cell-loop", mode)]["status"] == "ok" and ln[("fusedrnn-reference", mode)]["status"] == "ok", log
        declined = ln[("fusedrnn-torch", mode)]
        assert declined["status"] == "unavailable" and "layernorm" in declined["reason"]
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


# --- zoneout ------------------------------------------------------------------------------------------


def _zoneout_inputs(mode, p=0.3, **changes):
    case = dataclasses.replace(cases.get("zoneout-gru").scaled_down(tiny=True), zoneout=p, **changes)
    return cases.make_inputs(case, torch.float64, "cpu", mode)


def test_zoneout_case_is_in_the_grid():
    from fusedrnn.bench import providers

    c = cases.get("zoneout-gru")
    assert c in cases.CASES and (c.cell, c.B, c.H, c.T, c.layers, c.zoneout) == ("gru", 32, 512, 256, 2, 0.1)
    assert c.modes == cases.MODES and not (c.stream or c.packed or c.residual or c.bidirectional)
    assert [x.id for x in cases.CASES if x.zoneout] == ["zoneout-gru"]
    small = c.scaled_down(tiny=True)
    assert small.zoneout == 0.1 and "zoneout p=0.1" in small.describe()
    for prov in ("torch-nn", "cell-loop", "cell-loop-compiled", "fusedrnn-triton", "fusedrnn-cuda"):
        assert all(providers.applies(c, prov, m) for m in cases.MODES)
    assert not providers.applies(c, "fusedrnn-triton-graphed", "forward")  # not a streaming case


@pytest.mark.parametrize("variant, compiled", [({}, False), ({"cell": "lstm"}, False),
                                               ({"cell": "lstm", "packed": True, "bidirectional": True}, False),
                                               ({"cell": "lstm"}, True)])
def test_cell_loop_zoneout_evaluation_matches_fusedrnn(variant, compiled):
    """Mode "forward" is inference: the cell loop's evaluation zoneout (m = p, torch.lerp; eager, or
    inside the compiled step) is fusedrnn's reference module in eval() with zoneout=p, and differs
    from the un-zoned stack."""
    from fusedrnn.bench import providers

    inp = _zoneout_inputs("forward", **variant)
    loop, _, mask = providers._cell_loop_model(inp, compiled=compiled, training=False)
    fused, _ = providers._module_model(inp, "reference", training=False)
    plain, _ = providers._module_model(inp, None, training=False)
    with torch.no_grad():
        got, want, unzoned = loop(inp.x), fused(inp.x), plain(inp.x)
    if inp.case.packed:  # the modules return packed data, the loop the padded, masked sequence
        got = torch.nn.utils.rnn.pack_padded_sequence(got, inp.lengths, enforce_sorted=False).data
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert (want - unzoned).abs().max() > 1e-2  # zoneout changed the result: the comparison means something


@pytest.mark.parametrize("which", ["cell-loop", "cell-loop-compiled", "fusedrnn-reference"])
def test_zoneout_training_masks_have_the_right_statistics(which):
    """Training: every element of h_t is h_{t-1} (zoned out) or the cell's h~_t (updated),
    a fraction p of them zoned out, with masks that change from step to step: the cell loop's
    torch.bernoulli masks and fusedrnn's Philox masks alike."""
    from fusedrnn.bench import providers

    p = 0.3
    inp = _zoneout_inputs("forward+backward", p=p, layers=1, B=8, T=40, H=32)
    if which.startswith("cell-loop"):
        forward, _, _ = providers._cell_loop_model(inp, compiled=which == "cell-loop-compiled", training=True)
    else:
        forward, _ = providers._module_model(inp, "reference", training=True)
    torch.manual_seed(0)
    with torch.no_grad():
        y = forward(inp.x)
    cell = torch.nn.GRUCell(inp.case.I, inp.case.H).double()
    cell.load_state_dict({k.replace("_l0", ""): v for k, v in inp.state_dict.items()})
    prev = torch.zeros_like(y[0])
    kept = []
    with torch.no_grad():
        for t in range(inp.case.T):
            new = cell(inp.x[t], prev)
            # float64: fusedrnn's reference rounds the cell's math in its own order, so "equal" is close
            is_old = torch.isclose(y[t], prev, rtol=1e-12, atol=1e-14)
            is_new = torch.isclose(y[t], new, rtol=1e-12, atol=1e-14)
            assert bool((is_old | is_new).all()), f"step {t}: an element is neither h_(t-1) nor h~_t"
            kept.append(is_old & ~is_new)
            prev = y[t]
    kept = torch.stack(kept).double()
    n = kept.numel()
    assert abs(float(kept.mean()) - p) < 5 * (p * (1 - p) / n) ** 0.5, float(kept.mean())
    assert not torch.equal(kept[1], kept[2])  # a new mask every step
    assert 0 < float(kept[1:].mean()) and float(kept.mean()) < 1


def test_zoneout_build_uses_evaluation_for_forward_and_training_for_backward(monkeypatch):
    from fusedrnn.bench import providers

    seen = []
    real_loop, real_module = providers._cell_loop_model, providers._module_model
    monkeypatch.setattr(providers, "_cell_loop_model",
                        lambda inp, compiled, training=False: seen.append(("loop", training)) or
                        real_loop(inp, compiled, training))
    monkeypatch.setattr(providers, "_module_model",
                        lambda inp, backend, training=False: seen.append((backend, training)) or
                        real_module(inp, backend, training))
    for mode in cases.MODES:
        inp = _zoneout_inputs(mode)
        for prov in ("cell-loop", "fusedrnn-reference", "torch-nn"):
            providers.build(inp, prov, mode)()
    assert seen == [("loop", False), ("reference", False), (None, False),
                    ("loop", True), ("reference", True), (None, True)]


def test_zoneout_unavailable_and_caveats():
    """The fused provider whose backend declines zoneout (fusedrnn-torch) says so with the backend's
    own reason, the cuda ones (which run it) are not refused for it; the torch.nn baselines run
    without zoneout and every such row says so."""
    from fusedrnn.backends import native
    from fusedrnn.bench import providers

    inp = _zoneout_inputs("forward")
    for prov, why in (("fusedrnn-torch", native.ZONEOUT_REASON),):
        with pytest.raises(providers.Unavailable) as e:
            providers.build(inp, prov, "forward")
        assert str(e.value) == f"{prov}: {why}" and "zoneout" in why
    assert set(providers._zoneout_reasons()) == {"fusedrnn-torch"}  # fusedrnn-cuda (-graphed) runs zoneout
    assert providers.build(inp, "fusedrnn-reference", "forward") is not None
    assert providers.build(inp, "torch-nn", "forward") is not None  # runs, un-zoned
    for prov in ("torch-nn", "torch-nn-nocudnn", "torch-nn-graphed"):
        assert "WITHOUT zoneout" in providers.caveat(inp.case, prov)
    for prov in ("cell-loop", "cell-loop-compiled", "fusedrnn-triton", "fusedrnn-reference"):
        assert providers.caveat(inp.case, prov) == ""
    assert providers.caveat(cases.get("flashrnn"), "torch-nn") == ""


@pytest.mark.parametrize("case_id, fields, option, reason_word, table_word", [
    ("zoneout-gru", {"zoneout": "0.1"}, "zoneout", "zoneout", "zoneout=0.1"),
    ("layernorm-lstm", {"layernorm": "True", "zoneout": "0.0"}, "LayerNorm", "layernorm", " layernorm "),
])
def test_option_case_csv_table_and_summary(tmp_path, case_id, fields, option, reason_word, table_word):
    """The CPU grid (what the CPU demonstration's part (i) runs) on a scaled-down case with an option
    torch.nn cannot run (zoneout, LayerNorm): the CSV records the option on every row and the
    torch.nn caveat on its rows, the table shows both, the declined providers are 'unavailable'
    with their reason, and the summary footnotes the ratio."""
    from fusedrnn.bench import runner, summary

    case = cases.get(case_id).scaled_down(tiny=True)
    provs = ["torch-nn", "cell-loop", "fusedrnn-reference", "fusedrnn-torch", "fusedrnn-cuda"]
    rows, env, floor_info = runner.run_grid([case], provs, list(cases.MODES), ["fp32"], "cpu", quick=True,
                                            label="test", progress=False)
    paths = runner.write_results(tmp_path, rows, env, floor_info)
    with open(paths["csv"]) as f:
        got = list(csv.DictReader(f))
    assert len(got) == 2 * len(provs) and all(all(r[k] == v for k, v in fields.items()) for r in got)
    by = {(r["provider"], r["mode"]): r for r in got}
    for mode in cases.MODES:
        assert by[("torch-nn", mode)]["status"] == "ok" and f"WITHOUT {option}" in by[("torch-nn", mode)]["note"]
        for prov in ("cell-loop", "fusedrnn-reference"):
            assert by[(prov, mode)]["status"] == "ok" and by[(prov, mode)]["note"] == ""
            assert float(by[(prov, mode)]["ratio_torch_nn"]) > 0
        for prov in ("fusedrnn-torch", "fusedrnn-cuda"):
            r = by[(prov, mode)]
            if prov == "fusedrnn-cuda" and option == "zoneout":  # the CUDA kernels run zoneout: only the device
                assert r["status"] == "unavailable" and "cuda only" in r["reason"], r
                continue
            assert r["status"] == "unavailable" and reason_word in r["reason"], r
    text = runner.format_tables(rows, floor_info, "CPU")
    assert table_word in text and f"WITHOUT {option}" in text
    s = summary.summarize(json.loads(paths["json"].read_text()))
    assert f"{case_id}*" in s and f"* {case_id}: torch.nn ran WITHOUT {option}" in s


def test_zoneout_model_term():
    """The Triton model prices zoneout per step: present only when p > 0, independent of p, in the
    training forward and again in the backward (masks regenerated), cheaper in evaluation, twice
    the states for an LSTM; the CUDA model prices it too (a zoneout phase in the ZO kernels' step)."""
    from fusedrnn.bench import model_cuda, model_triton, perf_model

    base = cases.get("zoneout-gru")

    def steps(case):
        return [model_triton.step(case.cell, d, case, "bf16", save)[1] for d, save in
                (("fwd", False), ("fwd", True), ("bwd", True))]

    def zo(step):
        return [ph.us for ph in step.phases if ph.name == "zoneout"]

    off, on, high = (steps(dataclasses.replace(base, zoneout=p)) for p in (0.0, 0.1, 0.5))
    assert all(zo(s) == [] for s in off)
    for s_on, s_high, s_off in zip(on, high, off):
        assert len(zo(s_on)) == 1 and zo(s_on)[0] > 0 and zo(s_on) == zo(s_high)
        assert s_on.us == pytest.approx(s_off.us + zo(s_on)[0])
    inference, train_fwd, bwd = (zo(s)[0] for s in on)
    assert train_fwd > 10 * inference and bwd >= train_fwd  # Philox in training, a blend in evaluation
    lstm = steps(dataclasses.replace(base, cell="lstm"))
    assert zo(lstm[1])[0] > 1.5 * train_fwd  # h and c
    est_on = model_triton.model(base, "bf16")
    est_off = model_triton.model(dataclasses.replace(base, zoneout=0.0), "bf16")
    # training pays for the masks; inference's blend is two FMAs per element (the SASS walks of the
    # kernels with and without it may differ by a few instructions' scheduling either way)
    assert est_on.fb_ms > est_off.fb_ms and est_on.fwd_ms == pytest.approx(est_off.fwd_ms, rel=0.05)
    assert "zoneout p=0.1" in est_on.notes
    est = model_cuda.model(base, "bf16")
    off = model_cuda.model(dataclasses.replace(base, zoneout=0.0), "bf16")
    assert est.fb_ms > off.fb_ms and est.fwd_ms >= off.fwd_ms and "zoneout p=0.1" in est.notes
    inference, train_fwd, bwd = model_cuda.zoneout_cost_us(base, "bf16", *model_cuda.plans(base, "bf16"))
    assert train_fwd > inference > 0 and bwd > 2 * inference  # masks drawn / regenerated vs the blend
    fz = [ph.us for ph in est.fwd_step.phases if ph.name == "zoneout"]
    bz = [ph.us for ph in est.bwd_step.phases if ph.name == "zoneout"]
    if "compute (SASS)" in est.fwd_step.describe():  # the walk of the ZO kernel holds zoneout's cost
        assert fz == bz == [] and "the SASS walks of the ZO and plain kernels" in est.notes
    else:  # no built extension: the analytic term
        assert fz == [pytest.approx(inference)] and bz == [pytest.approx(bwd)]
    assert not any(ph.name == "zoneout" for ph in off.fwd_step.phases + off.bwd_step.phases)
    rows = perf_model.table([base], ["bf16"])
    assert {r["provider"]: "why" in r for r in rows} == {"fusedrnn-cuda": False, "fusedrnn-triton": False}


def test_cli_model_prints_the_zoneout_case():
    proc = subprocess.run([sys.executable, "-m", "fusedrnn.bench", "--model", "--cases", "zoneout-gru", "--dtypes",
                           "bf16"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "zoneout-gru    bf16  fusedrnn-triton" in out
    # the Triton backward step: the analytic phases end with the zoneout term; where Triton and
    # cuobjdump are present (bench/triton_sass.py) the compute phase is the walk of the zoneout
    # kernel itself, with no term beside it, and the note gives what zoneout adds to the walk
    sassed = re.search(r"bwd step: barrier [0-9.]+ \+ compute \(SASS\) [0-9.]+ = ", out)
    assert sassed or "+ epilogue 0.31 + zoneout " in out, out
    assert "zoneout-gru    bf16  fusedrnn-cuda  " in out and "not applicable" not in out  # the ZO kernels, priced
    assert re.search(r"zoneout p=0.1 \(MODEL, independent of p, (the SASS walks of the ZO and plain kernels|Philox "
                     r"ops per element from the SASS)\): \+[0-9.]+ us per inference step", out), out  # the CUDA model
    how = "the SASS walks with and without it" if sassed else "analytic"
    assert re.search(rf"zoneout p=0.1 \(MODEL, independent of p, {how}\): inference [-+][0-9.]+, training fwd "
                     r"[-+][0-9.]+, bwd [-+][0-9.]+ us/step", out), out


# --- LayerNorm ----------------------------------------------------------------------------------------


def _layernorm_inputs(mode, dtype=torch.float64, **changes):
    case = dataclasses.replace(cases.get("layernorm-lstm").scaled_down(tiny=True), **changes)
    return cases.make_inputs(case, dtype, "cpu", mode)


def test_layernorm_case_is_in_the_grid():
    from fusedrnn.bench import providers

    c = cases.get("layernorm-lstm")
    assert c in cases.CASES and (c.cell, c.B, c.H, c.T, c.layers, c.layernorm) == ("lstm", 32, 512, 256, 2, True)
    assert c.modes == cases.MODES and not (c.stream or c.packed or c.residual or c.bidirectional or c.zoneout)
    assert [x.id for x in cases.CASES if x.layernorm] == ["layernorm-lstm"]
    small = c.scaled_down(tiny=True)
    assert small.layernorm and "LayerNorm (LN_ih, LN_hh, LN_c)" in small.describe()
    for prov in ("torch-nn", "cell-loop", "cell-loop-compiled", "fusedrnn-triton", "fusedrnn-cuda"):
        assert all(providers.applies(c, prov, m) for m in cases.MODES)
    # FLOPs unchanged; bytes: the gammas and betas (2·4H for LN_ih, LN_hh each, 2·H for LN_c) per layer,
    # read in the forward, read again and their gradients written in the backward
    plain = dataclasses.replace(c, layernorm=False)
    assert c.flops("forward+backward") == plain.flops("forward+backward")
    extra = c.layers * 2 * (4 * 4 * c.H + 2 * c.H)
    assert c.min_bytes("forward", 2) - plain.min_bytes("forward", 2) == extra
    assert c.min_bytes("forward+backward", 2) - plain.min_bytes("forward+backward", 2) == 3 * extra


def test_layernorm_inputs_draw_gammas_and_betas():
    """The case's gammas and betas are fusedrnn.LayerNormLSTM's parameters by name and shape, away
    from the initial 1 and 0, and the torch.nn weights are the plain case's."""
    import fusedrnn

    inp = _layernorm_inputs("forward")
    c = inp.case
    module = fusedrnn.LayerNormLSTM(c.I, c.H, num_layers=c.layers)
    want = {n: tuple(p.shape) for n, p in module.named_parameters() if n.startswith("layernorm_")}
    assert {n: tuple(v.shape) for n, v in inp.norm_dict.items()} == want
    for n, v in inp.norm_dict.items():
        assert (v - (1.0 if "_weight_" in n else 0.0)).abs().max() > 0.1
    plain = cases.make_inputs(dataclasses.replace(c, layernorm=False), torch.float64, "cpu", "forward")
    assert plain.norm_dict == {} and all(torch.equal(inp.state_dict[k], v) for k, v in plain.state_dict.items())


@pytest.mark.parametrize("variant, compiled", [({}, False), ({"cell": "gru"}, False),
                                               ({"packed": True, "bidirectional": True}, False),
                                               ({"zoneout": 0.3}, False), ({}, True)])
def test_cell_loop_layernorm_matches_fusedrnn(variant, compiled):
    """The cell loop's LayerNorm step (fusedrnn.layernorm.norm, eager or compiled) computes what
    fusedrnn.LayerNormLSTM / LayerNormGRU on the reference backend computes, forward and every
    gradient (float64), and differs from the un-normalised stack that torch.nn runs."""
    from fusedrnn.bench import providers

    inp = _layernorm_inputs("forward+backward", **variant)
    training = not inp.case.zoneout  # zoneout: evaluation (m = p), deterministic on both sides
    loop, loop_params, mask = providers._cell_loop_model(inp, compiled=compiled, training=training)
    fused, fused_params = providers._module_model(inp, "reference", training=training)
    plain, _ = providers._module_model(inp, None, training=training)
    x1, x2 = (inp.x.clone().requires_grad_() for _ in range(2))
    got, want = loop(x1), fused(x2)
    dy = inp.dy
    if inp.case.packed:  # the modules return packed data, the loop the padded, masked sequence
        got = torch.nn.utils.rnn.pack_padded_sequence(got, inp.lengths, enforce_sorted=False).data
        dy = torch.nn.utils.rnn.pack_padded_sequence(dy, inp.lengths, enforce_sorted=False).data
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        unnormed = plain(inp.x)
    assert (want - unnormed).abs().max() > 1e-2  # LayerNorm changed the result: the comparison means something
    torch.autograd.backward([got, want], [dy, dy])
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-9, atol=1e-11)
    # the same parameters, in the same total: the loop's are per layer-direction, the module's by name
    assert sum(p.numel() for p in loop_params) == sum(p.numel() for p in fused_params)
    for grads in (loop_params, fused_params):
        assert all(p.grad is not None for p in grads)
    total = [sorted(float(p.grad.abs().sum()) for p in ps) for ps in (loop_params, fused_params)]
    assert total[0] == pytest.approx(total[1], rel=1e-9)


def test_layernorm_unavailable_and_caveats():
    """The fused providers whose backend declines LayerNorm are Unavailable with the backend's own
    reason, the Triton one (which fuses it) brings no LayerNorm reason; the torch.nn baselines run
    without LayerNorm and every such row says so."""
    from fusedrnn.backends import cuda, native
    from fusedrnn.bench import providers

    inp = _layernorm_inputs("forward", dtype=torch.float32)
    assert providers.layernorm_reasons(inp, "fusedrnn-triton", "forward") == []
    for prov, why in (("fusedrnn-cuda", cuda.LAYERNORM_REASON), ("fusedrnn-torch", native.LAYERNORM_REASON),
                      ("fusedrnn-cuda-graphed", cuda.LAYERNORM_REASON)):
        assert providers.layernorm_reasons(inp, prov, "forward") == [why]
        with pytest.raises(providers.Unavailable) as e:
            providers.build(inp, prov, "forward")
        assert str(e.value) == f"{prov}: {why}" and "layernorm" in why.lower()
    assert providers.layernorm_reasons(inp, "fusedrnn-reference", "forward") == []
    assert providers.build(inp, "fusedrnn-reference", "forward") is not None
    assert providers.build(inp, "torch-nn", "forward") is not None  # runs, un-normalised
    for prov in ("torch-nn", "torch-nn-nocudnn", "torch-nn-graphed"):
        assert "WITHOUT LayerNorm" in providers.caveat(inp.case, prov)
        assert "WITHOUT zoneout" not in providers.caveat(inp.case, prov)
    both = dataclasses.replace(inp.case, zoneout=0.1)
    assert "WITHOUT zoneout" in providers.caveat(both, "torch-nn") and "WITHOUT LayerNorm" in providers.caveat(
        both, "torch-nn")
    for prov in ("cell-loop", "cell-loop-compiled", "fusedrnn-triton", "fusedrnn-reference"):
        assert providers.caveat(inp.case, prov) == ""
    assert providers.layernorm_reasons(_zoneout_inputs("forward"), "fusedrnn-triton", "forward") == []


def test_layernorm_provider_follows_the_backend(monkeypatch):
    """Nothing in the benchmark decides whether a fused backend runs LayerNorm: a backend whose
    reasons() stop naming it is no longer declined here (its rows then run)."""
    from fusedrnn import backends
    from fusedrnn.bench import providers

    inp = _layernorm_inputs("forward", dtype=torch.float32)
    backend = backends.get("torch")
    real = type(backend).reasons
    monkeypatch.setattr(type(backend), "reasons",
                        lambda self, spec, forced: real(self, dataclasses.replace(spec, layernorm=False), forced))
    assert providers.layernorm_reasons(inp, "fusedrnn-torch", "forward") == []
    assert providers.layernorm_reasons(inp, "fusedrnn-cuda", "forward") != []


def _ln_cost(design, case, m=None):
    """(training fwd, bwd, inference fwd) us/step the LayerNorm phases add to the design's own plan."""
    from fusedrnn.bench import model_triton, perf_model

    d = model_triton.layernorm_design(case, "bf16", design, m or perf_model.H100)
    return (d.train.us - d.base_train.us, d.bwd.us - d.base_bwd.us, d.inf.us - d.base_inf.us), d


def test_layernorm_model_cost_is_positive_and_follows_the_syncs():
    """MODEL: LayerNorm adds a positive cost per step to either design, forward and backward; the
    persistent design pays exactly one extra grid barrier per in-step LayerNorm (GRU 1, LSTM 2) and
    nothing else scales with the barrier; batch_tile pays no grid barrier but one L2 reload per
    extra pass and block; LSTM (LN_hh and LN_c) costs more than GRU (LN_hh) in both."""
    from fusedrnn.bench import model_triton, perf_model

    base = cases.get("layernorm-lstm")
    gru = dataclasses.replace(base, cell="gru")
    assert (model_triton.layernorm_syncs("gru"), model_triton.layernorm_syncs("lstm")) == (1, 2)
    slow_barrier = perf_model.replace_machine(barrier_us=perf_model.H100.barrier_us + 0.5)
    slow_l2 = perf_model.replace_machine(l2_us=perf_model.H100.l2_us + 0.1)
    for case in (base, gru, dataclasses.replace(base, B=256), dataclasses.replace(gru, B=256)):
        syncs = model_triton.layernorm_syncs(case.cell)
        for design in model_triton.LN_DESIGNS:
            cost, d = _ln_cost(design, case)
            assert all(c > 0 for c in cost), (case.cell, case.B, design, cost)
            for st in (d.inf, d.train, d.bwd):  # one sync phase per in-step LayerNorm
                assert sum(ph.name.endswith(" sync") for ph in st.phases) == syncs
            assert d.fwd_ms > d.base_fwd_ms and d.fb_ms > d.base_fb_ms
            slower, _ = _ln_cost(design, case, slow_barrier)
            grid = d.plan_fwd.grid_barrier
            for c0, c1 in zip(cost, slower):
                assert c1 - c0 == pytest.approx(syncs * 0.5 if grid else 0.0, abs=1e-9)
            if not grid:  # batch_tile: a reload trip per extra pass and block
                blocks = d.plan_fwd.n_blk
                farther, _ = _ln_cost(design, case, slow_l2)
                assert farther[0] - cost[0] == pytest.approx(syncs * blocks * 0.1, rel=1e-6)
        for design in model_triton.LN_DESIGNS:
            if case.cell == "lstm":
                lstm_cost = _ln_cost(design, case)[0]
                gru_cost = _ln_cost(design, dataclasses.replace(case, cell="gru"))[0]
                assert all(a > b for a, b in zip(lstm_cost, gru_cost)), (design, lstm_cost, gru_cost)
    # the persistent LSTM design: each extra grid barrier is a step's barrier again
    cost, d = _ln_cost("persistent", base)
    assert d.plan_fwd.grid_barrier and cost[0] > 2 * perf_model.H100.barrier_us


@pytest.mark.parametrize("changes, expect", [({}, "persistent"), ({"cell": "gru"}, "persistent"),
                                             ({"B": 256}, "persistent"), ({"H": 64}, "batch_tile"),
                                             ({"H": 64, "cell": "gru"}, "batch_tile")])
def test_layernorm_model_picks_the_cheaper_design(changes, expect):
    """MODEL: the model picks the design with the smaller forward+backward ms (H=512: persistent,
    whose step is a fraction of one program streaming all of W; H=64: batch_tile, W in one
    program and CTA barriers instead of grid barriers); model() reports the shipped design's
    figures (the kernels run batch_tile) and names the model's pick."""
    from fusedrnn.bench import model_cuda, model_triton

    case = dataclasses.replace(cases.get("layernorm-lstm"), **changes)
    designs = model_triton.layernorm_designs(case, "bf16")
    pick = model_triton.choose_layernorm_design(designs)
    assert pick == expect and designs[pick].fb_ms == min(d.fb_ms for d in designs.values())
    other = next(d for d in model_triton.LN_DESIGNS if d != pick)
    assert designs[pick].fb_ms < designs[other].fb_ms
    est = model_triton.model(case, "bf16")
    shipped = designs[model_triton.SHIPPED_LN_DESIGN]
    assert model_triton.SHIPPED_LN_DESIGN == "batch_tile"
    assert (est.fwd_ms, est.fb_ms, est.fwd_step.us, est.bwd_step.us) == (
        shipped.fwd_ms, shipped.fb_ms, shipped.inf.us, shipped.bwd.us)
    assert est.plan.startswith("LayerNorm design batch_tile") and f"model prefers {pick}" in est.notes
    assert "MODEL" in est.notes and (("not implemented" in est.notes) == (pick != "batch_tile"))
    # the shipped design is priced on the kernels' own LayerNorm plans
    from fusedrnn.kernels import plan as kplan

    for p in (shipped.plan_fwd, shipped.plan_bwd):
        assert p.strategy == "batch_tile" and p.BH <= kplan.LN_MAX_BLOCK_H[2]
    # the LayerNorm estimate is analytic (its passes are not walked in the SASS): against the analytic
    # figure of the same case without LayerNorm
    plain = model_triton._analytic_model(dataclasses.replace(case, layernorm=False), "bf16")
    assert est.fb_ms > plain.fb_ms
    why = model_cuda.model(case, "bf16")
    assert isinstance(why, str) and "declines LayerNorm" in why


def test_readme_layernorm_table_is_the_model():
    """bench/README.md's LayerNorm design table is model_triton.layernorm_table() (bf16) as printed."""
    from fusedrnn.bench import model_triton

    text = open(README).read()
    block = text.split("<!-- layernorm designs: model_triton.layernorm_table() -->")[1].split("\n\n")[0].strip("\n")
    assert block == model_triton.layernorm_table("bf16")


def test_cli_model_prints_the_layernorm_case():
    proc = subprocess.run([sys.executable, "-m", "fusedrnn.bench", "--model", "--cases", "layernorm-lstm", "--dtypes",
                           "bf16"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "layernorm-lstm bf16  fusedrnn-triton" in out and "LN_c sync 0.01" in out and "model prefers persistent" in out
    assert "layernorm-lstm bf16  fusedrnn-cuda      not modelled: not applicable (the cuda backend declines LayerNorm" in out
    assert "LayerNorm in the Triton step: two designs" in out and "| layernorm-lstm | persistent |" in out
