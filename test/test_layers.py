"""Arrows point down: w2p's import graph has no cycle and no module imports a later stage; the Hugging Face model
is driven from w2p/llm.py only."""
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "import_graph.py")


def _run(repo):
    return subprocess.run([sys.executable, SCRIPT, repo], capture_output=True, text=True, timeout=60)


def test_import_graph_has_no_cycle_and_no_upward_import():
    p = _run(ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "no cycle, no upward import" in p.stdout


def test_import_graph_check_catches_a_planted_upward_import_and_cycle(tmp_path):
    shutil.copytree(os.path.join(ROOT, "w2p"), tmp_path / "w2p", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    with open(tmp_path / "w2p" / "llm.py", "a") as f:
        f.write("\n\ndef _planted():\n    from w2p.decode import load_set  # noqa: F401\n")
    with open(tmp_path / "w2p" / "tasks.py", "a") as f:
        f.write("\n\ndef _planted():\n    import w2p.data.datadir  # noqa: F401\n")
    with open(tmp_path / "w2p" / "data" / "datadir.py", "a") as f:
        f.write("\n\ndef _planted():\n    import w2p.tasks  # noqa: F401\n")
    p = _run(str(tmp_path))
    assert p.returncode == 1
    assert "w2p.llm (layer 3) imports w2p.decode (layer 5, a later stage)" in p.stdout
    assert re.search(r"cycle: w2p\.(data\.datadir|tasks) -> .*w2p\.(tasks|data\.datadir)", p.stdout), p.stdout


def test_only_llm_py_drives_the_hugging_face_model():
    hits = []
    for d, _, files in os.walk(os.path.join(ROOT, "w2p")):
        for f in files:
            path = os.path.join(d, f)
            if f.endswith(".py") and os.path.relpath(path, ROOT) != os.path.join("w2p", "llm.py"):
                text = open(path, encoding="utf-8").read()
                hits += [f"{path}: {m.group(0)}" for m in re.finditer(r"llm\.(model|tokenizer)\b", text)]
    assert not hits, hits
