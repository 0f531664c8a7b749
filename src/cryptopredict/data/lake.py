"""The Parquet lake: one directory per table, Hive-style partitions, one file per partition.

Any ``pyarrow.fs`` filesystem works: a local path by default, ``s3://bucket/prefix`` through the same code.
Writes are upserts by the table's key: the partition's file is read, merged with the new rows, sorted by key
and written back whole. On a local disk the new file is written beside the old one under a dot-name, fsynced
and renamed over it (atomic on POSIX), so a reader — or a process killed mid-write — sees either the old or
the new file, never half of one; on object stores a PUT is atomic by itself. Files whose names start with
``.`` are ignored by readers, so leftovers of a killed write are harmless and swept by the next write.
Rows whose key already exists are replaced by the new values (or kept, for tables declared keep-first),
so re-ingesting the same rows leaves the same content and rewrites nothing.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cryptopredict.data.schemas import QUARANTINE, TABLES, TableSpec, derived_spec, table_spec
from cryptopredict.fsutil import atomic_write_local, locked_dir

log = logging.getLogger(__name__)

DATA_FILE = "part-0.parquet"
KEEP_FIRST_TABLES = {QUARANTINE.name}  # first sighting wins: re-quarantining a row must not change it


@dataclass(frozen=True)
class UpsertResult:
    """What one upsert did to one partition."""

    table: str
    partition: str
    inserted: int
    updated: int
    unchanged: int
    rows_after: int

    @property
    def changed(self) -> bool:
        return self.inserted + self.updated > 0


def resolve_filesystem(root: str, *, s3_region: str | None = None,
                       s3_endpoint: str | None = None) -> tuple[pafs.FileSystem, str, bool]:
    """``root`` → (filesystem, base path inside it, is_local)."""
    if root.startswith("s3://"):
        kwargs: dict[str, str] = {}
        if s3_region:
            kwargs["region"] = s3_region
        if s3_endpoint:
            kwargs["endpoint_override"] = s3_endpoint
        fs = pafs.S3FileSystem(**kwargs)
        return fs, root.removeprefix("s3://").rstrip("/"), False
    if "://" in root:
        fs, path = pafs.FileSystem.from_uri(root)
        return fs, path.rstrip("/"), isinstance(fs, pafs.LocalFileSystem)
    return pafs.LocalFileSystem(), str(Path(root).expanduser().resolve()), True


def partition_path(spec: TableSpec, values: Mapping[str, object]) -> str:
    """``exchange=binance/symbol=BTCUSDT/timeframe=1h`` (values URL-quoted); '' for unpartitioned tables."""
    missing = [c for c in spec.partition_by if c not in values]
    if missing:
        raise ValueError(f"table {spec.name!r}: partition values missing for {missing}")
    return "/".join(f"{c}={quote(str(values[c]), safe='')}" for c in spec.partition_by)


def parse_partition_path(path: str) -> dict[str, str]:
    return {k: unquote(v) for k, v in (part.split("=", 1) for part in path.split("/") if "=" in part)}


def to_arrow(spec: TableSpec, df: pd.DataFrame) -> pa.Table:
    """Cast a frame to the table's exact schema (column order, types); a ValueError names what does not fit."""
    missing = [c for c in spec.columns if c not in df.columns]
    if missing:
        raise ValueError(f"table {spec.name!r}: missing columns {missing}")
    try:
        return pa.Table.from_pandas(df[spec.columns], schema=spec.schema, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"table {spec.name!r}: rows do not fit the schema: {exc}") from None


def _empty_frame(spec: TableSpec) -> pd.DataFrame:
    return spec.schema.empty_table().to_pandas()


class Lake:
    """A Parquet store of the tables in ``schemas.TABLES`` under ``root``."""

    def __init__(self, root: str | os.PathLike[str], *, s3_region: str | None = None,
                 s3_endpoint: str | None = None, filesystem: pafs.FileSystem | None = None) -> None:
        self.root = str(root)
        if filesystem is not None:
            self.fs, self.base, self.is_local = filesystem, self.root.rstrip("/"), isinstance(
                filesystem, pafs.LocalFileSystem)
        else:
            self.fs, self.base, self.is_local = resolve_filesystem(
                self.root, s3_region=s3_region, s3_endpoint=s3_endpoint)

    def __repr__(self) -> str:
        return f"Lake({self.root!r})"

    # ---------------------------------------------------------------- paths
    def _dir(self, spec: TableSpec, partition: str) -> str:
        return "/".join(p for p in (self.base, spec.name, partition) if p)

    def partitions(self, table: str | TableSpec) -> list[str]:
        """Partition paths (relative to the table) that hold a data file, sorted."""
        spec = table_spec(table)
        top = self._dir(spec, "")
        if self.fs.get_file_info(top).type == pafs.FileType.NotFound:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(top, recursive=True))
        found = []
        for info in infos:
            if info.type == pafs.FileType.File and info.base_name == DATA_FILE:
                rel = info.path[len(top):].strip("/")
                found.append(rel.rsplit("/", 1)[0] if "/" in rel else "")
        return sorted(found)

    # ---------------------------------------------------------------- reads
    def read_partition(self, table: str | TableSpec, partition: str = "") -> pd.DataFrame:
        spec = table_spec(table)
        path = f"{self._dir(spec, partition)}/{DATA_FILE}"
        if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            return _empty_frame(spec)
        return pq.read_table(path, filesystem=self.fs, schema=spec.schema).to_pandas()

    def read(self, table: str | TableSpec, where: Mapping[str, object] | None = None,
             columns: list[str] | None = None) -> pd.DataFrame:
        """All rows of ``table`` (sorted by key), optionally only partitions matching ``where``."""
        spec = table_spec(table)
        where = dict(where or {})
        bad = [c for c in where if c not in spec.partition_by]
        if bad:
            raise ValueError(f"table {table!r}: can only select on partition columns {spec.partition_by}, not {bad}")
        parts = [p for p in self.partitions(table)
                 if all(parse_partition_path(p).get(c) == str(v) for c, v in where.items())]
        frames = [self.read_partition(table, p) for p in parts]
        frames = [f for f in frames if len(f)]
        df = pd.concat(frames, ignore_index=True) if frames else _empty_frame(spec)
        return df[columns] if columns else df

    def last_time(self, table: str, partition: str = "") -> pd.Timestamp | None:
        """Latest value of the table's time column in one partition (None when empty)."""
        spec = table_spec(table)
        if spec.time_column is None:
            raise ValueError(f"table {table!r} has no time column")
        df = self.read_partition(table, partition)
        return None if df.empty else df[spec.time_column].max()

    # ---------------------------------------------------------------- writes
    @contextmanager
    def _locked(self, directory: str) -> Iterator[None]:
        """Serialise writers of one local partition across processes (a no-op on object stores)."""
        if not self.is_local:
            yield
            return
        with locked_dir(directory):
            yield

    def _write_atomic(self, directory: str, table: pa.Table) -> None:
        final = f"{directory}/{DATA_FILE}"
        if not self.is_local:
            self.fs.create_dir(directory, recursive=True)
            with self.fs.open_output_stream(final) as out:  # an object-store PUT is atomic
                pq.write_table(table, out, compression="zstd")
            return
        atomic_write_local(final, lambda fh: pq.write_table(table, fh, compression="zstd"), durable_dir=True)

    def _sweep(self, directory: str) -> None:
        """Delete temp files left by a writer killed mid-write (call with the partition lock held)."""
        if self.is_local:
            for stale in Path(directory).glob(".tmp-*.parquet"):
                stale.unlink(missing_ok=True)

    def upsert(self, table: str, df: pd.DataFrame) -> list[UpsertResult]:
        """Merge ``df`` into ``table`` by key, one atomic rewrite per touched partition.

        ``df`` must already be valid (see ``validate.py``); duplicate keys inside ``df`` are an error.
        """
        spec = table_spec(table)
        new = to_arrow(spec, df).to_pandas()
        if new.duplicated(list(spec.key)).any():
            raise ValueError(f"table {table!r}: duplicate keys in the rows to write; validate them first")
        if new.empty:
            return []
        groups = (new.groupby(list(spec.partition_by), sort=True, dropna=False) if spec.partition_by
                  else [((), new)])
        results = []
        for values, part in groups:
            values = values if isinstance(values, tuple) else (values,)
            partition = partition_path(spec, dict(zip(spec.partition_by, values)))
            results.append(self._upsert_partition(spec, partition, part))
        return results

    def _upsert_partition(self, spec: TableSpec, partition: str, new: pd.DataFrame) -> UpsertResult:
        directory = self._dir(spec, partition)
        key = list(spec.key)
        with self._locked(directory):
            self._sweep(directory)
            old = self.read_partition(spec, partition)
            new_keys = new.set_index(key).index
            old_idx = old.set_index(key)
            existing = new_keys.isin(old_idx.index)
            if spec.name in KEEP_FIRST_TABLES:
                updated, unchanged = 0, int(existing.sum())
                merged = pd.concat([old, new[~existing]], ignore_index=True)
            else:
                new_idx = new.set_index(key)
                common = new_idx.index[existing]
                same = _rows_equal(old_idx.loc[common], new_idx.loc[common])
                unchanged = int(same.sum())
                updated = int(existing.sum()) - unchanged
                merged = pd.concat([old[~old_idx.index.isin(new_keys)], new], ignore_index=True)
            inserted = int((~existing).sum())
            result = UpsertResult(spec.name, partition, inserted, updated, unchanged, len(merged))
            if result.changed:
                merged = merged.sort_values(key, kind="stable", ignore_index=True)
                self._write_atomic(directory, to_arrow(spec, merged))
            return result

    def replace_partition(self, table: str | TableSpec, values: Mapping[str, object], df: pd.DataFrame) -> None:
        """Make ``df`` the whole content of one partition (for derived tables such as gaps)."""
        spec = table_spec(table)
        partition = partition_path(spec, values)
        directory = self._dir(spec, partition)
        with self._locked(directory):
            self._sweep(directory)
            rows = df.assign(**{c: values[c] for c in spec.partition_by})
            new = to_arrow(spec, rows.sort_values(list(spec.key), ignore_index=True))
            path = f"{directory}/{DATA_FILE}"
            if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
                if new.num_rows == 0:
                    return
            elif pq.read_table(path, filesystem=self.fs).equals(new):  # as stored, whatever its old schema
                return
            self._write_atomic(directory, new)

    # ---------------------------------------------------------------- derived tables
    def write_frame(self, name: str, df: pd.DataFrame, key: tuple[str, ...],
                    partition: Mapping[str, object] | None = None) -> None:
        """Make ``df`` the content of one partition of a derived table (features, scores, matrices) whose
        columns depend on the configuration; unchanged content is not rewritten."""
        partition = dict(partition or {})
        spec = derived_spec(name, pa.Schema.from_pandas(df.assign(**partition), preserve_index=False), key,
                            tuple(partition))
        self.replace_partition(spec, partition, df)

    def read_frame(self, name: str, partition: Mapping[str, object] | None = None) -> pd.DataFrame:
        """One partition of a derived table as stored (an empty frame when it does not exist)."""
        rel = "/".join(f"{c}={quote(str(v), safe='')}" for c, v in (partition or {}).items())
        path = "/".join(p for p in (self.base, name, rel, DATA_FILE) if p)
        if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            return pd.DataFrame()
        return pq.read_table(path, filesystem=self.fs).to_pandas()

    def write_json(self, name: str, obj: object) -> None:
        """An atomically replaced JSON document at ``<root>/<name>`` (manifests)."""
        data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
        path = f"{self.base}/{name}"
        if not self.is_local:
            with self.fs.open_output_stream(path) as out:
                out.write(data)
            return
        atomic_write_local(path, data)

    def read_json(self, name: str) -> object:
        path = f"{self.base}/{name}"
        if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{path} not found in the lake {self.root!r}")
        with self.fs.open_input_stream(path) as fh:
            return json.loads(fh.read())

    def append_quarantine(self, rows: pd.DataFrame) -> list[UpsertResult]:
        """Store quarantined rows (idempotent: a row quarantined again for the same reason is kept once)."""
        if rows.empty:
            return []
        rows = rows.drop_duplicates(list(QUARANTINE.key))
        return self.upsert(QUARANTINE.name, rows)

    def summary(self) -> pd.DataFrame:
        """Rows per table and partition."""
        out = []
        for name in sorted(TABLES):
            for partition in self.partitions(name):
                meta = pq.read_metadata(f"{self._dir(table_spec(name), partition)}/{DATA_FILE}",
                                        filesystem=self.fs)
                out.append({"table": name, "partition": partition or "-", "rows": meta.num_rows})
        return pd.DataFrame(out, columns=["table", "partition", "rows"])


def _rows_equal(a: pd.DataFrame, b: pd.DataFrame) -> pd.Series:
    """Row-wise equality of two aligned frames, NaN == NaN."""
    a = a[b.columns]
    eq = (a == b) | (a.isna() & b.isna())
    return eq.all(axis=1)


def row_json(row: Mapping[str, object]) -> str:
    """A stable JSON text for a row (timestamps as ISO 8601)."""
    return json.dumps({k: _jsonable(v) for k, v in row.items()}, sort_keys=True)


def _jsonable(v: object) -> object:
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    if v is None or (isinstance(v, float) and v != v):
        return None
    if hasattr(v, "item"):
        return v.item()  # numpy scalars
    return v
