"""The registry's storage: small file operations on a local directory or an ``s3://`` prefix, over the
same ``pyarrow.fs`` resolution as the lake (``data.lake.resolve_filesystem``).

Paths given to a :class:`Store` are relative to its root and use ``/``. Local writes of single files go to
a dot-named temp file that is fsynced and renamed over the target (atomic on POSIX); on an object store a
PUT is atomic by itself. Directory renames exist only on a local root (``rename_dir``); the s3 path of the
registry commits a version by writing its manifest last instead.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.fs as pafs

from cryptopredict.data.lake import resolve_filesystem
from cryptopredict.fsutil import atomic_write_local, fsync_dir, locked_dir

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a local file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()




class Store:
    """File operations under ``root`` (a local directory or ``s3://bucket/prefix``)."""

    def __init__(self, root: str, *, s3_region: str | None = None, s3_endpoint: str | None = None) -> None:
        self.root = str(root)
        self.fs, self.base, self.is_local = resolve_filesystem(self.root, s3_region=s3_region,
                                                               s3_endpoint=s3_endpoint)

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    def path(self, rel: str) -> str:
        """The filesystem path of ``rel`` (relative to the root)."""
        rel = rel.strip("/")
        return f"{self.base}/{rel}" if rel else self.base

    def local_path(self, rel: str) -> Path:
        if not self.is_local:
            raise RuntimeError(f"{self.root!r} is not a local registry")
        return Path(self.path(rel))

    # ------------------------------------------------------------------ reads
    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def is_file(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.File

    def list_dirs(self, rel: str) -> list[str]:
        """Names of the directories directly under ``rel`` (empty when ``rel`` does not exist)."""
        if not self.exists(rel):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel), recursive=False))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def list_files(self, rel: str) -> list[str]:
        """Paths (relative to ``rel``) of every file under ``rel``, recursively, sorted."""
        if not self.exists(rel):
            return []
        top = self.path(rel)
        infos = self.fs.get_file_info(pafs.FileSelector(top, recursive=True))
        return sorted(i.path[len(top):].strip("/") for i in infos if i.type == pafs.FileType.File)

    def read_bytes(self, rel: str) -> bytes:
        path = self.path(rel)
        if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{path} not found in the registry {self.root!r}")
        with self.fs.open_input_stream(path) as fh:
            return fh.read()

    def sha256(self, rel: str) -> str:
        """Hex sha256 of a stored file, streamed."""
        digest = hashlib.sha256()
        with self.fs.open_input_stream(self.path(rel)) as fh:
            while block := fh.read(CHUNK):
                digest.update(block)
        return digest.hexdigest()

    # ------------------------------------------------------------------ writes
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Replace ``rel`` with ``data`` atomically (temp + fsync + rename locally; one PUT on s3)."""
        path = self.path(rel)
        if not self.is_local:
            with self.fs.open_output_stream(path) as out:
                out.write(data)
            return
        atomic_write_local(path, data, durable_dir=True)

    def put_file(self, local: Path, rel: str) -> None:
        """Copy a local file to ``rel`` (no atomicity needed: the caller commits the whole version)."""
        path = self.path(rel)
        if self.is_local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, path)
            return
        with open(local, "rb") as src, self.fs.open_output_stream(path) as out:
            while block := src.read(CHUNK):
                out.write(block)

    def get_file(self, rel: str, local: Path) -> None:
        """Copy ``rel`` to a local file."""
        local.parent.mkdir(parents=True, exist_ok=True)
        with self.fs.open_input_stream(self.path(rel)) as src, open(local, "wb") as out:
            while block := src.read(CHUNK):
                out.write(block)

    def delete_dir(self, rel: str) -> None:
        """Remove ``rel`` and everything under it (nothing when absent)."""
        if not self.exists(rel):
            return
        if self.is_local:
            shutil.rmtree(self.path(rel))
        else:
            self.fs.delete_dir(self.path(rel))

    def rename_dir(self, src: str, dst: str) -> None:
        """Local only: rename a directory into place; fails if ``dst`` exists (never merges)."""
        source, target = self.local_path(src), self.local_path(dst)
        if target.exists():
            raise FileExistsError(f"{target} already exists")
        os.rename(source, target)
        fsync_dir(target.parent)

    @contextmanager
    def locked(self, rel: str) -> Iterator[None]:
        """Serialise writers of ``rel`` across local processes (fcntl); on s3 one writer is assumed."""
        if not self.is_local:
            yield
            return
        with locked_dir(self.local_path(rel)):
            yield
