"""A fault-injecting HTTP proxy for storage tests (GCS emulator behind it).

    proxy = FaultProxy("http://127.0.0.1:PORT")        # the emulator
    proxy.url                                          # give this to gcsfs (endpoint_url)
    proxy.fail_next(3)                                 # the next 3 requests get HTTP 503
    proxy.fail_next(1, after_forward=True)             # forwarded, but the answer is a 503
    proxy.outage(2.0)                                  # everything fails for 2 s
    proxy.outage(2.0, reset=True)                      # ... by closing connections instead
    proxy.close()
"""

from __future__ import annotations

import http.client
import http.server
import json
import re
import threading
import time
import urllib.parse
from typing import List, Optional

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection",
        "upgrade", "te", "trailer"}


class FaultProxy:
    """Forwards HTTP requests to ``upstream`` and injects failures on demand."""

    def __init__(self, upstream: str) -> None:
        parsed = urllib.parse.urlparse(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self._lock = threading.Lock()
        self._fail_left = 0
        self._fail_status = 503
        self._fail_after_forward = False
        self._fail_match: Optional[re.Pattern] = None
        self._outage_until = 0.0
        self._outage_reset = False
        self.requests: List[str] = []
        self.injected: List[str] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _handle(self) -> None:
                body = self._body()
                line = f"{self.command} {self.path}"
                action = proxy._decide(line)
                if action == "reset":
                    proxy.injected.append(f"reset {line}")
                    self.close_connection = True
                    self.connection.close()
                    return
                if action == "fail":
                    proxy.injected.append(f"{proxy._fail_status} {line}")
                    return self._send(proxy._fail_status, {}, _error(proxy._fail_status))
                status, headers, data = proxy._forward(self.command, self.path, self.headers,
                                                       body)
                if action == "fail_after":
                    proxy.injected.append(f"{proxy._fail_status} (after forwarding) {line}")
                    return self._send(proxy._fail_status, {}, _error(proxy._fail_status))
                self._send(status, headers, data)

            def _send(self, status, headers, data) -> None:
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in _HOP:
                        self.send_header(k, v)
                if not any(k.lower() == "content-type" for k, _ in headers):
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    # -- control ---------------------------------------------------------------------------------
    def fail_next(self, n: int, status: int = 503, after_forward: bool = False,
                  match: Optional[str] = None) -> None:
        """The next ``n`` requests (matching regex ``match`` on "METHOD path") fail."""
        with self._lock:
            self._fail_left = n
            self._fail_status = status
            self._fail_after_forward = after_forward
            self._fail_match = re.compile(match) if match else None

    def outage(self, seconds: float, reset: bool = False, status: int = 503) -> None:
        """Every request fails for ``seconds`` (503s, or closed connections with reset)."""
        with self._lock:
            self._outage_until = time.monotonic() + seconds
            self._outage_reset = reset
            self._fail_status = status

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- internals -------------------------------------------------------------------------------
    def _decide(self, line: str) -> str:
        with self._lock:
            self.requests.append(line)
            if time.monotonic() < self._outage_until:
                return "reset" if self._outage_reset else "fail"
            if self._fail_left > 0 and (self._fail_match is None
                                        or self._fail_match.search(line)):
                self._fail_left -= 1
                return "fail_after" if self._fail_after_forward else "fail"
        return "forward"

    def _forward(self, method, path, headers, body):
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            fwd = {k: v for k, v in headers.items() if k.lower() not in _HOP}
            fwd["Content-Length"] = str(len(body))
            conn.request(method, path, body=body, headers=fwd)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()


def _error(status: int) -> bytes:
    return json.dumps({"error": {"code": status, "message": "injected fault"}}).encode()
