#!/usr/bin/env python3
"""Print w2p's import graph by layer and check that arrows point down: no cycle, no import of a later stage.

    python tools/import_graph.py [REPO]     # the graph, then "ok" or the violations (exit 1)

Every ``import`` / ``from ... import`` of a w2p module counts, also those inside functions (a lazy import is still
a dependency). The layers follow the pipeline: data -> features -> model (encoder, cif, llm) -> train -> decode ->
score; a module may import its own layer or a lower one.
"""
from __future__ import annotations

import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = [  # (layer, module prefixes); the longest matching prefix decides
    (0, ["w2p", "w2p.io", "w2p.config", "w2p.errors", "w2p._ext", "w2p._C"]),
    (1, ["w2p.data", "w2p.synth", "w2p.tasks"]),
    (2, ["w2p.features", "w2p.augment"]),
    (3, ["w2p.cif", "w2p.llm", "w2p.models"]),
    (4, ["w2p.train"]),
    (5, ["w2p.decode", "w2p.infer", "w2p.serve"]),
    (6, ["w2p.score", "w2p.plots"]),
    (7, ["w2p.bin", "w2p.cli", "w2p.info", "w2p.__main__"]),
]
NAMES = ["base I/O", "data", "features", "model", "train", "decode", "score", "entry points"]


def layer_of(mod: str) -> int:
    best, layer = -1, None
    for n, prefixes in LAYERS:
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and len(p) > best:
                best, layer = len(p), n
    if layer is None:
        raise SystemExit(f"{mod}: in no layer; add it to LAYERS in {__file__}")
    return layer


def modules() -> dict[str, str]:
    out = {}
    for d, _, files in os.walk(os.path.join(ROOT, "w2p")):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), ROOT)[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(d, f)
    return out


def imports(path: str, mod: str, known: set[str]) -> set[str]:
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    pkg = mod if path.endswith("__init__.py") else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # "from pkg import mod" imports the submodule pkg.mod when there is one
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n and n != mod and n.startswith("w2p"):
                out.add(n)
    return out


def main(argv=None) -> int:
    global ROOT
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        ROOT = os.path.abspath(argv[0])
    mods = modules()
    graph = {m: imports(p, m, set(mods)) for m, p in sorted(mods.items())}
    bad = []
    for layer, name in enumerate(NAMES):
        members = [m for m in graph if layer_of(m) == layer]
        print(f"[{layer}] {name}")
        for m in members:
            deps = sorted(graph[m])
            print(f"    {m} -> {', '.join(deps) if deps else '(nothing of w2p)'}")
            bad += [f"{m} (layer {layer}) imports {d} (layer {layer_of(d)}, a later stage)"
                    for d in deps if layer_of(d) > layer]
    # cycles: depth-first search, colour per node
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                bad.append("cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            elif d in graph and not state.get(d):
                visit(d)
        stack.pop()
        state[m] = 2

    for m in graph:
        if not state.get(m):
            visit(m)
    if bad:
        print("\nviolations:\n  " + "\n  ".join(bad))
        return 1
    print(f"\nok: {len(graph)} modules, {sum(len(v) for v in graph.values())} imports, no cycle, no upward import")
    return 0


if __name__ == "__main__":
    sys.exit(main())
