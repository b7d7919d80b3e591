"""Installs without torch at build time: setup.py installs the package with its CUDA sources and no
prebuilt extension; the cuda backend then JIT-compiles them on first forced use (fusedrnn/_ext.py).
torch.utils.cpp_extension.load is replaced by a stand-in here (no GPU, and a real build takes
minutes); the real build is what a GPU session checks."""

import os
import re
import shutil
import subprocess
import sys
import textwrap
import types
import zipfile
from pathlib import Path

import pytest
import torch

from fusedrnn import _build, _ext
from fusedrnn.backends import CallSpec, get

try:  # the project's CUDA tool finder (bench/sass.py; fusedrnn.bench when installed)
    from fusedrnn.bench.sass import cuda_tool
except ImportError:
    from bench.sass import cuda_tool

ROOT = Path(__file__).resolve().parents[1]


# --- the build without torch -----------------------------------------------------------------------


def _hide_torch(tmp_path: Path) -> dict:
    """An environment in which `import torch` fails, as in pip's isolated build environment."""
    hide = tmp_path / "hide_torch"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    return {**os.environ, "PYTHONPATH": str(hide)}


def test_setup_without_torch_says_so_and_succeeds(tmp_path):
    out = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, env=_hide_torch(tmp_path),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    said = [line for line in out.stderr.splitlines() if line.startswith("fusedrnn setup:")]
    assert len(said) == 1 and "torch is not importable here (pip's build isolation)" in said[0], said
    assert "compiles it on first use" in said[0]


def test_wheel_built_without_torch_holds_the_cuda_sources_and_works(tmp_path):
    """`pip wheel` with torch unimportable (what an isolated build sees): the wheel holds fusedrnn/csrc
    (every source and header the fingerprint covers) and no prebuilt extension; installed alone, the
    package imports, finds its sources, runs on the CPU and reports the cuda extension's state."""
    src = tmp_path / "src"  # the working tree's package, as an sdist would hold it
    skip = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info", "results", "emu")
    for rel in ("fusedrnn", "kernels", "bench", "csrc"):
        shutil.copytree(ROOT / rel, src / rel, ignore=skip)
    for rel in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / rel, src / rel)
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-build-isolation", "--no-deps", "-w",
                        str(wheels), str(src)], env=_hide_torch(tmp_path), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "torch is not importable here" in r.stdout + r.stderr
    (wheel,) = wheels.glob("fusedrnn-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {Path(n).name for n in names if n.startswith("fusedrnn/csrc/")}
    assert shipped == {p.name for p in _build.fingerprint_files(ROOT / "csrc")}
    assert not any("/_C" in n and n.endswith(".so") for n in names)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, timeout=300)
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(site)!r})
        # An editable install of the checkout (CI's) puts a finder on sys.meta_path that would serve
        # submodules the installed package lacks (fusedrnn._C) from the checkout: the wheel alone here.
        sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
        import torch, fusedrnn
        from fusedrnn import _build, _ext
        assert fusedrnn.__file__.startswith({str(site)!r}), fusedrnn.__file__
        assert _ext.csrc_dir() == __import__("pathlib").Path({str(site)!r}).resolve() / "fusedrnn" / "csrc"
        print(_build.source_hash(_build.fingerprint_files(_ext.csrc_dir())))
        print(fusedrnn.LSTM(3, 4)(torch.randn(5, 2, 3))[0].shape)
        print(_ext.status())
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == _build.source_hash(_build.fingerprint_files(ROOT / "csrc")), "the same kernel fingerprint"
    assert lines[1] == "torch.Size([5, 2, 4])"
    if not torch.cuda.is_available():
        assert lines[2].startswith("unavailable: not prebuilt") and "no CUDA device to compile for" in lines[2]


def test_prebuilt_and_jit_builds_share_the_kernel_fingerprint():
    info = _ext.build_info()
    if not _ext.prebuilt_present() or not isinstance(info, dict):
        pytest.skip(f"no prebuilt extension here: {info}")
    assert info["source_hash"] == _build.source_hash(_build.fingerprint_files(_ext.csrc_dir()))


def extension_targets(so: Path, cuobjdump: str) -> tuple[set[str], set[str]]:
    """({"80", "90"}, {"90"}): the SASS architectures and the PTX virtual architectures in a shared
    object, as cuobjdump lists them (one entry per translation unit)."""
    elf = subprocess.run([cuobjdump, "--list-elf", str(so)], capture_output=True, text=True).stdout
    ptx = subprocess.run([cuobjdump, "--list-ptx", str(so)], capture_output=True, text=True).stdout
    return (set(re.findall(r"\.sm_(\d+)\.cubin", elf)), set(re.findall(r"\.sm_(\d+)\.ptx", ptx)))


def test_prebuilt_extension_targets_the_default_archs():
    """The ahead-of-time build (what `pip wheel --no-build-isolation .` packs): SASS for sm_80 and
    sm_90, and compute_90 PTX that the driver compiles for GPUs newer than both."""
    info = _ext.build_info()
    if not _ext.prebuilt_present() or not isinstance(info, dict):
        pytest.skip(f"no prebuilt extension here: {info}")
    if info["arch_list"] != _build.DEFAULT_ARCH_LIST:
        pytest.skip(f"built for TORCH_CUDA_ARCH_LIST={info['arch_list']!r}, not the default")
    cuobjdump = cuda_tool("cuobjdump")
    if cuobjdump is None:
        pytest.skip("cuobjdump not found (CUDA toolkit or Triton)")
    sass, ptx = extension_targets(Path(_ext._load_prebuilt().__file__), cuobjdump)
    assert sass == {"80", "90"} and ptx == {"90"}, (sass, ptx)


# --- the JIT build, with torch's loader stood in for -----------------------------------------------


@pytest.fixture
def jit(monkeypatch, tmp_path):
    """No prebuilt extension, a JIT build possible, torch's loader recorded (or failing)."""
    calls = []
    state = types.SimpleNamespace(calls=calls, fail=None, build_dir=tmp_path / "ext" / "fusedrnn_C_test", arch="9.0")

    def fake_load(**kw):
        calls.append(dict(kw, arch_env=os.environ.get("TORCH_CUDA_ARCH_LIST")))
        if state.fail:
            raise RuntimeError(state.fail)
        Path(kw["build_directory"], kw["name"] + ".so").write_bytes(b"")
        return types.SimpleNamespace(build_info=lambda: {"source_hash": "abc", "torch_version": torch.__version__,
                                                         "cuda_version": str(torch.version.cuda)})

    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    monkeypatch.setattr(_ext, "prebuilt_present", lambda: False)
    monkeypatch.setattr(_ext, "jit_unavailable", lambda: [])
    monkeypatch.setattr(_ext, "jit_target", lambda: ("fusedrnn_C_test", state.build_dir, state.arch, "abc"))
    monkeypatch.setattr(_ext, "_loaded", [])
    monkeypatch.setattr(_ext, "_failures", {})
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "7.0")
    return state


def test_nothing_builds_until_the_cuda_backend_is_forced(jit):
    assert _ext.needs_jit_build()
    assert "not built yet" in _ext.status() and "--build" in _ext.status()
    assert "not built yet" in _ext.build_info()
    spec = CallSpec("gru", torch.device("cuda", 0), torch.float16, 8, 2, 16, 16, 16, False, False, False, False)
    assert get("cuda").reasons(spec, forced=False) == [
        "the CUDA extension is not built yet: it is JIT-compiled on first use of backend='cuda' "
        "(or python -m fusedrnn.info --build)"]
    with pytest.raises(_ext.ExtensionError, match="not built yet"):
        _ext.load(build=False)
    assert jit.calls == [], "auto, info and build_info never start a build"


def test_first_forced_use_builds_once_with_one_line(jit, capfd):
    spec = CallSpec("gru", torch.device("cuda", 0), torch.float16, 8, 2, 16, 16, 16, False, False, False, False)
    get("cuda").reasons(spec, forced=True)  # a forced call: compiles (the device check then reports no GPU)
    err = capfd.readouterr().err
    assert err.count("fusedrnn: compiling the CUDA extension for sm_90") == 1 and str(jit.build_dir) in err
    (call,) = jit.calls
    assert call["name"] == "fusedrnn_C_test" and call["build_directory"] == str(jit.build_dir)
    assert call["arch_env"] == "9.0" and os.environ["TORCH_CUDA_ARCH_LIST"] == "7.0", "the arch list is restored"
    assert "'-DFUSEDRNN_SOURCE_HASH=\"abc\"'" in call["extra_cuda_cflags"] and call["with_cuda"]
    assert "'-DFUSEDRNN_ARCH_LIST=\"9.0\"'" in call["extra_cflags"], "quoted for the shell ninja runs"
    assert sorted(Path(s).name for s in call["sources"]) == [p.name for p in _build.sources(_ext.csrc_dir())]
    assert _ext.load() is _ext.load() and len(jit.calls) == 1
    assert not _ext.needs_jit_build() and _ext.status().startswith("JIT-built for sm_90 (cache ")
    assert _ext.build_info()["source_hash"] == "abc"


def test_a_cached_build_is_loaded_without_a_build_line(jit, capfd):
    jit.build_dir.mkdir(parents=True)
    (jit.build_dir / "fusedrnn_C_test.so").write_bytes(b"")
    assert not _ext.needs_jit_build() and _ext.status().startswith("JIT-built")
    _ext.load(build=False)  # auto's path: a cached build is loaded and considered
    assert len(jit.calls) == 1 and "compiling" not in capfd.readouterr().err


def test_a_failed_build_warns_once_naming_its_log_and_is_not_retried(jit):
    jit.fail = "Error building extension 'fusedrnn_C_test': nvcc fatal : boom"
    with pytest.warns(RuntimeWarning, match=r"failed; build log: .*fusedrnn-build.log.*uses the next backend"):
        with pytest.raises(_ext.ExtensionError) as e:
            _ext.load()
    log = jit.build_dir / "fusedrnn-build.log"
    assert str(log) in str(e.value) and "nvcc fatal : boom" in log.read_text()
    with pytest.raises(_ext.ExtensionError, match="build log"):
        _ext.load()
    assert len(jit.calls) == 1
    assert _ext.status().startswith("unavailable: the JIT build") and str(log) in _ext.status()
    spec = CallSpec("lstm", torch.device("cuda", 0), torch.float16, 8, 2, 16, 16, 16, False, False, False, False)
    reasons = get("cuda").reasons(spec, forced=False)
    assert any(str(log) in r for r in reasons), "auto skips cuda, naming the log"


def test_the_cache_is_keyed_by_arch_torch_python_and_sources(monkeypatch, tmp_path):
    if _ext.csrc_dir() is None:
        pytest.skip("no CUDA sources here")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("FUSEDRNN_JIT_ARCH", "8.0")
    name80, dir80, arch, src_hash = _ext.jit_target()
    monkeypatch.setenv("FUSEDRNN_JIT_ARCH", "9.0")
    name90, dir90, _, _ = _ext.jit_target()
    assert arch == "8.0" and name80 != name90 and dir80.parent == dir90.parent
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert dir90 == tmp_path / f"{py}{getattr(sys, 'abiflags', '')}_cu{str(torch.version.cuda).replace('.', '')}" / name90
    assert src_hash == _build.source_hash(_build.fingerprint_files(_ext.csrc_dir()))
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    assert _ext.jit_target()[0] != name90
