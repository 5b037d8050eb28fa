"""The HTTP side of ``vmpower serve``: /metrics for Prometheus, hardened (issue 19).

prometheus_client's ``start_http_server`` listens with a backlog of 5 (20 concurrent scrapers
saw a p99 of 1 s), answers every path with the metrics, and lets a client take forever to
send its request. Here prometheus_client's own ``MetricsHandler`` (content negotiation, gzip)
runs under an ``HTTPServer`` with:

* a listen backlog of limits.exporter_backlog and a thread per connection from a pool (reused,
  not started per scrape), at most limits.exporter_max_connections at once (more are closed at
  once rather than queued);
* ``/metrics`` only (and ``/`` with a link to it); any other path is 404;
* one rendering of the metrics per tick (``version``: a number that changes when serve's
  metrics do) shared by every scrape of that tick: 50 scrapers at once cost one rendering;
* limits.exporter_request_timeout_seconds for each read and write, and for the whole request:
  a client that sends its request slowly (slowloris) is cut off when the time is up.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import HTTPServer
from urllib.parse import urlsplit

from prometheus_client.exposition import MetricsHandler, choose_encoder, gzip_accepted

log = logging.getLogger("vmpower.serve")

INDEX = (b"<html><head><title>vmpower</title></head><body><h1>vmpower serve</h1>"
         b'<p><a href="/metrics">/metrics</a></p></body></html>\n')


class Handler(MetricsHandler):
    server: "MetricsServer"

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # per read and write (StreamRequestHandler)
        super().setup()
        self.server.watch(self.connection)

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.server.unwatch(self.connection)  # the request is in: only writes are left
        return ok

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        if path == "/metrics" and self.server.version is not None and not url.query:
            gz = gzip_accepted(self.headers.get("Accept-Encoding"))
            ctype, body = self.server.rendered(self.registry, self.headers.get("Accept"), gz)
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            if gz:
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif path == "/metrics":
            super().do_GET()
        elif path == "/":
            self._send(200, "text/html; charset=utf-8", INDEX)
        else:
            self._send(404, "text/plain; charset=utf-8", b"404 not found: the metrics are at /metrics\n")

    def do_HEAD(self) -> None:
        path = urlsplit(self.path).path
        self._send(200 if path in ("/", "/metrics") else 404, "text/plain; charset=utf-8", b"")

    def log_message(self, format: str, *args) -> None:
        log.debug("%s: " + format, self.client_address[0], *args)


class MetricsServer(HTTPServer):
    allow_reuse_address = True

    def __init__(self, address, handler, *, backlog: int, max_connections: int, request_timeout: float,
                 version=None):
        self.request_queue_size = backlog  # listen() backlog, used by server_activate
        self.version = version
        self._cache: dict = {}  # (content type, gzip) -> (version, body)
        self._render_lock = threading.Lock()
        self.request_timeout = float(request_timeout)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._pool = ThreadPoolExecutor(max_workers=max_connections, thread_name_prefix="metrics")
        self._pending: dict[socket.socket, float] = {}  # connection -> deadline for its request
        self._active: set[socket.socket] = set()  # connections being handled (cut off on close)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        super().__init__(address, handler)
        self._reaper = threading.Thread(target=self._reap, name="metrics-reaper", daemon=True)
        self._reaper.start()

    def rendered(self, registry, accept: str | None, gz: bool) -> tuple[str, bytes]:
        """(content type, body) of the metrics, rendered once per version."""
        import gzip

        encoder, ctype = choose_encoder(accept)
        key = (ctype, gz)
        with self._render_lock:  # one thread renders, the others of the same tick wait for it
            version = self.version()
            hit = self._cache.get(key)
            if hit is not None and hit[0] == version:
                return ctype, hit[1]
            body = encoder(registry)
            if gz:
                body = gzip.compress(body)
            self._cache[key] = (version, body)  # version read before rendering: never newer than it
            return ctype, body

    # at most max_connections handled at once; the others are closed without a thread
    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            log.debug("%s: connection refused, %s", client_address[0], "too many connections")
            self.shutdown_request(request)
            return
        with self._lock:
            self._active.add(request)
        self._pool.submit(self._handle, request, client_address)

    def _handle(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            with self._lock:
                self._pending.pop(request, None)
                self._active.discard(request)
            self.shutdown_request(request)
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        # A client that vanished, timed out or was cut off: not worth a traceback on stderr.
        log.debug("%s: connection ended with an error", client_address[0], exc_info=True)

    # whole-request deadline: the per-read timeout alone lets a client drip one byte at a time
    def watch(self, conn) -> None:
        with self._lock:
            self._pending[conn] = time.monotonic() + self.request_timeout

    def unwatch(self, conn) -> None:
        with self._lock:
            self._pending.pop(conn, None)

    def _reap(self) -> None:
        step = min(0.5, self.request_timeout / 4)
        while not self._closed.wait(step):
            now = time.monotonic()
            with self._lock:
                late = [c for c, deadline in self._pending.items() if deadline < now]
                for c in late:
                    self._pending.pop(c, None)
            for c in late:
                _cut(c)

    def server_close(self) -> None:
        self._closed.set()
        super().server_close()
        with self._lock:
            active = list(self._active)
        for c in active:  # the pool's threads are joined at exit: none may wait for a slow client
            _cut(c)
        self._pool.shutdown(wait=False, cancel_futures=True)


def _cut(conn) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)  # a handler's blocked read or write returns at once
    except OSError:
        pass


def start(registry, address: str, port: int, limits, version=None) -> tuple[MetricsServer, threading.Thread]:
    """Serve ``registry`` on http://address:port/metrics in a daemon thread. ``version()``: a
    value that changes whenever the metrics change (None: render every scrape)."""
    family, _type, _proto, _name, sockaddr = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM,
                                                                 flags=socket.AI_PASSIVE)[0]
    server_cls = type("MetricsServer", (MetricsServer,), {"address_family": family})
    server = server_cls(sockaddr[:2], Handler.factory(registry),
                        backlog=limits.exporter_backlog, max_connections=limits.exporter_max_connections,
                        request_timeout=limits.exporter_request_timeout_seconds, version=version)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server, thread
