"""`luigi --module tests.support.held_registry HoldRegistry --until FILE` (LuigiProcess(module=...)): a task that
takes the `mlflow_registry` resource, as RegisterModel's decision does, says so on stderr and keeps it until FILE
exists: a test can start a rollback while a decision holds the registry."""

from __future__ import annotations

import os
import sys
import time

import luigi

HOLDING_REGISTRY = "taxi-test: holding the mlflow_registry resource"


class HoldRegistry(luigi.Task):
    resources = {"mlflow_registry": 1}
    until = luigi.Parameter()

    def complete(self) -> bool:
        return os.path.exists(self.until)

    def run(self):
        print(HOLDING_REGISTRY, file=sys.stderr, flush=True)
        while not os.path.exists(self.until):
            time.sleep(0.05)
