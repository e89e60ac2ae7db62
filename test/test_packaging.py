"""Packaging: one version (pyproject.toml), an import without side effects, the ``w2p <subcommand>`` entry
point over w2p/bin, and the csrc/ registration layout.  The linter runs in tools/test.sh, not here."""
import ast
import glob
import importlib
import importlib.metadata
import importlib.util
import os
import pkgutil
import re
import subprocess
import sys

import pytest

import w2p
import w2p.bin
from w2p import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # python 3.10
        tomllib = pytest.importorskip("tomli")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def run_python(*args, **kw):
    # this checkout's w2p, also in the child process
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          **kw)


def test_import_w2p_has_no_side_effects():
    code = ("import sys, w2p, w2p.cli; assert 'torch' not in sys.modules, 'import w2p imported torch'; "
            "assert w2p.cli.main(['--help']) == 0; assert 'torch' not in sys.modules, 'w2p --help imported torch'")
    proc = run_python("-c", code)
    assert proc.returncode == 0, proc.stderr


def test_version_is_defined_once_in_pyproject():
    version = pyproject()["project"]["version"]
    try:
        installed = importlib.metadata.version("w2p")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("w2p is not installed: run tools/install.sh (w2p.__version__ comes from the installed metadata)")
    assert installed == version, f"installed metadata: {installed}, pyproject.toml: {version}; rerun tools/install.sh"
    assert w2p.__version__ == version
    for path in ("setup.py", "w2p/__init__.py"):
        with open(os.path.join(ROOT, path)) as f:
            assert version not in f.read(), f"{path} repeats the version; it belongs in pyproject.toml only"


def test_console_scripts_point_at_main_functions():
    scripts = pyproject()["project"]["scripts"]
    assert scripts["w2p"] == "w2p.cli:main"
    for name in ("w2p-infer", "w2p-decode", "w2p-score", "w2p-pack", "w2p-train"):
        module, func = scripts[name].split(":")
        spec = importlib.util.find_spec(module)
        assert spec is not None, f"{name}: {module} not found"
        with open(spec.origin) as f:
            tree = ast.parse(f.read())
        assert any(isinstance(n, ast.FunctionDef) and n.name == func for n in tree.body), f"{name}: no {func}"
    with open(os.path.join(ROOT, "setup.py")) as f:
        assert "entry_points" not in f.read(), "console scripts belong in pyproject.toml [project.scripts]"


def test_help_lists_every_bin_program_and_info():
    proc = run_python("-m", "w2p.cli", "--help")
    assert proc.returncode == 0, proc.stderr
    listed = {m.group(1) for m in re.finditer(r"^  (\S+)  ", proc.stdout, re.M)}
    assert {"train", "info", "decode", "systems"} <= listed, proc.stdout
    assert re.search(r"^  train +Train a system", proc.stdout, re.M), proc.stdout
    programs = set()
    for info in pkgutil.iter_modules(w2p.bin.__path__):
        with open(os.path.join(info.module_finder.path, info.name + ".py")) as f:
            if re.search(r"^def main\(", f.read(), re.M):
                programs.add(info.name.replace("_", "-"))
    assert listed == programs | {"info"}, "every w2p/bin module with a main(argv) is a subcommand, and only those"


def test_subcommand_runs_the_bin_module():
    proc = run_python("-m", "w2p.cli", "train", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout and "--config" in proc.stdout and "--train_dir" in proc.stdout


def test_unknown_subcommand_exits_2_naming_the_known_ones():
    proc = run_python("-m", "w2p.cli", "tarin")
    assert proc.returncode == 2
    assert "'tarin'" in proc.stderr and "train" in proc.stderr and "info" in proc.stderr
    assert run_python("-m", "w2p.cli").returncode == 2  # no subcommand: usage, failure


def test_new_bin_module_is_a_subcommand_without_editing_cli(tmp_path, monkeypatch, capsys):
    (tmp_path / "hello_world.py").write_text(
        '"""Say hello.\n\nMore text."""\nimport sys\n\n\ndef main(argv=None):\n'
        '    print("hello", argv, sys.argv[0])\n    return 3\n')
    (tmp_path / "not_a_program.py").write_text('"""A helper without main."""\n')
    # listed from the source alone: importing it would fail
    (tmp_path / "heavy.py").write_text(
        '"""Heavy program."""\nraise RuntimeError("imported")\n\n\ndef main(argv):\n    pass\n')
    monkeypatch.setattr(w2p.bin, "__path__", [*w2p.bin.__path__, str(tmp_path)])
    importlib.invalidate_caches()
    try:
        assert cli.main(["--help"]) == 0
        out = capsys.readouterr().out
        assert re.search(r"^  hello-world +Say hello\.$", out, re.M), out
        assert re.search(r"^  heavy +Heavy program\.$", out, re.M), out
        assert "not-a-program" not in out
        for spelling in ("hello-world", "hello_world"):
            assert cli.main([spelling, "a"]) == 3
            assert capsys.readouterr().out.strip() == "hello ['a'] w2p hello-world"
    finally:
        for name in ("w2p.bin.hello_world", "w2p.bin.heavy"):
            sys.modules.pop(name, None)


def test_csrc_declares_schemas_as_fragments_beside_their_kernels():
    # each op folder csrc/<op>/ declares its schema once with TORCH_LIBRARY_FRAGMENT (TORCH_LIBRARY may appear
    # only once per namespace, which would stop a second op folder) and registers kernels in cpu/ and gpu/
    ops = [d for d in sorted(glob.glob(os.path.join(ROOT, "csrc", "*"))) if os.path.isdir(d)]
    assert ops, "no op folders under csrc/"
    sources = glob.glob(os.path.join(ROOT, "csrc", "**", "*.c*"), recursive=True)
    for path in sources:
        with open(path) as f:
            assert not re.search(r"TORCH_LIBRARY\(\s*w2p", f.read()), f"{path}: use TORCH_LIBRARY_FRAGMENT(w2p, m)"
    for op in ops:
        def text(pattern):
            out = ""
            for path in glob.glob(os.path.join(op, pattern)):
                with open(path) as f:
                    out += f.read()
            return out
        assert "TORCH_LIBRARY_FRAGMENT(w2p, m)" in text("*.cpp"), f"{op}: schema fragment missing"
        assert "TORCH_LIBRARY_IMPL(w2p, CPU, m)" in text("cpu/*.cpp"), f"{op}/cpu: CPU kernels not registered"
        if glob.glob(os.path.join(op, "gpu", "*.cu")):
            assert "TORCH_LIBRARY_IMPL(w2p, CUDA, m)" in text("gpu/*.cu"), f"{op}/gpu: CUDA kernels not registered"
    assert not os.path.exists(os.path.join(ROOT, "csrc", "shim")), "the nvcc test shim lives in test/cuda_shim"
