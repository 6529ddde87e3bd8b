"""The optional webhook: a Slack-compatible JSON POST (`{"text": ...}`) on a failed task and on a new champion
(pure: no luigi).

The URL comes only from the environment variable TAXI_WEBHOOK_URL, because a Slack webhook URL is a secret (its
path is the token): it is never logged, only its scheme and host. A failing webhook never fails the pipeline.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import urllib.error
import urllib.request
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

ENV = "TAXI_WEBHOOK_URL"
TIMEOUT = 5.0  # seconds: a webhook that hangs delays the run by at most this per message


def post(text: str) -> bool:
    """POST `{"text": text}` to TAXI_WEBHOOK_URL; True if it answered 2xx. Unset: posts nothing. Any failure logs
    one warning (naming the host, never the URL) and returns False."""
    url = os.environ.get(ENV, "")
    if not url:
        return False
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        log.warning("%s is not an http(s) URL: nothing posted", ENV)
        return False
    request = urllib.request.Request(url, data=json.dumps({"text": text}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT):
            return True
    except Exception as exc:  # whatever the webhook does (refuse, 500, hang, garbage), the pipeline goes on
        log.warning("webhook %s://%s did not take the message (%s); the run goes on", parts.scheme, parts.hostname,
                    _reason(exc))
        return False


def _reason(exc: Exception) -> str:
    """Why a POST failed, without the URL (which some exception texts repeat)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, OSError) else exc
    return f"{type(exc).__name__}: {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else type(exc).__name__


def failure_text(task: str, exc: BaseException) -> str:
    """A failed task: which one, on which host, the exception type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    first = f": {lines[0]}" if lines else ""
    return f"taxi: {task} FAILED on {socket.gethostname()}: {type(exc).__name__}{first}"


def champion_text(registration: dict, month: str, report: str) -> str:
    """A new champion: model version, training month, validation RMSE, the champion it beat and the report."""
    previous = registration["previous_champion_version"]
    before = "none" if previous is None else f"v{previous} ({registration['previous_champion_val_rmse']:.4f} min)"
    where = report if "://" in report else os.path.abspath(report)
    return (f"taxi: new champion {registration['name']} v{registration['version']}, trained on {month}: validation "
            f"RMSE {registration['val_rmse']:.4f} min; champion before: {before}; report {where}")
