"""A loopback HTTP server with Range support, for the downloader tests (test_assets, test_data).

Import it from any test module (pytest puts tests/ on sys.path):

    from http_fixtures import RangeServer, serve

    with serve(RangeServer({"/a.bin": payload})) as server:   # server.url == "http://127.0.0.1:PORT"
        ...

RangeServer fields, all changeable while serving:
    files: URL path -> body. honour_range: False answers a range request with the whole body (200).
    cut: key -> body bytes sent before hanging up, once. requests: (key, Range header) per GET.
A key is the (unquoted) URL path; subclasses may override key(path) and body(path) to serve another layout.
A range request is answered 206 with Content-Range, or 416 when it starts at or past the end.
serve(state, prefix="") sets state.url to the server's address followed by `prefix`.
"""

from __future__ import annotations

import re
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar


@dataclass
class RangeServer:
    """What the loopback server serves and what it was asked for."""

    files: dict[str, bytes] = field(default_factory=dict)
    url: str = ""
    honour_range: bool = True
    cut: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    def key(self, path: str) -> str:
        """The name a request is recorded (and cut) under."""
        return path

    def body(self, path: str) -> bytes | None:
        """The bytes served at `path`; None answers 404."""
        return self.files.get(path)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        state: RangeServer = self.server.state  # type: ignore[attr-defined]
        path = urllib.parse.unquote(urllib.parse.urlparse(self.path).path)
        key = state.key(path)
        rng = self.headers.get("Range")
        state.requests.append((key, rng))
        body = state.body(path)
        if body is None:
            self.send_error(404)
            return
        start, status = 0, 200
        if rng and state.honour_range:
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            assert m, rng
            start, status = int(m.group(1)), 206
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        chunk = body[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(chunk)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        if key in state.cut:
            self.wfile.write(chunk[: state.cut.pop(key)])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(chunk)


S = TypeVar("S", bound=RangeServer)


@contextmanager
def serve(state: S, prefix: str = "") -> Iterator[S]:
    """Serve `state` on 127.0.0.1 (a free port) until the block ends."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}{prefix}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
