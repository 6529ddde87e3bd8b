"""The optional webhook: a Slack-compatible JSON POST (`{"text": ...}`) on a failed task, on every registered model with
its champion decision, and on a month whose live error alerts (pure: no luigi).

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
    try:
        _send(url, text)
    except Exception as exc:  # whatever the webhook does (refuse, 500, hang, garbage), the pipeline goes on
        log.warning("webhook %s did not take the message (%s); the run goes on", _where(url), _reason(exc))
        return False
    return True


def _send(url: str, text: str) -> None:
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError("not an http(s) URL")
    request = urllib.request.Request(url, data=json.dumps({"text": text}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=TIMEOUT):
        pass


def _where(url: str) -> str:
    """The scheme, host and port of `url`: all of it that is ever logged (a Slack webhook's path is its secret)."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return f"of {ENV}"
    return f"{parts.scheme}://{parts.hostname}{port}" if parts.hostname else f"of {ENV}"


def _reason(exc: Exception) -> str:
    """Why a POST failed, in words that never repeat the URL (some exception texts do)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, ValueError):  # what urllib raises for a URL it cannot use
        return f"{ENV} is not a valid http(s) URL"
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, OSError):
        exc = exc.reason
    return f"{type(exc).__name__}: {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else type(exc).__name__


def failure_text(task: str, exc: BaseException) -> str:
    """A failed task: which one, on which host, the exception type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    first = f": {lines[0]}" if lines else ""
    return f"taxi: {task} FAILED on {socket.gethostname()}: {type(exc).__name__}{first}"


def decision_text(registration: dict, month: str, report: str) -> str:
    """A registered model: version, training month, gate RMSE, the decision and its reason, and the report."""
    where = report if "://" in report else os.path.abspath(report)
    return (f"taxi: {registration['name']} v{registration['version']}, trained on {month}, gate RMSE "
            f"{registration['gate_rmse']:.4f} min: {registration['reason']}; report {where}")


def live_error_text(record: dict) -> str:
    """A scored month whose live RMSE is worse than the model's registered RMSE by more than the allowed share: the
    model version, the month, both RMSEs and where the predictions are (a scoring's live.json record)."""
    worse = record["rmse"] / record["registered_rmse"] - 1
    return (f"taxi: live error alert: {record['model_name']} v{record['model_version']} on {record['color']} "
            f"{record['month']}: live RMSE {record['rmse']:.4f} min, {100 * worse:.1f}% above the "
            f"{record['registered_rmse']:.4f} min it was registered with (more than the "
            f"{100 * record['alert_share']:g}% allowed); {record['rows']:,} trips; predictions {record['predictions']}")
