"""The build: CUDA decision, MPI flags, the CUDA kernels compile, and the "not built" error."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from twinhpc import _build, ops
from twinhpc.errors import TwinError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NVCC = "/opt/cuda/bin/nvcc"  # a made-up toolkit path: cuda_enabled only checks it is given


# -- the CUDA decision -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mode, nvcc, torch_cuda, expected",
    [
        ("auto", NVCC, "12.4", True),
        ("auto", None, "12.4", False),
        ("auto", NVCC, None, False),
        ("0", NVCC, "12.4", False),
        ("1", NVCC, "12.4", True),
    ],
)
def test_cuda_enabled_needs_toolkit_and_cuda_torch(mode, nvcc, torch_cuda, expected):
    assert _build.cuda_enabled(mode, nvcc, torch_cuda) is expected


@pytest.mark.parametrize(
    "mode, nvcc, torch_cuda, message",
    [
        ("1", None, "12.4", "the CUDA toolkit"),
        ("1", NVCC, None, "a CUDA-enabled torch"),
        ("yes", NVCC, "12.4", "expected one of auto, 0, 1"),
    ],
)
def test_cuda_enabled_explains_what_is_missing(mode, nvcc, torch_cuda, message):
    with pytest.raises(_build.BuildError, match=message):
        _build.cuda_enabled(mode, nvcc, torch_cuda)


@pytest.mark.skipif(torch.version.cuda is not None, reason="needs a CPU build of torch")
def test_cpu_torch_builds_without_cuda_on_auto_and_fails_on_1(monkeypatch):
    monkeypatch.setenv("TWINHPC_CUDA", "auto")
    assert _build.cuda_from_env() is False
    monkeypatch.setenv("TWINHPC_CUDA", "1")
    with pytest.raises(_build.BuildError, match="this torch is a CPU build"):
        _build.cuda_from_env()


def test_find_nvcc_prefers_cuda_home(tmp_path):
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.touch()
    assert _build.find_nvcc({"CUDA_HOME": str(tmp_path), "PATH": ""}) == str(nvcc)
    assert _build.find_nvcc({"CUDA_HOME": str(tmp_path / "missing"), "PATH": ""}) is None


def test_cuda_arch_list_is_what_torch_and_nvcc_share_with_ptx_for_the_newest():
    torch_flags = "sm_50 sm_80 sm_90 sm_100 compute_100"
    nvcc_codes = "sm_75 sm_80 sm_86 sm_90"
    assert _build.cuda_arch_list(torch_flags, nvcc_codes) == "8.0;9.0+PTX"
    with pytest.raises(_build.BuildError, match="no GPU architecture in common"):
        _build.cuda_arch_list("sm_50", nvcc_codes)


# -- MPI flags ---------------------------------------------------------------------------------
def test_split_mpi_flags_drops_cxx_bindings_and_adds_rpath():
    tokens = ["-I/m/include", "-pthread", "-L/m/lib", "-lmpi_cxx", "-lmpi"]
    flags = _build.split_mpi_flags("mpicxx", tokens)
    assert flags.compile_args == ["-I/m/include", "-pthread"]
    assert flags.link_args == ["-pthread", "-L/m/lib", "-lmpi", "-Wl,-rpath,/m/lib"]


def test_mpi_flags_without_a_wrapper_says_how_to_fix(tmp_path):
    with pytest.raises(_build.BuildError, match="no MPI C\\+\\+ compiler wrapper found.*MPICXX"):
        _build.mpi_flags({"PATH": str(tmp_path)})


def test_mpi_flags_with_a_broken_wrapper(tmp_path):
    with pytest.raises(_build.BuildError, match="answers neither"):
        _build.mpi_flags({"MPICXX": str(tmp_path / "mpicxx"), "PATH": ""})


@pytest.mark.skipif(shutil.which("mpicxx") is None, reason="no mpicxx on PATH")
def test_mpi_flags_from_this_machines_wrapper():
    flags = _build.mpi_flags()
    assert any(a.startswith("-I") for a in flags.compile_args)
    assert any(a.startswith("-lmpi") for a in flags.link_args)
    assert not set(flags.link_args) & set(_build.MPI_CXX_LIBS)


# -- the C++ runtime ---------------------------------------------------------------------------
def _fake_cxx(tmp_path, found):
    """A compiler that answers -print-file-name=NAME with a path for the names in ``found``."""
    for name in found:
        (tmp_path / name).write_text("")
    cxx = tmp_path / "g++"
    cxx.write_text(
        "#!/bin/sh\nname=${1#-print-file-name=}\n"
        f'if [ -e "{tmp_path}/$name" ]; then echo "{tmp_path}/$name"; else echo "$name"; fi\n'
    )
    cxx.chmod(0o755)
    return str(cxx)


def test_a_compiler_with_the_shared_runtime_needs_no_extra_link_argument(tmp_path):
    assert _build.libstdcxx_link_args(_fake_cxx(tmp_path, ["libstdc++.so", "libstdc++.so.6"])) == []


def test_a_compiler_with_only_the_static_runtime_links_the_shared_one(tmp_path):
    args = _build.libstdcxx_link_args(_fake_cxx(tmp_path, ["libstdc++.so.6"]))
    assert args == [str(tmp_path / "libstdc++.so.6")]


def test_a_compiler_that_cannot_say_gets_no_extra_link_argument(tmp_path):
    assert _build.libstdcxx_link_args(_fake_cxx(tmp_path, [])) == []
    assert _build.libstdcxx_link_args(str(tmp_path / "no-such-compiler")) == []


def test_cxx_compiler_is_cxx_first_word():
    assert _build.cxx_compiler({"CXX": "/opt/gcc/bin/g++ -m64"}) == "/opt/gcc/bin/g++"


# -- the CUDA source compiles ------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH")
def test_cuda_kernels_compile_with_nvcc(tmp_path):
    obj = tmp_path / "pack_kernels.o"
    proc = subprocess.run(
        ["nvcc", "-std=c++17", "-O3", "-c", os.path.join(ROOT, "csrc", "cuda", "pack_kernels.cu"), "-o", str(obj)],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr
    assert obj.stat().st_size > 0


# -- the built extension -----------------------------------------------------------------------
@pytest.mark.skipif(not ops.available(), reason=f"twinhpc._C is not built; {ops.BUILD_HINT}")
def test_extension_loads_from_the_source_tree():
    from twinhpc import _C

    assert os.path.dirname(_C.__file__) == os.path.join(ROOT, "twinhpc")
    assert ops.build_info()["torch"] == torch.__version__.split("+")[0], "built against another torch: rebuild"


@pytest.mark.skipif(not ops.available(), reason=f"twinhpc._C is not built; {ops.BUILD_HINT}")
@pytest.mark.skipif(shutil.which("readelf") is None, reason="no readelf (binutils) on PATH")
def test_extension_shares_the_shared_cxx_runtime_and_raises_its_errors():
    """twinhpc._C needs libstdc++.so.6 (no private copy of the C++ runtime: with one, the
    error below crashed the process instead of raising) and its argument errors arrive as
    Python exceptions with the index in the message."""
    from twinhpc import _C

    dynamic = subprocess.run(["readelf", "-d", _C.__file__], capture_output=True, text=True, check=True).stdout
    assert "[libstdc++.so.6]" in dynamic, dynamic
    with pytest.raises(TypeError, match=r"tensors\[1\] has dtype int32 but tensors\[0\] has float32"):
        ops.pack([torch.ones(2), torch.ones(2, dtype=torch.int32)])


def test_ops_without_the_extension_raise_a_clear_error(monkeypatch):
    import twinhpc

    monkeypatch.setitem(sys.modules, "twinhpc._C", None)
    monkeypatch.delattr(twinhpc, "_C", raising=False)
    monkeypatch.setattr(ops, "_ext", None)
    assert ops.available() is False
    with pytest.raises(TwinError, match=r"not built.*python setup.py build_ext --inplace"):
        ops.pack([torch.ones(1)])
