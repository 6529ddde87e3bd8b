"""`luigi --module tests.support.paused_writes ...` (LuigiProcess(pause_write=...)): the pipeline's tasks, except that
the write of a target whose path matches $TAXI_TEST_PAUSE_WRITE (an fnmatch pattern) stops half way for good, so a
test can SIGKILL the run while that target is being written. taxi.storage opens and writes as it always does; only
the bytes stop coming, as they do half way through a large target."""

from __future__ import annotations

import fnmatch
import os
import sys
import time
from contextlib import contextmanager
from typing import IO, Iterator

import luigi

import taxi.tasks  # noqa: F401  the tasks luigi runs
from taxi import storage
from tests.support.luigi_process import PAUSED

PATTERN = os.environ.get("TAXI_TEST_PAUSE_WRITE", "")
_open_for_write = storage.open_for_write


class _StopsHalfWay:
    """A file whose first write flushes half of its bytes to the file, says so on stderr, then never returns."""

    def __init__(self, file: IO[bytes], target: str):
        self._file, self._target = file, target

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self._file.write(view[:max(1, len(view) // 2)])
        self._file.flush()
        print(f"{PAUSED} {self._target}", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)

    def __getattr__(self, name: str):
        return getattr(self._file, name)


@contextmanager
def _paused(tgt: luigi.Target) -> Iterator[IO[bytes]]:
    with _open_for_write(tgt) as f:
        yield _StopsHalfWay(f, tgt.path) if fnmatch.fnmatchcase(tgt.path, PATTERN) else f


if PATTERN:
    storage.open_for_write = _paused
