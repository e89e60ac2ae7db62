"""The ``w2p`` command: ``w2p <subcommand> [args]`` runs ``python -m w2p.bin.<subcommand> [args]``.

Every module under ``w2p/bin`` that defines ``main(argv)`` is a subcommand (found at run time, so a
new program needs no change here), plus ``w2p info``.  ``prepare-llm`` and ``prepare_llm`` name the
same subcommand.  The listing reads each module's docstring from its source without importing it,
so ``w2p --help`` is instant and imports no torch.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import pkgutil
import sys

# subcommands that live outside w2p/bin
EXTRA = {"info": "w2p.info"}


def _canonical(name: str) -> str:
    return name.replace("_", "-")


def _source_summary(path: str) -> tuple[bool, str]:
    """(defines a top-level ``main``, first line of the module docstring) of a module's source file."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
    except (OSError, SyntaxError, ValueError):
        # still listed (the import will report the real error when the subcommand is run)
        return True, "(could not read the module source)"
    has_main = any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "main"
                   for node in tree.body)
    doc = (ast.get_docstring(tree) or "").strip()
    first = doc.splitlines()[0].replace("``", "") if doc else ""
    return has_main, first


def commands() -> dict[str, tuple[str, str]]:
    """{subcommand (dashed): (module, one-line description)}, sorted by name."""
    import w2p.bin

    found: dict[str, tuple[str, str]] = {}
    for info in pkgutil.iter_modules(w2p.bin.__path__):
        if info.ispkg or info.name.startswith("_"):
            continue
        path = os.path.join(info.module_finder.path, info.name + ".py")
        has_main, doc = _source_summary(path) if os.path.isfile(path) else (True, "")
        if has_main:
            found[_canonical(info.name)] = (f"w2p.bin.{info.name}", doc)
    for name, module in EXTRA.items():
        spec = importlib.util.find_spec(module)
        doc = _source_summary(spec.origin)[1] if spec and spec.origin else ""
        found[_canonical(name)] = (module, doc)
    return dict(sorted(found.items()))


def usage(cmds: dict[str, tuple[str, str]]) -> str:
    width = max(len(n) for n in cmds)
    lines = ["usage: w2p <subcommand> [args]   (w2p <subcommand> --help for its options)", "",
             "subcommands (python -m w2p.bin.<name> runs the same program):"]
    lines += [f"  {name:<{width}}  {doc}" for name, (_, doc) in cmds.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmds = commands()
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(cmds), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = _canonical(argv[0]), argv[1:]
    if name not in cmds:
        print(f"w2p: unknown subcommand {argv[0]!r}; known: {', '.join(cmds)} (w2p --help describes them)",
              file=sys.stderr)
        return 2
    module = importlib.import_module(cmds[name][0])
    # argparse names the program after sys.argv[0]: make usage lines read "w2p <name>"
    saved = sys.argv
    sys.argv = [f"w2p {name}", *rest]
    try:
        rc = module.main(rest)
    finally:
        sys.argv = saved
    return 0 if rc is None else rc


if __name__ == "__main__":
    raise SystemExit(main())
