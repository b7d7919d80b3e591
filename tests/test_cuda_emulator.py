"""The CPU emulator's own checks (csrc/emu/selftest.cpp): each self-test kernel is correct or breaks
exactly one rule, and these tests show the emulator notices — so a kernel test that passes under the
emulator means something. The kernels themselves: tests/test_cuda_kernels.py."""

from __future__ import annotations

import cuda_emu
import pytest
import torch

_reason = cuda_emu.unavailable_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"CUDA emulator: {_reason}")


@pytest.fixture
def emu():
    module = cuda_emu.load()  # built once per csrc/ version (minutes on 2 cores), shared with the kernel tests
    module.set_schedule("eager", 0)
    yield module
    module.set_schedule("eager", 0)


def _randn(n, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# Barriers, bounds, schedules
# ---------------------------------------------------------------------------------------------


def test_missing_barrier_changes_the_result(emu):
    x = torch.arange(256, dtype=torch.float32)
    want = torch.roll(x, -1)
    for mode in ("in_order", "reversed", "shuffled"):
        emu.set_schedule(mode, 3)
        assert torch.equal(emu.selftest("neighbour", 0, x), want)
    outs = []
    for mode in ("in_order", "reversed"):
        emu.set_schedule(mode, 0)
        outs.append(emu.selftest("neighbour", 1, x))
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], want)
    assert torch.isnan(outs[0]).any()  # unwritten shared memory reads as NaN


@pytest.mark.parametrize("name,message", [
    ("smem_oob", "shared memory written out of bounds"),
    ("divergent_barrier", "deadlock"),
    ("grid_barrier", "deadlock"),
    ("global_oob", "global buffer written out of bounds"),
    ("barrier_sites", "different __syncthreads"),
])
def test_broken_kernels_are_reported(emu, name, message):
    x = _randn(512)
    emu.selftest(name, 0, x)  # the correct variant runs
    with pytest.raises(RuntimeError, match=message):
        emu.selftest(name, 1, x)


# ---------------------------------------------------------------------------------------------
# mma.sync, cp.async and the fast-math intrinsics (csrc/ptx.cuh)
# ---------------------------------------------------------------------------------------------


def _tf32_rna(t: torch.Tensor) -> torch.Tensor:
    bits = t.float().contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


@pytest.mark.parametrize("kind", ["f16", "bf16", "tf32"])
def test_mma_follows_the_ptx_fragment_layouts(emu, kind):
    """A warp packs A and B into mma.sync fragments by the PTX ISA's layout and gets A·B; packing B
    transposed (a layout bug) gives something else; a lane that skips the mma deadlocks the warp."""
    x = _randn(384)
    if kind == "tf32":
        a, b = _tf32_rna(x[:128].view(16, 8)), _tf32_rna(x[256:320].view(8, 8))
    else:
        dt = torch.float16 if kind == "f16" else torch.bfloat16
        a, b = x[:256].view(16, 16).to(dt).float(), x[256:384].view(16, 8).to(dt).float()
    want = (a.double() @ b.double()).float()
    torch.testing.assert_close(emu.selftest(f"mma_{kind}", 0, x), want, atol=1e-5, rtol=1e-5)
    assert (emu.selftest(f"mma_{kind}", 1, x) - want).abs().max() > 0.1
    with pytest.raises(RuntimeError, match="deadlock"):
        emu.selftest(f"mma_{kind}", 2, x)


def test_lanes_must_agree_on_the_mma(emu):
    with pytest.raises(RuntimeError, match="different warp-collective operations"):
        emu.selftest("mma_f16", 3, _randn(384))


def test_cp_async_lands_at_the_wait(emu):
    """cp.async data is there after wait + barrier; read before the wait, after a wait for the wrong
    group, or by another thread without the barrier, it is NaN; a source written while the copy is
    in flight, or a copy never waited for, fails the launch."""
    x = _randn(2048, seed=1)
    out = emu.selftest("cp_async", 0, x.clone())
    assert torch.equal(out[:1024], x[:1024].view(256, 4).roll(-1, 0).flatten())
    assert torch.equal(out[1024:], x[1024:])
    assert torch.isnan(emu.selftest("cp_async", 1, x.clone())[1024:]).all()  # read before any wait
    assert torch.isnan(emu.selftest("cp_async", 2, x.clone())[1024:]).all()  # waited for the other group
    assert torch.isnan(emu.selftest("cp_async", 3, x.clone())[:1024]).any()  # no barrier after the wait
    with pytest.raises(RuntimeError, match="source changed between issue and completion"):
        emu.selftest("cp_async", 4, x.clone())
    with pytest.raises(RuntimeError, match="never waited for"):
        emu.selftest("cp_async", 5, x.clone())


def _visibility_want():
    s, x, t = torch.meshgrid(torch.arange(3), torch.arange(4), torch.arange(256), indexing="ij")
    return (1000 * s + 100 * ((x + 1) % 4) + (t + 1) % 256).float()


@pytest.mark.parametrize("mode", ["in_order", "reversed", "shuffled", "eager", "eager_shuffled"])
def test_reads_of_other_ctas_writes_must_be_ordered(emu, mode):
    """A CTA that reads what another CTA wrote in the same launch must be ordered after the write: by
    a release -> acquire ready flag (acquire loads, or relaxed loads then fence.acq_rel; passed on to
    the other lanes by __syncwarp or __syncthreads: wait_ready polls with warp 0 only, so dropping
    either its fence or its __syncthreads() is a planted bug), by grid.sync, or by a split grid barrier whose
    barrier_arrive comes after the write; wait_ready over more flags than one poll round (128) takes
    them all. The emulator checks the order itself, whatever values the
    schedule happens to produce: every broken variant fails under every schedule (csrc/emu/selftest.cpp
    lists them)."""
    emu.set_schedule(mode, 5)
    x = _randn(4)
    for ok in (0, 6, 8, 9, 10, 12):
        assert torch.equal(emu.selftest("visibility", ok, x), _visibility_want()), ok
    for broken in (1, 2, 3, 4, 7, 11, 13, 14, 15):
        with pytest.raises(RuntimeError, match="read before the write is visible"):
            emu.selftest("visibility", broken, x)


def test_unreleased_ready_flag_is_a_deadlock(emu):
    with pytest.raises(RuntimeError, match="deadlock: threads poll ready flags that nobody releases"):
        emu.selftest("visibility", 5, _randn(4))


def test_fast_math_at_documented_accuracy(emu):
    """ex2.approx / rcp.approx carry errors of the documented size (not libm's), the kernels'
    sigmoid (ex2 + rcp) stays within 1e-6 and saturates (to 0 exactly, to 1 within rcp's error), and
    the shortcut through tanh.approx (2^-10.99 relative) is caught as too inaccurate for fp32."""
    x = torch.cat([torch.linspace(-30, 30, 6001), torch.tensor([-200.0, 200.0, 0.0])])
    out = emu.selftest("fast_math", 0, x).double()
    xd = x.double()
    finite = x.abs() < 100
    rel_ex2 = ((out[:, 0] - torch.exp2(xd)) / torch.exp2(xd)).abs()[finite]
    assert 2**-22 <= rel_ex2.max() <= 2**-21 + 2**-23
    nz = x != 0
    rel_rcp = ((out[:, 1] - 1 / xd) * xd).abs()[nz]
    assert 2**-23 <= rel_rcp.max() <= 2**-22 + 2**-23
    assert (out[:, 2] - torch.sigmoid(xd)).abs().max() <= 1e-6
    assert out[-3, 2] == 0.0 and abs(out[-2, 2] - 1) <= 2**-22 and out[-2, 0] == float("inf")
    assert (out[:, 3] - torch.sigmoid(xd)).abs().max() > 1e-4
