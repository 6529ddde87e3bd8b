"""Targets under the configured store (local folder or s3://bucket/prefix) and their typed readers/writers.

S3 settings (`endpoint_url`, `region_name`, ...) come from the `[s3]` section, which luigi's S3Client hands to
boto3; credentials come only from boto3's own chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE,
instance role), and so do retries (botocore's standard mode: 3 attempts; AWS_MAX_ATTEMPTS changes it).
"""

from __future__ import annotations

import atexit
import errno
import functools
import io
import json
import os
import pickle
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager, suppress
from typing import IO, Any, Callable, Iterator, NamedTuple

import botocore.exceptions
import luigi
import luigi.configuration
import luigi.format
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from luigi.contrib.s3 import AtomicS3File, S3Client, S3Target



class CorruptTarget(RuntimeError):
    """A cached target exists but cannot be read; the message names it so an operator can delete it."""


class StoreUnreachable(ConnectionError):
    """The S3 endpoint cannot be reached; the message names the endpoint and the object."""


class StoreRefused(PermissionError):
    """The S3 endpoint refused the request (no or wrong credentials, no permission, no such bucket)."""


def is_s3(path: str) -> bool:
    return path.startswith("s3://")


def target(store: str, relpath: str) -> luigi.Target:
    """The one place that decides local vs S3: every task output is `target(store, relpath)`."""
    if is_s3(store):
        return StoreS3Target(f"{store.rstrip('/')}/{relpath}", format=luigi.format.Nop, client=s3_client())
    return StoreLocalTarget(os.path.join(store, relpath), store)


class StoreLocalTarget(luigi.LocalTarget):
    """A file under the store folder (bytes as they are); `store` is the folder, for error messages."""

    def __init__(self, path: str, store: str):
        super().__init__(path, format=luigi.format.Nop)
        self.store = store


# what a full, read-only or forbidden store answers; any other OSError is not the store's
_STORE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


@contextmanager
def open_for_write(tgt: luigi.Target) -> Iterator[IO[bytes]]:
    """The target open for writing; it appears at its path, whole, only when the block ends without error. A full
    or unwritable store folder fails naming the target and the reason (luigi's LocalTarget ignores a failure to
    create its folder, then reports its temporary file as missing)."""
    if not isinstance(tgt, StoreLocalTarget):
        with tgt.open("w") as f:
            yield f
        return
    try:
        os.makedirs(os.path.dirname(os.path.abspath(tgt.path)), exist_ok=True)
        f = tgt.open("w")
    except OSError as exc:
        raise _unwritable(tgt, exc) from None
    try:
        yield f
        f.close()  # moves the temporary file into place
    except BaseException as exc:
        _discard(f)
        if isinstance(exc, OSError) and exc.errno in _STORE_ERRNOS:
            raise _unwritable(tgt, exc) from None
        raise


def _unwritable(tgt: StoreLocalTarget, exc: OSError) -> OSError:
    return OSError(exc.errno, f"cannot write {tgt.path} into [taxi] store {tgt.store}: {exc.strerror}")


def _discard(f) -> None:
    """Drop an unfinished atomic file: its temporary file goes, nothing reaches the target path."""
    try:
        io.BufferedWriter.close(f)  # not f.close(), which would move the temporary file into place
    except OSError:
        pass
    with suppress(FileNotFoundError):
        os.remove(f.tmp_path)


def s3_client() -> S3Client:
    """This process's S3 client for the current `[s3]` settings (one boto3 connection pool, not one per target)."""
    config = luigi.configuration.get_config()
    settings = tuple(sorted(config.items("s3"))) if config.has_section("s3") else ()
    return _cached_s3_client(os.getpid(), settings)


@functools.lru_cache(maxsize=8)
def _cached_s3_client(pid: int, settings: tuple) -> S3Client:
    """Keyed by process (a forked luigi worker builds its own) and by `[s3]` settings, which S3Client reads itself."""
    return S3Client()


def endpoint(client: S3Client) -> str:
    """The endpoint URL boto3 sends requests to (from `[s3] endpoint_url`, else AWS's own)."""
    return client.s3.meta.client.meta.endpoint_url


@contextmanager
def s3_errors_named(client: S3Client, url: str) -> Iterator[None]:
    """Turn botocore's connection and access failures into errors that name the endpoint, the object and the fix."""
    try:
        yield
    except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
        raise StoreUnreachable(
            f"S3 endpoint {endpoint(client)} is not reachable for {url} ({type(exc).__name__}): start the object "
            f"store or fix [s3] endpoint_url"
        ) from exc
    except botocore.exceptions.NoCredentialsError as exc:
        raise StoreRefused(
            f"no S3 credentials for {url} at {endpoint(client)}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            f"(or AWS_PROFILE) in the environment"
        ) from exc
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if error.get("Code") == "NoSuchBucket":
            raise StoreRefused(f"the bucket of {url} does not exist at S3 endpoint {endpoint(client)}: create it "
                               f"or fix [taxi] store / source") from exc
        if status == 403:
            raise StoreRefused(
                f"S3 endpoint {endpoint(client)} refused access to {url} ({error.get('Code')} "
                f"{error.get('Message')}): check the credentials in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and "
                f"the bucket's permissions"
            ) from exc
        raise


class StoreS3Target(S3Target):
    """An S3Target whose connection and access failures name the endpoint instead of surfacing raw botocore errors."""

    def exists(self) -> bool:
        with s3_errors_named(self.fs, self.path):
            return super().exists()

    def open(self, mode: str = "r"):
        if mode == "w":
            return self.format.pipe_writer(_AtomicStoreFile(self.path, self.fs, **self.s3_options))
        with s3_errors_named(self.fs, self.path):
            return super().open(mode)


class _AtomicStoreFile(AtomicS3File):
    """Written to a local temporary file, uploaded as one object on close: a failed upload leaves no object."""

    def move_to_final_destination(self) -> None:
        with s3_errors_named(self.s3_client, self.path):
            super().move_to_final_destination()


@contextmanager
def local_copy(tgt: luigi.Target) -> Iterator[str]:
    """A local, seekable path with the target's bytes (the file itself when the target is local)."""
    if isinstance(tgt, luigi.LocalTarget):
        yield tgt.path
        return
    with tempfile.TemporaryDirectory(prefix="taxi-") as tmp:
        path = os.path.join(tmp, os.path.basename(tgt.path))
        with s3_errors_named(tgt.fs, tgt.path):
            tgt.fs.get(tgt.path, path)
        yield path


def put_file(path: str, tgt: luigi.Target) -> None:
    """Copy a finished local file into place atomically."""
    with open(path, "rb") as src, open_for_write(tgt) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def write_bytes(content: bytes, tgt: luigi.Target) -> None:
    with open_for_write(tgt) as f:
        f.write(content)


def write_parquet(df: pd.DataFrame, tgt: luigi.Target) -> None:
    with open_for_write(tgt) as f:
        df.to_parquet(f, index=False)


def write_table(table: pa.Table, tgt: luigi.Target) -> None:
    """An Arrow table as parquet, without a copy into pandas."""
    with open_for_write(tgt) as f:
        pq.write_table(table, f)


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
    except (StoreUnreachable, StoreRefused):
        raise
    except Exception:
        return False


def read(tgt: luigi.Target, parse: Callable[[bytes], Any]) -> Any:
    """`parse(the target's bytes)`; a target that does not parse raises CorruptTarget, naming it."""
    with tgt.open("r") as f:
        raw = f.read()
    try:
        return parse(raw)
    except Exception as exc:  # each format raises its own types for truncated or damaged bytes
        raise _corrupt(tgt, exc) from exc


def write_json(obj: Any, tgt: luigi.Target) -> None:
    write_bytes(json.dumps(obj, indent=2, sort_keys=True).encode(), tgt)


def read_json(tgt: luigi.Target) -> Any:
    return read(tgt, json.loads)


def write_pickle(obj: Any, tgt: luigi.Target) -> None:
    write_bytes(pickle.dumps(obj), tgt)


def read_pickle(tgt: luigi.Target) -> Any:
    """Unpickle a target of this project's own store (never point the store at untrusted data)."""
    return read(tgt, pickle.loads)


def read_bytes(tgt: luigi.Target) -> io.BytesIO:
    with tgt.open("r") as f:
        return io.BytesIO(f.read())


def location(tgt: luigi.Target) -> str:
    """Where a target is, as messages and records show it: its s3:// URL, or its absolute local path."""
    return tgt.path if is_s3(tgt.path) else os.path.abspath(tgt.path)


def _corrupt(tgt: luigi.Target, exc: Exception) -> CorruptTarget:
    return CorruptTarget(f"cached target {tgt.path} is unreadable ({exc}); delete it and rerun to rebuild it")


# --- temporary files ---

_PRIVATE_TMP = re.compile(r"taxi-run-(?P<host>.+)-(?P<pid>\d+)$")
_private_tmp: str | None = None


def use_private_tmp() -> str:
    """Send this process's temporary files (this package's, luigi's, MLflow's) to `$TMPDIR/taxi-run-HOST-PID`,
    removed when the process exits; first remove the folders that processes of this host killed before their exit
    left behind. Idempotent; a forked worker keeps its parent's folder."""
    global _private_tmp
    if _private_tmp is not None:
        return _private_tmp
    base = tempfile.gettempdir()
    sweep_dead_tmp(base)
    _private_tmp = os.path.join(base, f"taxi-run-{socket.gethostname()}-{os.getpid()}")
    os.makedirs(_private_tmp, exist_ok=True)
    tempfile.tempdir = os.environ["TMPDIR"] = _private_tmp
    atexit.register(_remove_private_tmp, os.getpid())
    return _private_tmp


def _remove_private_tmp(owner: int) -> None:
    if os.getpid() == owner and _private_tmp:
        shutil.rmtree(_private_tmp, ignore_errors=True)


def sweep_dead_tmp(base: str) -> list[str]:
    """Remove the `taxi-run-HOST-PID` folders under `base` of this host's processes that no longer exist."""
    host, removed = socket.gethostname(), []
    for name in os.listdir(base):
        found = _PRIVATE_TMP.match(name)
        if found and found["host"] == host and not _alive(int(found["pid"])):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
            removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


# --- listing ---

def list_targets(store: str, prefix: str, suffix: str) -> list[str]:
    """The paths, relative to `store` and sorted, of every target under `prefix` whose path ends with `suffix`
    (for `target(store, path)`); none when `prefix` does not exist."""
    if is_s3(store):
        client, root = s3_client(), f"{store.rstrip('/')}/"
        with s3_errors_named(client, f"{root}{prefix}"):
            urls = list(client.listdir(f"{root}{prefix}"))
        return sorted(url[len(root):] for url in urls if url.endswith(suffix))
    paths = [os.path.relpath(os.path.join(folder, name), store)
             for folder, _, names in os.walk(os.path.join(store, prefix)) for name in names]
    return sorted(path for path in paths if path.endswith(suffix))


class StoredFile(NamedTuple):
    """One file (local) or object (S3) of the store: its path relative to the store, bytes and modification time."""

    path: str
    size: int
    modified: float  # seconds since the epoch


def list_files(store: str) -> list[StoredFile]:
    """Every file under the store, sorted by path (none when the store does not exist)."""
    if is_s3(store):
        client, root = s3_client(), f"{store.rstrip('/')}/"
        with s3_errors_named(client, root):
            objects = list(client.listdir(root, return_key=True))
        prefix = len(S3Client._path_to_bucket_and_key(root)[1])
        found = [StoredFile(obj.key[prefix:], obj.size, obj.last_modified.timestamp()) for obj in objects]
    else:
        found = []
        for folder, _, names in os.walk(store):
            for name in names:
                with suppress(FileNotFoundError):  # a temporary file renamed meanwhile
                    info = os.stat(os.path.join(folder, name))
                    found.append(StoredFile(os.path.relpath(os.path.join(folder, name), store), info.st_size,
                                            info.st_mtime))
    return sorted(found)


def delete_files(store: str, paths: list[str]) -> None:
    """Delete these files (paths relative to the store); a local folder left empty goes too, the store's own stays."""
    if is_s3(store):
        client, root = s3_client(), f"{store.rstrip('/')}/"
        bucket, prefix = S3Client._path_to_bucket_and_key(root)
        for first in range(0, len(paths), 1000):  # S3's most keys per request
            keys = [{"Key": prefix + path} for path in paths[first:first + 1000]]
            with s3_errors_named(client, root):
                answer = client.s3.meta.client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
            if answer.get("Errors"):
                error = answer["Errors"][0]
                raise StoreRefused(f"S3 endpoint {endpoint(client)} did not delete {root}{error['Key'][len(prefix):]} "
                                   f"({error['Code']} {error['Message']}) nor {len(answer['Errors']) - 1} more")
        return
    root = os.path.abspath(store)
    for path in paths:
        with suppress(FileNotFoundError):
            os.remove(os.path.join(root, path))
        folder = os.path.dirname(os.path.join(root, path))
        while folder != root and folder.startswith(root + os.sep):
            try:
                os.rmdir(folder)
            except OSError:  # not empty (or gone): its parents are not empty either
                break
            folder = os.path.dirname(folder)


def relative(store: str, tgt: luigi.Target) -> str:
    """A target's path relative to the store (the form taxi.layout gives)."""
    if is_s3(store):
        return tgt.path[len(store.rstrip("/")) + 1:]
    return os.path.relpath(tgt.path, store)
