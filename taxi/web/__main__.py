"""`python -m taxi.web [serve options]` serves the operator page with gunicorn (one process, threads) on
127.0.0.1:8083 with the profile in LUIGI_CONFIG_PATH; `python -m taxi.web hash-password` prints the hash of a
password read from the terminal (or stdin), for TAXI_WEB_PASSWORD_HASH.

    TAXI_WEB_PASSWORD_HASH='scrypt:...' LUIGI_CONFIG_PATH=config/central.cfg .venv/bin/python -m taxi.web
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from pathlib import Path

from gunicorn.app.base import BaseApplication
from werkzeug.security import generate_password_hash

from taxi import config, tracking
from taxi.web.settings import CHECKOUT, Settings, SettingsError, from_config

log = logging.getLogger("taxi.web")  # not __name__: that is "__main__" under python -m


class Server(BaseApplication):
    """gunicorn with these options and the page built in its worker process (where the runs' threads live)."""

    def __init__(self, settings: Settings, options: dict):
        self.settings, self.options = settings, options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from taxi.web.app import create_app

        return create_app(self.settings)


def hash_password() -> None:
    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if len(password) < 12:
        sys.exit("use a password of at least 12 characters")
    print(generate_password_hash(password))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m taxi.web", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", choices=("serve", "hash-password"), default="serve")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8083)
    parser.add_argument("--state", type=Path, default=Path(os.environ.get("STATE_DIRECTORY") or CHECKOUT / "var/web"),
                        help="run records and the session key (default: $STATE_DIRECTORY, else var/web)")
    parser.add_argument("--tls-proxy", action="store_true",
                        help="behind a TLS reverse proxy on this host: trust its X-Forwarded-For/-Proto/-Host, "
                             "send the session cookie only over HTTPS")
    parser.add_argument("--visualiser-url", default="",
                        help="luigid's visualiser as browsers reach it, e.g. the proxy's https://HOST:8443 "
                             "(default: the profile's scheduler_url)")
    parser.add_argument("--threads", type=int, default=8, help="requests served at once")
    args = parser.parse_args(argv)
    if args.command == "hash-password":
        hash_password()
        return
    config.configure_logging()
    try:
        settings = from_config(args.state.resolve(), args.tls_proxy, args.visualiser_url)
    except (SettingsError, tracking.TrackingUnavailable) as exc:
        log.error("%s", exc)
        sys.exit(2)
    log.info("operator page on http://%s:%d (store %s, registry %s, luigid %s, state %s)", args.host, args.port,
             settings.store, settings.tracking_uri, settings.scheduler_url, settings.state)
    Server(settings, {"bind": f"{args.host}:{args.port}", "workers": 1, "worker_class": "gthread",
                      "threads": args.threads, "accesslog": "-", "errorlog": "-", "timeout": 120,
                      "proc_name": "taxi-web", "control_socket_disable": True}).run()


if __name__ == "__main__":
    main()
