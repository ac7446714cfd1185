"""The emulator served over HTTP on a loopback address (``batchsync emulator``)."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import sys
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import TYPE_CHECKING, Any, cast

import httpx

from batchsync.emulator.faults import _Refused

if TYPE_CHECKING:
    from batchsync.emulator.routes import Emulator


# -- the HTTP server ------------------------------------------------------------------------


def _loopback(host: str) -> tuple[str, socket.AddressFamily]:
    """Return the address to bind for a loopback host; ValueError for anything else."""
    if host == "localhost":
        return "127.0.0.1", socket.AF_INET
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None or not address.is_loopback:
        raise ValueError(
            f"refusing to serve the emulator on {host!r}: only loopback addresses "
            "(127.0.0.0/8, ::1, localhost) are allowed"
        )
    return str(address), socket.AF_INET6 if address.version == 6 else socket.AF_INET


class _Server(ThreadingHTTPServer):
    block_on_close = False  # close() must not wait out a handler asleep in a slow fault

    def __init__(
        self, address: tuple[str, int], family: socket.AddressFamily, emulator: Emulator
    ) -> None:
        self.address_family = family
        self.emulator = emulator
        self.base_url = ""
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves our own name (getfqdn), which can stall offline.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Hang up on kept-alive clients, so a closed server answers nobody."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # the client may have hung up first
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client that went away mid-answer is no error of ours
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Relay each HTTP request to Emulator.handle and write its answer back."""

    protocol_version = "HTTP/1.1"  # keep-alive; every answer carries Content-Length
    disable_nagle_algorithm = True  # headers and body go out as two writes

    def _relay(self) -> None:
        server = cast(_Server, self.server)
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        if not self.path.startswith("/"):
            self.send_error(400, "Bad request target")
            return
        request = httpx.Request(
            self.command,
            server.base_url + self.path,
            headers=list(self.headers.items()),
            content=body,
        )
        try:
            response = server.emulator.handle(request)
        except _Refused:
            self.close_connection = True  # hang up without an answer
            return
        # The bytes as they go on the wire: a wrong_encoding body must not be decoded here.
        content = b"".join(cast(Iterable[bytes], response.stream))
        self.send_response(response.status_code)
        for name, value in response.headers.multi_items():
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _relay

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: a benchmark makes thousands of requests."""


class EmulatorServer:
    """An Emulator served over HTTP on a loopback port, in a daemon thread; a context manager."""

    def __init__(self, emulator: Emulator, host: str = "127.0.0.1", port: int = 0) -> None:
        bind_host, family = _loopback(host)
        self._server = _Server((bind_host, port), family, emulator)
        bound_port = self._server.server_address[1]
        url_host = f"[{bind_host}]" if family == socket.AF_INET6 else bind_host
        self.url = f"http://{url_host}:{bound_port}"
        self._server.base_url = self.url
        self._close_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"bland-emulator-{bound_port}",
            daemon=True,
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"EmulatorServer(url={self.url!r})"

    def close(self) -> None:
        """Stop serving, drop open connections and free the port; safe to call twice."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        self._thread.join()

    def serve_forever(self) -> None:
        """Block until close() is called elsewhere or KeyboardInterrupt arrives, then close."""
        try:
            while self._thread.is_alive():
                self._thread.join(0.2)
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a person stops `batchsync emulator serve`
        finally:
            self.close()

    def __enter__(self) -> EmulatorServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
