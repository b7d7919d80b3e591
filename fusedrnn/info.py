"""`python -m fusedrnn.info`: versions, devices, the built extension, the GPU records shipped in the
package (validation evidence, measured dispatch tables), and, per backend, whether `auto` would
use it for a typical call here, or why not."""

from __future__ import annotations

import platform

import torch

from . import _ext, dispatch, evidence
from .backends import CELLS, NAMES, CallSpec, get
from .version import __version__


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except Exception as e:  # noqa: BLE001 - report any import failure as text
        return f"not importable ({type(e).__name__}: {e})"


def _records_lines(family: str | None) -> list[str]:
    lines = [f"GPU validation records ({evidence.RECORDS_DIR.name}/{evidence.VALIDATED_FILE}):"]
    records = evidence.validation_records()
    if not records:
        lines.append("  none: no GPU run has validated the fused kernels, so `auto` uses torch (cuDNN) on GPUs")
    for r in records:
        covered = "; ".join(f"{c.upper()} {', '.join(d) or 'none'}" for c, d in r.get("passed", {}).items())
        lines.append(f"  {r.get('backend')} on {r.get('family')} ({r.get('gpu')}), kernels {r.get('fingerprint')}, "
                     f"commit {r.get('commit')}, {r.get('date')}: {covered}")
    for backend in ("cuda", "triton"):
        lines.append(f"  this installation's {backend} kernel fingerprint: {evidence.kernel_fingerprint(backend)}")
    tables = sorted(p.name for p in evidence.RECORDS_DIR.glob("dispatch_*.json"))
    lines.append(f"measured dispatch tables: {', '.join(tables) if tables else 'none'}")
    if family is not None:
        table = evidence.dispatch_table(family)
        if table is None:
            lines.append(f"  dispatch table for this GPU ({family}): none; where validated kernels exist, "
                         "`auto` still uses torch unless torch.backends.cudnn.benchmark is on")
        else:
            prov = table.get("provenance", {})
            lines.append(f"  dispatch table in use: dispatch_{family}.json, {len(table.get('rows', []))} rows, measured "
                         f"on {prov.get('gpu')} (torch {prov.get('torch')}, triton {prov.get('triton')}, commit "
                         f"{prov.get('commit')}, {prov.get('date')})")
    return lines


def report() -> str:
    lines = [
        f"fusedrnn {__version__}",
        f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"triton {_triton_version()}",
    ]
    family = None
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            cap = torch.cuda.get_device_capability(i)
            props = torch.cuda.get_device_properties(i)
            lines.append(f"cuda:{i} {props.name}, compute capability {cap[0]}.{cap[1]}, {props.multi_processor_count} SMs")
        device = torch.device("cuda", torch.cuda.current_device())
        family = evidence.device_family(device)
    else:
        lines.append("no CUDA device visible")
        device = torch.device("cpu")
    lines.append(f"CUDA extension: {_ext.status()}")
    lines += _records_lines(family)
    lines.append(f"default backend: {dispatch.default_backend()} (FUSEDRNN_BACKEND)")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lines.append(f"backends under `auto`, for a {dtype} GRU/LSTM/RNN (T=128, B=16, H=256) on {device}:")
    explained = {}
    for cell in CELLS:
        spec = CallSpec(cell, device, dtype, 128, 16, 256, 256, 256, False, False, False, False)
        explained[cell] = (dict(dispatch.explain(spec)), dispatch.choose("auto", spec).name)
    for name in NAMES:
        lines.append(f"  {name:<9} {get(name).description}")
        for cell in CELLS:
            reasons, chosen = explained[cell]
            verdict = "chosen" if chosen == name else ("can serve" if not reasons[name] else "; ".join(reasons[name]))
            lines.append(f"            {cell}: {verdict}")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m fusedrnn.info", description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", action="store_true",
                    help="compile the CUDA extension now if this install has none prebuilt (JIT, cached), then report")
    args = ap.parse_args(argv)
    if args.build:
        try:
            _ext.load(build=True)
        except _ext.ExtensionError as e:
            print(f"fusedrnn: no CUDA extension: {e}")
            return 1
    print(report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
