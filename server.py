"""The draw-a-digit page and its JSON API, on the standard library's threaded HTTP server.

    server = Server(("127.0.0.1", 8000), classify, page_bytes)  # classify(image bytes) -> dict
    server.serve_forever()

GET / is the page; POST /api/predict takes one image, as the raw body or as a multipart form
upload (`curl -F image=@digit.png`), and answers classify's dict as JSON. Every answer, errors
and refusals included, is JSON (but the page) and carries the same security headers. Sized for
a classroom: a listen backlog of 128 absorbs bursts of connections, at most 512 are open at once
(the next is answered 503 at once), inference runs on at most one request per core while the
others wait their turn, and an idle or slow client times out without delaying anyone.
On loopback, requests naming another Host are refused (DNS rebinding: a web page the user visits
cannot reach the server through a name of its own). Imports nothing of this project.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import json
import logging
import os
import re
import socket
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 5 * 2**20
MAX_CONNECTIONS = 512
BACKLOG = 128
IDLE_TIMEOUT = 15  # seconds a client may stay silent before its connection is closed
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; img-src data: blob:; "
    "style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "connect-src 'self'",
}

log = logging.getLogger("mnist_cnn")


def json_response(status: int, obj: dict) -> bytes:
    """A whole HTTP/1.0 JSON response, for answers given without a handler (over the cap)."""
    body = json.dumps(obj).encode()
    head = [
        f"HTTP/1.0 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in SECURITY_HEADERS.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def is_loopback(host: str) -> bool:
    """Whether an address to listen on is this machine only."""
    return host in ("localhost", "::1") or host.startswith("127.")


class BadRequest(Exception):
    """A request the API cannot answer with 200: its status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def image_from_form(content_type: str, body: bytes) -> bytes:
    """The one file of a multipart/form-data body (any field name)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    parts = list(message.iter_parts()) if message.is_multipart() else []
    files = [p for p in parts if p.get_filename() is not None] or parts
    if len(files) != 1:
        raise BadRequest(400, f"send one image file in the form, not {len(files)} parts")
    return files[0].get_payload(decode=True) or b""


class Handler(BaseHTTPRequestHandler):
    """GET / is the page, POST /api/predict the API; everything else is a JSON error."""

    server: Server
    timeout = IDLE_TIMEOUT
    server_version = "mnist-cnn"
    error_content_type = "application/json"

    def end_headers(self) -> None:
        """Add the security headers to every answer, the library's own errors included."""
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def send(self, status: int, body: bytes, kind: str, extra: dict | None = None) -> None:
        """One answer; HEAD gets the headers alone."""
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, obj: dict, extra: dict | None = None) -> None:
        """One JSON answer."""
        self.send(status, json.dumps(obj).encode(), "application/json", extra)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (bad request lines, versions, headers) as JSON."""
        self.close_connection = True
        self.command = getattr(self, "command", None) or ""
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # a status line and headers even then
        text = message or HTTPStatus(code).phrase
        self.log_error("code %d, message %s", code, text)
        self.send_json(code, {"error": text})

    def host_allowed(self) -> bool:
        """On loopback, only the loopback names with our port (DNS rebinding)."""
        host = self.headers.get("Host")
        if host is None or not self.server.loopback_only:
            return True
        port = self.server.server_address[1]
        allowed = {f"{name}:{port}" for name in LOOPBACK_NAMES}
        return host.lower() in allowed or (port == 80 and host.lower() in LOOPBACK_NAMES)

    def route(self) -> bool:
        """Refuse a foreign Host; True when the request may go on."""
        if self.host_allowed():
            return True
        self.close_connection = True
        self.send_json(
            403,
            {"error": "this server answers only to localhost: the Host header names another site"},
        )
        return False

    def do_GET(self) -> None:
        """The page, or a refusal."""
        if not self.route():
            return
        if self.path == "/":
            self.send(200, self.server.page, "text/html; charset=utf-8")
        elif self.path == "/api/predict":
            self.refuse_method()
        else:
            self.send_json(404, {"error": f"no such page: {self.path}"})

    do_HEAD = do_GET

    def do_POST(self) -> None:
        """One image in, the classifier's answer out."""
        if not self.route():
            return
        if self.path != "/api/predict":
            self.close_connection = True
            return self.send_json(404, {"error": f"no such endpoint: {self.path}"})
        try:
            image = self.read_image()
            with self.server.inference:  # at most one request per core runs the model
                answer = self.server.classify(image)
        except BadRequest as e:
            self.close_connection = True  # the rest of the body, if any, is never read
            return self.send_json(e.status, {"error": str(e)})
        except ValueError as e:
            return self.send_json(400, {"error": f"cannot read a digit in this image: {e}"})
        self.send_json(200, answer)

    def read_image(self) -> bytes:
        """The uploaded image: the raw body, or the file of a multipart form."""
        declared = self.headers.get("Content-Length")
        if declared is None:
            raise BadRequest(411, "send the image with a Content-Length")
        if not re.fullmatch(r"\s*\d{1,18}\s*", declared):
            raise BadRequest(400, f"Content-Length must be a byte count, not {declared!r}")
        length = int(declared)
        if length > MAX_BODY:
            raise BadRequest(
                413, f"the image is larger than {MAX_BODY:,} bytes; send a smaller one"
            )
        body = bytearray()
        with contextlib.suppress(TimeoutError):  # a client that stops sending: what came counts
            while len(body) < length and (chunk := self.rfile.read1(length - len(body))):
                body += chunk
        if len(body) < length:
            raise BadRequest(
                400,
                f"the body ended after {len(body):,} of the {length:,} bytes "
                "its Content-Length announced",
            )
        kind = self.headers.get("Content-Type", "")
        body = bytes(body)
        return image_from_form(kind, body) if kind.lower().startswith("multipart/") else body

    def refuse_method(self) -> None:
        """405: the API takes POST only."""
        self.send_json(405, {"error": "use POST with the image as the body"}, {"Allow": "POST"})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = refuse_method

    def log_message(self, format: str, *args: object) -> None:
        """One line per request, through the tool's logger."""
        log.info("%s %s", self.address_string(), format % args)


class Server(ThreadingHTTPServer):
    """A thread per connection, at most MAX_CONNECTIONS of them; `classify` runs on at most
    `workers` requests at once."""

    daemon_threads = True  # Ctrl-C does not wait for open connections
    request_queue_size = BACKLOG  # the standard library listens with a backlog of 5

    def __init__(
        self,
        address: tuple[str, int],
        classify: Callable[[bytes], dict],
        page: bytes,
        workers: int | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.classify, self.page = classify, page
        self.loopback_only = is_loopback(address[0])
        self.inference = threading.Semaphore(workers or os.cpu_count() or 1)
        self.open_slots = threading.BoundedSemaphore(max_connections)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)

    def process_request(self, request: socket.socket, client_address: tuple) -> None:
        """Give the connection a thread, or answer 503 at once when all slots are taken."""
        if self.open_slots.acquire(blocking=False):
            try:
                super().process_request(request, client_address)
            except BaseException:
                self.open_slots.release()
                raise
            return
        request.setblocking(False)
        with contextlib.suppress(OSError):  # read what came, so closing does not reset the answer
            request.recv(65536)
        request.settimeout(1)
        with contextlib.suppress(OSError):
            request.sendall(
                json_response(503, {"error": "the server is busy; try again in a moment"})
            )
        self.shutdown_request(request)

    def process_request_thread(self, request: socket.socket, client_address: tuple) -> None:
        """Handle one connection, then give its slot back."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.open_slots.release()

    def handle_error(self, request: object, client_address: tuple) -> None:
        """A failed request: one line, never a traceback."""
        log.warning("%s: request failed (%s)", client_address[0], sys.exc_info()[1])
