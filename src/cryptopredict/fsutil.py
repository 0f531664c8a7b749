"""Crash-safe local file primitives shared by the lake, the model registry and the prediction log."""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_local(path: str | os.PathLike[str], data: bytes | Callable[[BinaryIO], None], *,
                       durable_dir: bool = False) -> None:
    """Replace the file at ``path`` with ``data`` (bytes, or a function writing to the open file): a
    temporary file ``.tmp-<random>-<name>`` in the same folder, fsynced, renamed over it (a reader sees the
    old or the new content, never a part). ``durable_dir``: fsync the folder too."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".tmp-{uuid.uuid4().hex}-{target.name}")
    try:
        with open(tmp, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        if durable_dir:
            fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def locked_dir(directory: str | os.PathLike[str], name: str = ".lock") -> Iterator[None]:
    """An exclusive lock (fcntl) on ``directory/name`` across local processes, created when missing."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / name, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
