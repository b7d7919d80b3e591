"""`import fusedrnn` after `import torch` costs nothing: it loads neither torch._dynamo, nor triton,
nor the CUDA extension (they load on first use). Checked in a fresh process by what sys.modules
holds, which is stable; the time itself is a figure the bench prints (python -m fusedrnn.bench
--import-cost), not something a test asserts."""

import os
import subprocess
import sys
import textwrap

import pytest

HEAVY = ("torch._dynamo", "triton", "fusedrnn._C", "fusedrnn.kernels")


def _fresh(code: str, interpreter: bool = False) -> str:
    """Run code in a fresh process started as a user's is (no TRITON_INTERPRET, which this suite
    sets for itself), or, with ``interpreter``, as a test worker's."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpreter:
        env["TRITON_INTERPRET"] = "1"
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                       env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.mark.parametrize("interpreter", [False, True], ids=["user", "TRITON_INTERPRET=1"])
def test_import_fusedrnn_loads_no_dynamo_triton_or_extension(interpreter):
    out = _fresh(f"""
        import sys
        import torch
        before = {{m for m in {HEAVY!r} if m in sys.modules}}
        import fusedrnn
        print(sorted(before), sorted(m for m in {HEAVY!r} if m in sys.modules))
    """, interpreter)
    assert out == "[] []", f"(before, after `import fusedrnn`): {out}"


def test_the_check_can_see_a_heavy_import():
    """The same probe reports torch._dynamo once something imports it (so the test above can fail)."""
    out = _fresh("""
        import sys, torch, fusedrnn
        torch.compiler.assume_constant_result(lambda: 0)
        print("torch._dynamo" in sys.modules)
    """)
    assert out == "True"


def test_cpu_forward_and_checkpoint_load_stay_light(tmp_path):
    """A CPU training step on the default backend and a weights-only load of a whole model do not
    pull them in either (DataLoader workers and scripts that never use a GPU pay nothing)."""
    path = tmp_path / "m.pt"
    out = _fresh(f"""
        import sys, torch, fusedrnn
        m = torch.nn.Sequential(fusedrnn.LSTM(3, 4, 2, residual=1))
        m(torch.randn(5, 2, 3))[0].sum().backward()
        torch.save(m, {str(path)!r})
        with torch.serialization.safe_globals([torch.nn.Sequential]):
            torch.load({str(path)!r})
        print(sorted(n for n in {HEAVY!r} if n in sys.modules))
    """)
    assert out == "[]"
