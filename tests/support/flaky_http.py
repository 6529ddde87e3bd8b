"""A loopback HTTP mirror of a folder whose next responses follow a script of faults.

Each GET (or HEAD, which answers with the status and headers alone) takes the next behaviour from
`FlakyMirror.script` (an empty script serves the file whole), so a test says exactly what the source does:
`mirror.script = [UNAVAILABLE, UNAVAILABLE]` is "503 twice, then OK".
"""

from __future__ import annotations

import gzip
import http.server
import socket
import struct
import threading
import time
from pathlib import Path

OK = "ok"
UNAVAILABLE = "503"  # 503 Service Unavailable with a small HTML body
FORBIDDEN = "403"  # what S3 behind CloudFront answers for a key it does not have when listing is not allowed
DROP = "drop"  # Content-Length of the whole file, half the body, then a TCP reset
SHORT = "short"  # Content-Length of the whole file, half the body, then a clean close
STALL = "stall"  # half the body, then silence for `stall_seconds`, then a close
SLOW = "slow"  # the whole body, spread over `slow_seconds`; `half_sent` is set half way
GZIP = "gzip"  # Content-Encoding: gzip when the client accepts it, as a web server with gzip on for all types


class FlakyMirror:
    """Serves `directory` on `host` (127.0.0.1, or ::1 for IPv6); `requests` records (path, behaviour) of every GET
    and HEAD in order ("404" for a file the folder does not have)."""

    def __init__(self, directory: Path, stall_seconds: float = 3.0, slow_seconds: float = 3.0,
                 host: str = "127.0.0.1"):
        self.directory = Path(directory)
        self.stall_seconds, self.slow_seconds = stall_seconds, slow_seconds
        self.script: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.request_times: list[float] = []  # time.monotonic() at each GET, in order
        self.half_sent = threading.Event()
        self._lock = threading.Lock()
        server = type("Server", (http.server.ThreadingHTTPServer,), {
            "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET, "daemon_threads": True})
        self._server = server((host, 0), self._handler())
        self.host = f"[{host}]" if ":" in host else host

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._server.server_address[1]}"

    def __enter__(self) -> "FlakyMirror":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next(self, path: str, exists: bool) -> str:
        """The behaviour for this GET (the script's next one for a file the folder has), recorded."""
        with self._lock:
            behaviour = (self.script.pop(0) if self.script else OK) if exists else "404"
            self.requests.append((path, behaviour))
            self.request_times.append(time.monotonic())
        return behaviour

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                try:
                    self._respond()
                except ConnectionError:  # the client went away (killed, or gave up on a stall)
                    self.close_connection = True

            def do_HEAD(self) -> None:
                path = self.path.split("?", 1)[0]
                file = mirror.directory / path.lstrip("/")
                behaviour = mirror._next(path, file.is_file())
                if behaviour in ("404", UNAVAILABLE, FORBIDDEN):
                    self.send_response(int(behaviour))
                    self.end_headers()
                    return
                self._headers(file.read_bytes())

            def _respond(self) -> None:
                path = self.path.split("?", 1)[0]  # a presigned URL's query names no file
                file = mirror.directory / path.lstrip("/")
                behaviour = mirror._next(path, file.is_file())
                if behaviour in ("404", UNAVAILABLE, FORBIDDEN):
                    self.send_error(int(behaviour))
                    return
                body = file.read_bytes()
                if behaviour == GZIP and "gzip" in self.headers.get("Accept-Encoding", ""):
                    packed = gzip.compress(body)
                    self._headers(packed, {"Content-Encoding": "gzip"})
                    self.wfile.write(packed)
                    return
                self._headers(body)
                half = len(body) // 2
                if behaviour in (DROP, SHORT, STALL):
                    self.wfile.write(body[:half])
                    self.wfile.flush()
                    if behaviour == STALL:
                        time.sleep(mirror.stall_seconds)
                    elif behaviour == DROP:  # SO_LINGER 0: close() sends RST instead of FIN
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                if behaviour == SLOW:
                    chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)]
                    for i, chunk in enumerate(chunks):
                        self.wfile.write(chunk)
                        self.wfile.flush()
                        if (i + 1) * 65536 >= half:
                            mirror.half_sent.set()
                        time.sleep(mirror.slow_seconds / len(chunks))
                    return
                self.wfile.write(body)

            def _headers(self, body: bytes, extra: dict[str, str] | None = None) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (extra or {}).items():
                    self.send_header(key, value)
                self.end_headers()

        return Handler
