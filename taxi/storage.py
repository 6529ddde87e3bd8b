"""Targets under the configured store (local folder or s3://bucket/prefix) and their typed readers/writers."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator

import luigi
import luigi.format
import pandas as pd
import pyarrow.parquet as pq
from luigi.contrib.s3 import S3Client, S3Target

from taxi.data import MonthNotPublished


class CorruptTarget(RuntimeError):
    """A cached target exists but cannot be read; the message names it so an operator can delete it."""


def is_s3(path: str) -> bool:
    return path.startswith("s3://")


def target(store: str, relpath: str) -> luigi.Target:
    """The one place that decides local vs S3: every task output is `target(store, relpath)`."""
    if is_s3(store):
        return S3Target(f"{store.rstrip('/')}/{relpath}", format=luigi.format.Nop, client=S3Client())
    return luigi.LocalTarget(os.path.join(store, relpath), format=luigi.format.Nop)


@contextmanager
def local_copy(tgt: luigi.Target) -> Iterator[str]:
    """A local, seekable path with the target's bytes (the file itself when the target is local)."""
    if isinstance(tgt, luigi.LocalTarget):
        yield tgt.path
        return
    with tempfile.TemporaryDirectory(prefix="taxi-") as tmp:
        path = os.path.join(tmp, os.path.basename(tgt.path))
        tgt.fs.get(tgt.path, path)
        yield path


def fetch_s3(url: str, path: str) -> None:
    """Copy an s3:// object (a team mirror of the TLC files) to a local path."""
    client = S3Client()
    if not client.exists(url):
        raise MonthNotPublished(f"{url} does not exist: the month is not in the S3 mirror; check [taxi] source")
    client.get(url, path)


def put_file(path: str, tgt: luigi.Target) -> None:
    """Copy a finished local file into place atomically."""
    with open(path, "rb") as src, tgt.open("w") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def write_parquet(df: pd.DataFrame, tgt: luigi.Target) -> None:
    with tgt.open("w") as f:
        df.to_parquet(f, index=False)


def read_parquet(tgt: luigi.Target, columns: list[str] | None = None) -> pd.DataFrame:
    with local_copy(tgt) as path:
        try:
            return pd.read_parquet(path, columns=columns)
        except Exception as exc:
            raise _corrupt(tgt, exc) from exc


def parquet_is_whole(tgt: luigi.Target) -> bool:
    """True when the target exists and its parquet footer reads (a truncated file fails here)."""
    if not tgt.exists():
        return False
    try:
        with local_copy(tgt) as path:
            pq.read_metadata(path)
        return True
    except Exception:
        return False


def write_json(obj: Any, tgt: luigi.Target) -> None:
    with tgt.open("w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True).encode())


def read_json(tgt: luigi.Target) -> Any:
    with tgt.open("r") as f:
        raw = f.read()
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise _corrupt(tgt, exc) from exc


def write_pickle(obj: Any, tgt: luigi.Target) -> None:
    with tgt.open("w") as f:
        pickle.dump(obj, f)


def read_pickle(tgt: luigi.Target) -> Any:
    """Unpickle a target of this project's own store (never point the store at untrusted data)."""
    with tgt.open("r") as f:
        raw = f.read()
    try:
        return pickle.loads(raw)
    except Exception as exc:
        raise _corrupt(tgt, exc) from exc


def read_bytes(tgt: luigi.Target) -> io.BytesIO:
    with tgt.open("r") as f:
        return io.BytesIO(f.read())


def _corrupt(tgt: luigi.Target, exc: Exception) -> CorruptTarget:
    return CorruptTarget(f"cached target {tgt.path} is unreadable ({exc}); delete it and rerun to rebuild it")
