"""The bottom layer of w2p: file I/O shared by every stage. Imports nothing of w2p.

* ``atomic_path`` / ``atomic_dir``: the one way anything is written. The data goes to a temporary name in the
  destination's own directory, is flushed to disk, and is renamed over the destination only when complete, so a
  reader (or a resumed run) never sees a half-written file, and a failed write leaves the old file untouched.
* Kaldi-style ``key value`` files: ``read_kv``, ``write_kv`` (sorted by key) and ``write_kv_atomic`` (in order).
* ``git_commit``: the commit of the w2p checkout, written into RESULTS.md and packed models.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections import OrderedDict

TMP_MARK = ".w2ptmp"  # every temporary name contains it (a later run may remove such leftovers)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_OWNER = f"{socket.gethostname().split('.')[0]}-{os.getpid()}"  # who writes a temporary: host and process


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


_SCANNED: set[str] = set()  # directories whose leftover temporaries this process has removed


def _remove_stale(parent: str) -> None:
    """Remove the temporaries in ``parent`` left by a killed run or a full disk: those of a process of this host
    that no longer runs (another process may be writing there right now, e.g. parallel jobs). Once per directory
    and process: a writer's own earlier temporaries are never left behind (atomic_path removes them on error)."""
    if parent in _SCANNED:
        return
    _SCANNED.add(parent)
    host = _OWNER.rsplit("-", 1)[0]
    owner = re.compile(r"^\..*\.(?P<host>[^.]+)-(?P<pid>\d+)\.[^.]+" + re.escape(TMP_MARK))
    with contextlib.suppress(OSError), os.scandir(parent) as it:
        for entry in it:
            m = owner.match(entry.name) if TMP_MARK in entry.name else None
            if m and m["host"] == host and not _alive(int(m["pid"])):
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)


@contextlib.contextmanager
def atomic_path(path: str, *, suffix: str = ""):
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed to ``path``, on error removed.

    ``suffix`` keeps an extension some writers need (matplotlib picks the format from it)."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    _remove_stale(parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.{_OWNER}.", suffix=TMP_MARK + suffix, dir=parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(path: str, content: str | bytes) -> None:
    """Write text (UTF-8) or bytes to ``path`` atomically."""
    with atomic_path(path) as tmp:
        if isinstance(content, bytes):
            with open(tmp, "wb") as f:
                f.write(content)
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(content)


def write_json(path: str, obj, **kwargs) -> None:
    kwargs.setdefault("indent", 1)
    kwargs.setdefault("ensure_ascii", False)
    write_atomic(path, json.dumps(obj, **kwargs) + "\n")


def write_yaml(path: str, obj) -> None:
    import yaml

    write_atomic(path, yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))


@contextlib.contextmanager
def atomic_dir(dest: str, *, replace: bool = False):
    """Yield a temporary directory beside ``dest``; on success it becomes ``dest``.

    ``replace=False``: when ``dest`` appeared meanwhile (another process finished the same work), theirs is kept.
    ``replace=True``: an existing ``dest`` is swapped out and removed only after the new one is in place."""
    dest = os.path.abspath(os.fspath(dest))
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    _remove_stale(parent)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.{_OWNER}.", suffix=TMP_MARK, dir=parent)
    old = None
    try:
        yield tmp
        if replace and os.path.exists(dest):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.old.{_OWNER}.", suffix=TMP_MARK, dir=parent)
            os.rename(dest, os.path.join(old, "x"))
        try:
            os.rename(tmp, dest)
        except OSError:
            if replace or not os.path.isdir(dest):
                raise
        _fsync_dir(parent)
    finally:
        for d in (tmp, old):
            if d and os.path.isdir(d):
                shutil.rmtree(d, ignore_errors=True)


# -- Kaldi-style key/value files ------------------------------------------------------------------------------
def read_kv_lines(path: str) -> list[tuple[str, str]]:
    """``(key, value)`` per line, ``("", "")`` for a blank line (the validator reports positions)."""
    out = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\n")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{n}: not UTF-8 text ({e.reason} at byte {e.start}); convert the file to "
                                 "UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
            if not line.strip():
                out.append(("", ""))
                continue
            parts = line.split(maxsplit=1)
            out.append((parts[0], parts[1].strip() if len(parts) > 1 else ""))
    return out


def read_kv(path: str) -> "OrderedDict[str, str]":
    """Kaldi-style ``key value...`` file -> dict (value = rest of the line, stripped; may be empty).

    Blank lines are skipped; a repeated key is an error naming the file and line."""
    out: "OrderedDict[str, str]" = OrderedDict()
    for n, (key, value) in enumerate(read_kv_lines(path), 1):
        if not key:
            continue
        if key in out:
            raise ValueError(f"{path}:{n}: duplicate key {key!r}")
        out[key] = value
    return out


def write_kv(path: str, mapping: dict) -> None:
    """``key value`` lines sorted by key (byte order, as Kaldi's C-locale sort); dicts/lists as JSON."""
    lines = []
    for k in sorted(mapping):
        v = mapping[k]
        if isinstance(v, (dict, list)):
            v = json.dumps(v, ensure_ascii=False, sort_keys=True)
        lines.append(f"{k} {v}\n")
    write_atomic(path, "".join(lines))


def write_kv_atomic(path: str, items) -> None:
    """``key value`` lines in the given order (a dict or (key, value) pairs)."""
    pairs = items.items() if isinstance(items, dict) else items
    write_atomic(path, "".join(f"{k} {v}\n" for k, v in pairs))


# -- feature index files ---------------------------------------------------------------------------------------
class UnsafeScpError(ValueError):
    """An scp entry that would run a shell command when read."""


def is_pipe(spec: str) -> bool:
    """A Kaldi pipe ("cmd |" or "| cmd"): kaldiio runs it through a shell to read the entry."""
    s = spec.strip()
    return s.endswith("|") or s.startswith("|")


def check_scp_spec(path: str, key: str, spec: str, *, allow_pipes: bool = False) -> str:
    if not allow_pipes and is_pipe(spec):
        raise UnsafeScpError(
            f"{path}: the entry of utterance {key!r} is a shell command ({spec.strip()!r}); w2p does not run commands "
            "named in data files. Fix: regenerate the features with stage 2 (w2p.bin.make_fbank), or, only for a "
            "file you wrote yourself, allow it (--allow_scp_pipes true)")
    return spec


def read_scp(path: str, *, allow_pipes: bool = False) -> "OrderedDict[str, str]":
    """``utt spec`` lines of a feats.scp; a shell-command entry is an error unless ``allow_pipes``."""
    specs = read_kv(path)
    for k, v in specs.items():
        check_scp_spec(path, k, v, allow_pipes=allow_pipes)
    return specs


def load_feats(spec: str):
    """One feature matrix by its scp spec (``file.ark:offset``), as a read-only numpy array."""
    import kaldiio

    return kaldiio.load_mat(spec)


def evenly_spaced(items: list, n: int | None) -> list:
    """At most ``n`` of ``items``, evenly spaced over them (all when ``n`` is falsy or >= len): a deterministic
    sample that covers a set in its sorted order. Ids usually start with the speaker or voice, so the first n would
    be one speaker's."""
    n = int(n or 0)
    if not n or len(items) <= n:
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


# -- provenance -----------------------------------------------------------------------------------------------
def git_commit(path: str | None = None) -> str:
    """Short commit of the w2p checkout (not of the cwd: a recipe may run outside the repo); -dirty if modified."""
    path = path or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "-C", path, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
