"""`luigi --module taxi.tasks ...` in the background: its output goes to a file that a test can watch, and the
test can SIGKILL it at a chosen moment, as an OOM killer or a power cut would."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

from tests.support.paths import BIN, ROOT

PAUSED = "paused half way through writing"  # what a run with `pause_write` prints, then the target's path
# what a run of tests/support/held_decision.py prints when a champion decision starts, and when it holds inside it
DECIDING, HOLDING = "taxi-test: the decision starts", "taxi-test: holding the decision"


def private_lock(workdir: Path) -> dict[str, str]:
    """`[core]` settings that keep luigi's "already running" lock (one per command line, in /tmp/luigi by default)
    to this workdir, so that identical commands of other stores, run at the same time, do not refuse to start."""
    folder = workdir / "luigi-lock"
    folder.mkdir(parents=True, exist_ok=True)  # luigi creates only the last level
    return {"lock_pid_dir": str(folder)}


class LuigiProcess:
    """One luigi run in its own process group; stdout and stderr together in `<workdir>/<name>.log`. With
    `pause_write` (an fnmatch pattern of target paths), the write of the first target it matches stops half way
    until the run is killed (tests/support/paused_writes.py); `module` runs the tasks of another module of the tests
    (tests/support/held_decision.py)."""

    def __init__(self, workdir: Path, config: Path, *args: str, name: str, env: dict[str, str] | None = None,
                 pause_write: str | None = None, module: str = "taxi.tasks"):
        if not (workdir / "luigi.cfg").exists():
            shutil.copyfile(ROOT / "luigi.cfg", workdir / "luigi.cfg")
        self.log_path = workdir / f"{name}.log"
        env = {**os.environ, "LUIGI_CONFIG_PATH": str(config), **(env or {})}
        if pause_write:
            module = "tests.support.paused_writes"
            env.update(TAXI_TEST_PAUSE_WRITE=pause_write)
        if module != "taxi.tasks":
            env.update(PYTHONPATH=str(ROOT))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([str(BIN / "luigi"), "--module", module, *args], cwd=workdir, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True, env=env)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until(self, check: Callable[[], bool], what: str, timeout: float = 300) -> None:
        """Poll `check` until it holds; fail (with the log's tail) if the process ends first or time runs out."""
        deadline = time.monotonic() + timeout
        while not check():
            if self.proc.poll() is not None:
                raise AssertionError(f"luigi exited ({self.proc.returncode}) before {what}:\n{self.log[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"no {what} within {timeout:.0f}s:\n{self.log[-3000:]}")
            time.sleep(0.02)

    def wait_for_line(self, pattern: str, timeout: float = 300) -> None:
        """Block until a line of the log matches the regular expression `pattern`."""
        regex = re.compile(pattern, re.MULTILINE)
        self.wait_until(lambda: regex.search(self.log) is not None, f"log line /{pattern}/", timeout)

    def kill(self) -> None:
        """SIGKILL the whole process group: no cleanup handler, no atexit, no flush."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def finish(self, timeout: float = 600) -> int:
        """Wait for the run to end by itself; return its exit code."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"luigi still running after {timeout:.0f}s:\n{self.log[-3000:]}") from None
