"""Who may use the page: one operator password (checked against its hash) and the throttle on failed logins."""

from __future__ import annotations

import threading
import time
from collections import deque

from werkzeug.security import check_password_hash


class Throttle:
    """Failed logins within a sliding window: a client with `per_client` of them, or everyone once there are
    `overall`, must wait until the oldest leaves the window."""

    def __init__(self, per_client: int, overall: int, window: float, clock=time.monotonic):
        self.per_client, self.overall, self.window, self.clock = per_client, overall, window, clock
        self.failures: deque[tuple[float, str]] = deque()
        self.lock = threading.Lock()

    def wait(self, client: str) -> float:
        """Seconds `client` must wait before its next attempt (0: it may try now)."""
        with self.lock:
            now = self.clock()
            while self.failures and self.failures[0][0] <= now - self.window:
                self.failures.popleft()
            own = [at for at, who in self.failures if who == client]
            waits = [0.0]
            if len(own) >= self.per_client:
                waits.append(own[-self.per_client] + self.window - now)
            if len(self.failures) >= self.overall:
                waits.append(self.failures[-self.overall][0] + self.window - now)
            return max(waits)

    def failed(self, client: str) -> None:
        with self.lock:
            self.failures.append((self.clock(), client))


def password_matches(password_hash: str, password: str) -> bool:
    return bool(password) and check_password_hash(password_hash, password)
