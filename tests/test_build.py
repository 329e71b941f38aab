"""The kernels build themselves on first use: the cache, its reuse, the fallbacks and their messages, and an
install with ordinary build isolation into a fresh venv that has no setuptools.

Every case runs real builds in subprocesses (torch.utils.cpp_extension, ninja, the real compiler); failures are
forced with a CUDA toolkit whose nvcc fails, a compiler that fails, or no compiler at all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from smalldepthmask import _build, _ops

pytestmark = pytest.mark.build
REPO = Path(__file__).resolve().parents[1]
STATUS = ("from smalldepthmask import _ops; s = _ops.load_status(); "
          "print('STATUS|' + '|'.join([str(s.get('source')), str(s.get('variant')), '+'.join(_ops.kernels()) or 'none']))")


def _run(args: list[str], env_extra: dict[str, str] | None = None, timeout: float = 900,
         cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("SMALLDEPTHMASK_REQUIRE_EXT", None)
    env.update(env_extra or {})
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)


def _status(proc: subprocess.CompletedProcess) -> list[str]:
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("STATUS|"))
    return line.split("|")[1:]  # [source, variant, kernels]


@pytest.fixture
def failing_cuda(tmp_path) -> Path:
    """A CUDA toolkit folder whose nvcc reports the version torch wants and fails every compile."""
    import torch

    home = tmp_path / "cuda"
    (home / "bin").mkdir(parents=True)
    (home / "include").mkdir()
    nvcc = home / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\ncase \"$*\" in *--version*) echo 'Cuda compilation tools, release "
                    f"{torch.version.cuda or '13.0'}'; exit 0;; esac\necho 'nvcc fatal : forced test failure' >&2; "
                    "exit 1\n")
    nvcc.chmod(0o755)
    return home


def test_cache_is_reused_by_another_process():
    """The session's build (made by the test process) is found by a new process: no second compile."""
    proc = _run([sys.executable, "-c", STATUS])
    source, variant, kernels = _status(proc)
    assert source in ("user cache", "in-tree build")  # found, not compiled now
    assert "compiling" not in proc.stderr
    assert kernels == "+".join(_ops.kernels())


def test_cache_key_changes_with_the_sources(tmp_path):
    """Editing a kernel source moves the build to a new cache folder (so a stale build is never loaded)."""
    import torch

    src = tmp_path / "csrc"
    src.mkdir()
    root = _build._toolchain.csrc_dir()
    for p in _build._toolchain.source_files(root):
        (src / p.name).write_bytes(p.read_bytes())
    a = _build._folder(_build._key(torch, "cpu", src, None, None))
    assert a == _build._folder(_build._key(torch, "cpu", src, None, None))
    (src / "composite.h").write_bytes((src / "composite.h").read_bytes() + b"\n// changed\n")
    assert _build._folder(_build._key(torch, "cpu", src, None, None)) != a


@pytest.mark.skipif(not _build._toolchain.compiler(), reason="no C++ compiler")
def test_cuda_failure_falls_back_to_cpp_and_is_remembered(tmp_path, failing_cuda):
    import torch

    if torch.version.cuda is None:
        pytest.skip("torch is not a CUDA build: there is no CUDA part to fail")
    env = {"SMALLDEPTHMASK_EXT_CACHE": str(tmp_path / "ext"), "CUDA_HOME": str(failing_cuda)}
    first = _run([sys.executable, "-c", STATUS], env)
    assert _status(first)[1:] == ["cpu", "cpu"]
    warnings = [ln for ln in first.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 1, first.stderr
    assert "CUDA part" in warnings[0] and "forced test failure" in warnings[0] and "build.log" in warnings[0]
    second = _run([sys.executable, "-c", STATUS], env)  # neither build is tried again
    assert _status(second) == ["user cache", "cpu", "cpu"]
    assert "compiling" not in second.stderr and "remembered" in second.stderr


def test_cuda_major_mismatch_is_named(tmp_path, failing_cuda):
    import torch

    if torch.version.cuda is None:
        pytest.skip("torch is not a CUDA build")
    nvcc = failing_cuda / "bin" / "nvcc"
    nvcc.write_text(nvcc.read_text().replace(f"release {torch.version.cuda}", "release 99.0"))
    env = {"SMALLDEPTHMASK_EXT_CACHE": str(tmp_path / "ext"), "CUDA_HOME": str(failing_cuda),
           "CXX": "/nonexistent/c++"}
    proc = _run([sys.executable, "-c", STATUS], env)
    assert "nvcc 99.0" in proc.stderr or "no C++ compiler" in proc.stderr  # the first reason checked wins
    assert _status(proc) == ["None", "None", "none"]


@pytest.mark.parametrize("cxx, reason", [("/nonexistent/c++", "no C++ compiler found"),
                                         ("/bin/false", "the build failed")])
def test_no_compiler_falls_back_to_the_reference(tmp_path, failing_cuda, cxx, reason):
    env = {"SMALLDEPTHMASK_EXT_CACHE": str(tmp_path / "ext"), "CUDA_HOME": str(failing_cuda), "CXX": cxx}
    out = tmp_path / "out"
    gen = [sys.executable, "-m", "smalldepthmask.gen", "--shards", str(out), "--limit", "4", "--depth", "none",
           "--compose-size", "64", "--out-size", "32", "--batch-size", "4"]
    auto = _run(gen, env)
    assert auto.returncode == 0, auto.stderr
    assert "using the plain-torch reference" in auto.stderr and reason in auto.stderr
    assert len([ln for ln in auto.stderr.splitlines() if "warning" in ln]) == 1, auto.stderr
    gen[4] = str(tmp_path / "out-ext")
    ext = _run(gen + ["--composite-backend", "ext"], env)
    assert ext.returncode == 2
    assert "Traceback" not in ext.stderr
    err = [ln for ln in ext.stderr.splitlines() if "error" in ln]
    assert len(err) == 1 and "--composite-backend ext" in err[0] and reason in err[0], ext.stderr
    gen[4] = str(tmp_path / "out-strict")
    strict = _run(gen, {**env, "SMALLDEPTHMASK_REQUIRE_EXT": "1"})
    assert strict.returncode == 2 and "SMALLDEPTHMASK_REQUIRE_EXT=1" in strict.stderr
    assert "Traceback" not in strict.stderr


def _venv_without_setuptools(path: Path) -> Path:
    """A venv seeing this one's packages (torch, ...) through a .pth, except setuptools and this package."""
    import site

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    py = path / "bin" / "python"
    view = path / "view"
    view.mkdir()
    hidden = ("setuptools", "pkg_resources", "_distutils_hack", "distutils-precedence", "smalldepthmask",
              "__editable__")
    for sp in site.getsitepackages():
        for entry in Path(sp).iterdir():
            if not entry.name.lower().startswith(hidden) and not (view / entry.name).exists():
                (view / entry.name).symlink_to(entry)
    own = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    Path(own, "view.pth").write_text(str(view) + "\n")
    return py


@pytest.mark.slow
def test_fresh_venv_without_setuptools_installs_and_runs_the_demo(tmp_path):
    py = _venv_without_setuptools(tmp_path / "venv")
    assert _run([str(py), "-c", "import setuptools"]).returncode != 0  # really not there
    src = tmp_path / "src"  # the sources alone: no build/ left over from an earlier install, no venvs
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns("build", ".venv*", ".git", "*.egg-info", "out", "*.so",
                                                             "__pycache__", ".pytest_cache", ".whl"))
    inst = _run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(src)], timeout=900)
    assert inst.returncode == 0, inst.stderr[-3000:]
    where = _run([str(py), "-c", "import smalldepthmask; print(smalldepthmask.__file__)"], cwd=tmp_path)
    assert str(tmp_path / "venv") in where.stdout  # the installed copy, not the repository
    demo = _run([str(py), "-m", "smalldepthmask.gen", "--shards", str(tmp_path / "out")], cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    assert "compiling" not in demo.stderr  # the wheel's shipped sources hash like the repository's: cache hit
    assert "warning" not in demo.stderr.lower(), demo.stderr
    assert (tmp_path / "out" / "manifest.json").is_file()
