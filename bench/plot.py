"""Plot time / torch.nn time per case and provider (log scale), one panel per mode × dtype.

    python -m fusedrnn.bench.plot bench/results/<run>/results.json [out.png]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def plot_ratios(rows: list[dict], path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get("status") == "ok" and r.get("ratio_torch_nn")]
    panels = list(dict.fromkeys((r["mode"], r["dtype"]) for r in rows))
    cases = list(dict.fromkeys(r["case"] for r in rows))
    provs = [p for p in dict.fromkeys(r["provider"] for r in rows) if p != "torch-nn"]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8, 1.3 * len(cases) + 3), 3.2 * len(panels)),
                             squeeze=False)
    width = 0.8 / max(1, len(provs))
    for ax, (mode, dt) in zip(axes[:, 0], panels):
        for j, prov in enumerate(provs):
            xs, ys = [], []
            for i, c in enumerate(cases):
                r = next((r for r in ok if (r["case"], r["provider"], r["mode"], r["dtype"]) == (c, prov, mode, dt)), None)
                if r is not None:
                    xs.append(i + (j - (len(provs) - 1) / 2) * width)
                    ys.append(r["ratio_torch_nn"])
            ax.bar(xs, ys, width=width, label=prov)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(0.8, color="g", lw=0.8, ls="--", label="target 0.8")
        ax.set_yscale("log")
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(cases, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("time / torch.nn")
        ax.set_title(f"{mode}, {dt}", fontsize=9)
        ax.legend(fontsize=7, ncol=4)
    fig.suptitle(title or "fusedrnn benchmark", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    src = Path(argv[0])
    doc = json.loads(src.read_text())
    rows = [r for case in doc["results"].values() for prov in case.values() for mode in prov.values()
            for r in mode.values()]
    out = Path(argv[1]) if len(argv) > 1 else src.with_name("ratios.png")
    plot_ratios(rows, out, title=f"{doc['meta'].get('label', '')} — {doc['meta'].get('gpu', '')}")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
