"""A loopback HTTP proxy in front of a real server (the MLflow tracking server) that forwards every request, except
that it answers chosen requests with an error, or holds them back and releases them in an order of its choosing.

It makes two registry faults real without touching the pipeline: a server error at the champion lookup
(`proxy.fail("GET", CHAMPION_LOOKUP, 500)`), and the worst interleaving of two registrations
(`proxy.hold("POST", SET_ALIAS, count=2, order=...)`: the first alias update waits until the second one arrives, then
the one that `order` ranks first goes through first, so the other has the last word).
"""

from __future__ import annotations

import http.server
import threading
from dataclasses import dataclass, field
from typing import Callable

import requests

CHAMPION_LOOKUP = "/api/2.0/mlflow/registered-models/get"
SET_ALIAS = "/api/2.0/mlflow/registered-models/alias"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
              "proxy-authenticate", "host", "content-length"}


@dataclass
class Hold:
    """Requests held until `count` of them wait (or `timeout` seconds pass), then released one at a time in the
    order of `order(body)`, lowest first."""

    count: int
    timeout: float
    order: Callable[[bytes], float]
    waiting: list[tuple[float, int, bytes]] = field(default_factory=list)  # (rank, arrival, body)
    released: list[bytes] = field(default_factory=list)  # in the order they went through
    cond: threading.Condition = field(default_factory=threading.Condition)

    def wait_for_turn(self, body: bytes) -> tuple[float, int, bytes]:
        entry = (self.order(body), len(self.waiting) + len(self.released), body)
        with self.cond:
            self.waiting.append(entry)
            self.cond.notify_all()
            self.cond.wait_for(lambda: len(self.waiting) + len(self.released) >= self.count, self.timeout)
            self.cond.wait_for(lambda: min(self.waiting) is entry)
        return entry

    def done(self, entry: tuple[float, int, bytes]) -> None:
        with self.cond:
            self.waiting.remove(entry)
            self.released.append(entry[2])
            self.cond.notify_all()


class Proxy:
    """Forwards 127.0.0.1:<port> to `upstream`; `seen` records (method, path) of every request."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.failures: dict[tuple[str, str], int] = {}
        self.holds: dict[tuple[str, str], Hold] = {}
        self.seen: list[tuple[str, str]] = []
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail(self, method: str, path: str, status: int) -> None:
        """Answer every `method` request for `path` with `status` (and an HTML body, as a broken gateway does)."""
        self.failures[(method, path)] = status

    def hold(self, method: str, path: str, count: int, order: Callable[[bytes], float],
             timeout: float = 5.0) -> Hold:
        self.holds[(method, path)] = hold = Hold(count, timeout, order)
        return hold

    def clear(self) -> None:
        self.failures.clear()
        self.holds.clear()

    def __enter__(self) -> "Proxy":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                path = self.path.split("?", 1)[0]
                key = (self.command, path)
                proxy.seen.append(key)
                body = self._body()
                if key in proxy.failures:
                    self._reply(proxy.failures[key], {"Content-Type": "text/html"}, b"<html>server error</html>")
                    return
                hold = proxy.holds.get(key)
                entry = hold.wait_for_turn(body) if hold else None
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    upstream = requests.request(self.command, proxy.upstream + self.path, headers=headers, data=body,
                                                stream=True, timeout=300)
                    content = upstream.raw.read(decode_content=False)
                finally:
                    if hold:
                        hold.done(entry)
                reply_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
                self._reply(upstream.status_code, reply_headers, content)

            def _body(self) -> bytes:
                """The request body, sent with a Content-Length or in chunks (MLflow uploads artifacts chunked)."""
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(chunks)

            def _reply(self, status: int, headers: dict[str, str], content: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

        return Handler
