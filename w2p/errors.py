"""One error style for every command: ``error: <what is wrong, where, and the fix>`` on stderr, exit status 1, no
traceback. ``--verbose`` anywhere on the command line (or ``W2P_VERBOSE=1``) shows the traceback as well.

Library code raises ordinary exceptions whose message names the file or utterance and the fix; the commands
(``w2p/bin``) wrap their ``main`` with ``cli_main`` so that users read that message, not a stack dump.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys

# exceptions whose message is written for the user; anything else is a bug and keeps its traceback
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError, RuntimeError,
               OSError, TypeError)


def _verbose(argv) -> bool:
    return os.environ.get("W2P_VERBOSE", "") not in ("", "0") or "--verbose" in argv


def cli_main(main):
    """Decorate a command's ``main(argv=None) -> int``: user errors become one ``error:`` line and exit 1."""
    @functools.wraps(main)
    def wrapped(argv=None):
        args = list(sys.argv[1:] if argv is None else argv)
        verbose = _verbose(args)
        if "--verbose" in args:
            args.remove("--verbose")
        try:
            return main(args)
        except USER_ERRORS as e:
            if verbose:
                raise
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e) or type(e).__name__
            print(f"error: {msg}", file=sys.stderr)
            print("(run with --verbose for the traceback)", file=sys.stderr)
            return 1

    return wrapped


def _number(kind, low: float, strict: bool):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if v < low or (strict and v == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low:g}, got {text}")
        return v

    parse.__name__ = f"{kind.__name__} {'>' if strict else '>='} {low:g}"
    return parse


# argparse types: the value is checked when the command line is parsed, before anything is loaded
positive_int = _number(int, 0, True)
nonnegative_int = _number(int, 0, False)
nonnegative_float = _number(float, 0.0, False)
positive_float = _number(float, 0.0, True)
