"""What `import fusedrnn` adds to `import torch`: a figure, measured in fresh processes.

    python -m fusedrnn.bench --import-cost        # median of 10 fresh processes of each kind

Each process times its own imports with perf_counter (interpreter start-up excluded): half of them
run `import torch`, the other half `import torch, fusedrnn` (interleaved, so drift hits both).
Reported: the median of each, their difference, and the median time of the `import fusedrnn` line
alone (after torch) in the second kind, which is the least noisy figure of the three.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

_PROBE = """
import json, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
if {with_fusedrnn}:
    import fusedrnn
t2 = time.perf_counter()
print(json.dumps([t1 - t0, t2 - t0]))
"""


def _one(with_fusedrnn: bool) -> tuple[float, float]:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # as a user's process starts
    out = subprocess.run([sys.executable, "-c", _PROBE.format(with_fusedrnn=with_fusedrnn)],
                         capture_output=True, text=True, check=True, env=env, timeout=300).stdout
    torch_s, total_s = json.loads(out.strip().splitlines()[-1])
    return torch_s, total_s


def measure(n: int = 10) -> dict:
    """Medians (seconds) over n fresh processes of each kind."""
    plain, both, own = [], [], []
    for _ in range(n):
        plain.append(_one(False)[1])
        torch_s, total_s = _one(True)
        both.append(total_s)
        own.append(total_s - torch_s)
    return {"n": n, "import torch": statistics.median(plain), "import torch, fusedrnn": statistics.median(both),
            "import fusedrnn after torch": statistics.median(own)}


def format_figure(r: dict) -> str:
    added = r["import torch, fusedrnn"] - r["import torch"]
    return "\n".join([
        f"import cost, median of {r['n']} fresh processes each (this machine, measured):",
        f"  import torch                 {r['import torch'] * 1e3:8.1f} ms",
        f"  import torch, fusedrnn       {r['import torch, fusedrnn'] * 1e3:8.1f} ms   (difference {added * 1e3:+.1f} ms)",
        f"  import fusedrnn, after torch {r['import fusedrnn after torch'] * 1e3:8.1f} ms   (timed in-process)",
    ])
