"""Whether luigid, usually through the proxy, accepts this host before a worker starts: one line naming the scheduler
and what to set, instead of Luigi's minute of retries with tracebacks (docs/security.md "How workers log in").

`python -m taxi.scheduler_access` checks the scheduler of the profile in LUIGI_CONFIG_PATH (scripts/worker runs it).
The check goes the way Luigi's own client goes: a `requests` session, so the credentials come from the netrc file
that NETRC names and the CA from REQUESTS_CA_BUNDLE, and the URL carries no password that a log could show.
"""

from __future__ import annotations

import logging
import sys
from urllib.parse import urlsplit

import requests

from taxi import config
from taxi.urls import redact, split_credentials

log = logging.getLogger(__name__)

PROBE = "/api/is_paused"  # a read-only call of luigid's API
SETUP = 'docs/operations.md "The proxy"'


class SchedulerAccessError(RuntimeError):
    """luigid turns this host away; the message names it (without secrets) and says what to set."""


def check(url: str, timeout: float = 10.0) -> None:
    """Raise SchedulerAccessError if the scheduler at `url` refuses this host's credentials, its certificate is not
    trusted, or the URL itself carries a password; an unreachable scheduler is left to Luigi's own retries."""
    shown = redact(url)
    _, credentials = split_credentials(url)
    if credentials:
        raise SchedulerAccessError(f"the scheduler URL {shown} carries credentials, which Luigi writes into its log "
                                   f"when the scheduler is down: remove them and put them in the netrc file that "
                                   f"NETRC names ({SETUP})")
    host = urlsplit(url).hostname
    try:
        answer = requests.Session().post(url.rstrip("/") + PROBE, data={"data": "{}"}, timeout=timeout)
    except requests.exceptions.SSLError:
        raise SchedulerAccessError(f"the scheduler at {shown} has a certificate this host does not trust: set "
                                   f"REQUESTS_CA_BUNDLE to the proxy's CA certificate ({SETUP})") from None
    except requests.RequestException as exc:
        log.warning("the scheduler at %s does not answer yet (%s); Luigi retries", shown, type(exc).__name__)
        return
    if answer.status_code == 401:
        what = ("refused this host's credentials" if "Authorization" in answer.request.headers
                else "asks for credentials and this host sent none")
        raise SchedulerAccessError(f"the scheduler at {shown} {what} (HTTP 401): set NETRC to a netrc file (mode "
                                   f"0600) with the line `machine {host} login USER password PASSWORD` of a user "
                                   f"of the proxy's password file ({SETUP})")


def main() -> None:
    config.load()
    url = config.scheduler_url()
    if url is None:
        return
    try:
        check(url)
    except SchedulerAccessError as exc:
        sys.exit(f"taxi worker: {exc}")


if __name__ == "__main__":
    main()
