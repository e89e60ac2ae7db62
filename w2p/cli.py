"""``w2p`` command: ``w2p info`` and the other sub-commands."""
from __future__ import annotations

import sys

COMMANDS = {
    "info": "w2p.info",
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: w2p {" + ",".join(COMMANDS) + "} [args]", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import importlib

    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
