"""`luigi --module tests.support.held_decision ...` (LuigiProcess(module=...)): the pipeline's tasks, except that each
champion decision says on stderr when it starts, and waits there, before it asks for the registry's decision lock,
until the file $TAXI_TEST_HOLD_BEFORE_DECISION exists (when set); and that with $TAXI_TEST_HOLD_DECISION set, it stops
inside that lock (its version registered, nothing decided yet) until that file exists: a test can let a second
decision start while the first is being made."""

from __future__ import annotations

import os
import sys
import time

import taxi.tasks  # noqa: F401  the tasks luigi runs
from taxi import champion, registry
from tests.support.luigi_process import DECIDING, HOLDING
HOLD_BEFORE = os.environ.get("TAXI_TEST_HOLD_BEFORE_DECISION", "")
HOLD = os.environ.get("TAXI_TEST_HOLD_DECISION", "")
_register, _create_version = champion.register, registry._create_version


def _wait_for(path: str) -> None:
    while path and not os.path.exists(path):
        time.sleep(0.05)


def _says_so(*args, **kwargs):
    print(DECIDING, file=sys.stderr, flush=True)
    _wait_for(HOLD_BEFORE)
    return _register(*args, **kwargs)


def _held(*args, **kwargs):
    version = _create_version(*args, **kwargs)
    print(HOLDING, file=sys.stderr, flush=True)
    _wait_for(HOLD)
    return version


champion.register = _says_so
if HOLD:
    registry._create_version = _held
