"""A short summary of a results.json: per case, the fused/torch.nn ratios, then the targets.

    python -m fusedrnn.bench.summary bench/results/<run>/results.json
"""

from __future__ import annotations

import json
import sys


def summarize(doc: dict) -> str:
    meta = doc.get("meta", {})
    lines = [f"{meta.get('label', '')} on {meta.get('gpu', '?')} (torch {meta.get('torch')}, triton "
             f"{meta.get('triton')}, CUDA {meta.get('cuda')}, commit {meta.get('git_commit')})"]
    rows = [r for case in doc.get("results", {}).values() for prov in case.values() for mode in prov.values()
            for r in mode.values()]
    combos = list(dict.fromkeys((r["mode"], r["dtype"]) for r in rows))
    fused = [p for p in dict.fromkeys(r["provider"] for r in rows) if p.startswith("fusedrnn-")]
    short = {"forward": "fwd", "forward+backward": "fwd+bwd"}
    head = f"{'case':<16}" + "".join(f"{p.replace('fusedrnn-', '') + ' ' + short.get(m, m) + ' ' + d:>24}"
                                     for m, d in combos for p in fused)
    lines += ["time / torch.nn (cuDNN on a GPU); '-' = not measured (see results.csv 'reason')", head]
    footnotes = []
    for case_id, provs in doc.get("results", {}).items():
        # a baseline that ran something else than the case (torch.nn on a zoneout case: no zoneout;
        # on a LayerNorm case: no LayerNorm)
        note = next((r.get("note") for mode in provs.get("torch-nn", {}).values() for r in mode.values()
                     if r.get("note")), "")
        if note:
            footnotes.append(f"* {case_id}: torch.nn ran {note}")
            case_id += "*"
        cells = []
        for m, d in combos:
            for p in fused:
                r = provs.get(p, {}).get(m, {}).get(d)
                v = r.get("ratio_torch_nn") if r and r.get("status") == "ok" else None
                cells.append(f"{v:>24.2f}" if v else f"{(r or {}).get('status', '-')[:12]:>24}")
        lines.append(f"{case_id:<16}" + "".join(cells))
    lines += footnotes
    targets = doc.get("targets") or []
    if targets:
        lines.append("targets:")
        for t in targets:
            v = "-" if t["value"] is None else f"{t['value']:.3f}"
            lines.append(f"  {t['provider']:<16}{t['target']:<66}{v:>9}  {t['status']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    with open(argv[0]) as f:
        print(summarize(json.load(f)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
