"""File-system helpers shared by the whole package: the one atomic write, the one way to
set an untrusted folder aside.

A file another part of the tool (or a reader such as ``status``) may read while it is
written, or that a kill may interrupt, is written with :func:`atomic_write`: a fresh
temporary file in the same folder (``O_EXCL | O_NOFOLLOW``: never an existing file, never
through a link), then ``os.replace`` onto the name. ``os.replace`` replaces a symbolic link
planted at the name by the file itself; the link's target is never written.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)


def _tmp_name(path: Path) -> Path:
    # short enough that a name near NAME_MAX still leaves room for the suffix
    return path.with_name(f".{path.name[:64]}.{os.getpid()}.{threading.get_ident()}.tmp")


def atomic_write(path: Path | str, data: bytes | str, *, mode: int = 0o644) -> Path:
    """Write ``data`` (str is UTF-8) to ``path`` so that a reader or a kill never sees half
    a file and a symbolic link at ``path`` is replaced, not followed; returns ``path``.

    ``mode`` is filtered by the umask (not mkstemp's 0600: reports and records are meant to
    be readable by colleagues).
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = _tmp_name(path)
    fd = os.open(tmp, _FLAGS, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: Path | str, data: Any, **dumps: Any) -> Path:
    """:func:`atomic_write` of ``json.dumps(data, indent=2, sort_keys=True, **dumps)`` + newline."""
    options: dict[str, Any] = {"indent": 2, "sort_keys": True, **dumps}
    return atomic_write(path, json.dumps(data, **options) + "\n")


def read_regular_file(path: Path | str, *, limit: int | None = None) -> bytes:
    """The bytes of ``path``, which must be a regular file (not a FIFO, a device or a
    directory: opening a FIFO without a writer would block forever).

    Raises ``OSError`` (``IsADirectoryError``, or ``errno.EINVAL`` with a message saying
    what the file is) for anything else.
    """
    import errno
    import stat

    path = Path(path)
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a directory"
            if stat.S_ISDIR(st.st_mode)
            else "a pipe (FIFO)"
            if stat.S_ISFIFO(st.st_mode)
            else "a device or socket"
        )
        raise OSError(errno.EINVAL, f"is {kind}, not a regular file", str(path))
    with open(path, "rb") as f:
        return f.read() if limit is None else f.read(limit)


def set_aside(path: Path | str, tag: str = "interrupted") -> Path | None:
    """Rename an untrusted file or folder to ``<name>.<tag>-<k>`` (first free k >= 1) so it is
    kept as evidence but never read back; returns the new path (None when ``path`` is gone)."""
    path = Path(path)
    if not path.exists():
        return None
    k = 1
    while (target := path.with_name(f"{path.name}.{tag}-{k}")).exists():
        k += 1
    path.rename(target)
    return target
