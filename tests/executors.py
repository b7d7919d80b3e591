"""Where a test can run a backend: the executors, for parametrising one check over all of them.

| executor            | backend   | device | what runs the kernels                       |
|---------------------|-----------|--------|---------------------------------------------|
| reference-cpu       | reference | cpu    | the pure-PyTorch oracle                      |
| torch-cpu           | torch     | cpu    | torch's own op (ATen/oneDNN)                |
| triton-interpreter  | triton    | cpu    | Triton's interpreter (TRITON_INTERPRET=1)   |
| triton-gpu          | triton    | cuda   | the compiled Triton kernels                 |
| cuda-gpu            | cuda      | cuda   | fusedrnn._C's kernels                       |
| torch-gpu           | torch     | cuda   | cuDNN (the baseline on a GPU)               |

GPU executors carry the ``gpu`` mark (skipped unless FUSEDRNN_TEST_DEVICE=cuda, tests/conftest.py)
and, for the fused backends, ``validates(backend)``: their passing is what the GPU validation records
vouch for. ``slow`` executors (interpreters, emulators) get smaller shapes from the tests.
The CUDA kernels' CPU emulator is an executor of the cuda backend's own tests (tests/cuda_emu.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

FUSED = ("triton", "cuda")


@dataclass(frozen=True)
class Executor:
    backend: str
    device: str

    @property
    def id(self) -> str:
        if self.device == "cuda":
            return f"{self.backend}-gpu"
        return "triton-interpreter" if self.backend == "triton" else f"{self.backend}-cpu"

    @property
    def slow(self) -> bool:
        """Runs kernels one program (or thread) at a time on the CPU: give it small shapes."""
        return self.device == "cpu" and self.backend in FUSED

    @property
    def on_gpu(self) -> bool:
        return self.device == "cuda"

    def param(self):
        return pytest.param(self, id=self.id, marks=gpu_marks(self.backend) if self.on_gpu else [])

    def unavailable(self, cell: str = "gru", dtype: torch.dtype = torch.float32) -> list[str]:
        """Why this executor cannot run a small call of ``cell`` in ``dtype`` here (empty: it can)."""
        from fusedrnn.backends import CallSpec, get

        spec = CallSpec(cell, torch.device(self.device), dtype, 8, 4, 64, 64, 64, False, False, False, False)
        return get(self.backend).reasons(spec, forced=True)

    def skip_unless_available(self, cell: str = "gru", dtype: torch.dtype = torch.float32) -> None:
        why = self.unavailable(cell, dtype)
        if why:
            pytest.skip(f"{self.id} cannot run {cell} {dtype} here: {'; '.join(why)}")


CPU = (Executor("reference", "cpu"), Executor("torch", "cpu"), Executor("triton", "cpu"))
GPU_FUSED = (Executor("triton", "cuda"), Executor("cuda", "cuda"))


def params(*executors: Executor):
    return [e.param() for e in executors]


def gpu_marks(backend: str) -> list:
    """The marks of a check's GPU parametrisation for ``backend``: ``gpu``, and ``validates`` when
    the backend is a fused one (its passing feeds the GPU validation records)."""
    return [pytest.mark.gpu] + ([pytest.mark.validates(backend)] if backend in FUSED else [])


def executor_params(backend: str, cpu_executor: str, cpu_skip_reason: str | None):
    """String-named executors for a backend's own kernel tests: the CPU one (``cpu_executor``, e.g.
    "interpreter"; skipped with ``cpu_skip_reason`` when it cannot run in this session) and "gpu"."""
    cpu = pytest.param(cpu_executor, id=cpu_executor,
                       marks=pytest.mark.skipif(cpu_skip_reason is not None, reason=cpu_skip_reason or ""))
    return [cpu, pytest.param("gpu", id="gpu", marks=gpu_marks(backend))]


def executor_device(executor: str) -> str:
    return "cuda" if executor == "gpu" else "cpu"
