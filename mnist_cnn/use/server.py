"""The draw-a-digit page and its JSON API: connections on an asyncio event loop, each whole
request answered by the standard library's HTTP handler on a thread.

    server = Server(("127.0.0.1", 8000), classify, page_bytes)  # classify(image bytes) -> dict
    server.serve_forever()

GET / is the page; POST /api/predict takes one image, as the raw body or as a multipart form
upload (`curl -F image=@digit.png`), and answers classify's dict as JSON. Every answer, errors
and refusals included, is JSON (but the page) and carries the same security headers.
Sized for a classroom and for careless or hostile clients: the event loop holds thousands of
connections at the cost of a buffer each (a thread each would run out), and a request must
arrive whole, headers and body, within DEADLINE seconds however slowly it trickles; only then
does a thread parse and answer it, and inference runs on at most `inference_slots()` requests
at once (bounded by memory as well as by cores). Over the connection cap the next one is
answered 503 at once. On loopback, requests naming another Host are refused (DNS rebinding: a
web page the user visits cannot reach the server through a name of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import email.parser
import email.policy
import io
import json
import logging
import os
import re
import resource
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler

MAX_BODY = 5 * 2**20
# a client waiting for leave to send its body (RFC 9110, 10.1.1); without an interim 100 curl
# waits a second before it sends anyway
EXPECT_CONTINUE = re.compile(rb"(?im)^expect:[ \t]*100-continue[ \t]*\r?$")
MAX_HEAD = 2**17  # more header bytes than this: handed over as they are, for the handler to refuse
MAX_PARTS = 16  # parts of a multipart form
MAX_CONNECTIONS = 4096  # and no more than the open-file limit allows
BACKLOG = 128
DEADLINE = 20  # seconds for a whole request to arrive, and again for its answer to leave
MEMORY_PER_INFERENCE = 200 * 2**20  # what one request may cost at worst, decoding included
MAX_BUFFERED = 256 * 2**20  # request bodies held at once by all connections together
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


BUSY = json_response(503, {"error": "the server is busy; try again in a moment"})


def is_loopback(host: str) -> bool:
    """Whether an address to listen on is this machine only."""
    return host in ("localhost", "::1") or host.startswith("127.")


class BadRequest(Exception):
    """A request the API cannot answer with 200: its status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def image_from_form(content_type: str, body: bytes) -> bytes:
    """The one file of a multipart/form-data body (any field name); forms nested inside forms
    and forms of many parts are refused before parsing (the parser recurses into each)."""
    header = email.message.Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise BadRequest(400, "the multipart form names no boundary")
    if re.search(rb"(?im)^content-type:[ \t]*multipart/", body):
        raise BadRequest(400, "a form nested inside the form is not accepted; send one image file")
    if body.count(b"--" + boundary.encode(errors="replace")) > MAX_PARTS + 1:
        raise BadRequest(400, f"the form has more than {MAX_PARTS} parts; send one image file")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    parts = list(message.iter_parts()) if message.is_multipart() else []
    files = [p for p in parts if p.get_filename() is not None] or parts
    if len(files) != 1:
        raise BadRequest(400, f"send one image file in the form, not {len(files)} parts")
    payload = files[0].get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


class Handler(BaseHTTPRequestHandler):
    """GET / is the page, POST /api/predict the API; everything else is a JSON error."""

    server: Server  # type: ignore[assignment]  # ours, which carries the model
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
            with self.server.inference:  # a few requests at once run the model
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
        body = self.rfile.read(length)  # what arrived before the deadline or the client's end
        if len(body) < length:
            raise BadRequest(
                400,
                f"the body ended after {len(body):,} of the {length:,} bytes "
                "its Content-Length announced",
            )
        kind = self.headers.get("Content-Type", "")
        return image_from_form(kind, body) if kind.lower().startswith("multipart/") else body

    def refuse_method(self) -> None:
        """405: the API takes POST only."""
        self.send_json(405, {"error": "use POST with the image as the body"}, {"Allow": "POST"})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = refuse_method

    def log_message(self, format: str, *args: object) -> None:
        """One line per request, through the tool's logger."""
        log.info("%s %s", self.address_string(), format % args)


def inference_slots() -> int:
    """How many requests may run the model at once: one per core, as memory allows."""
    available = None
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    if available is None:
        with contextlib.suppress(AttributeError, ValueError, OSError):
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    cores = os.cpu_count() or 1
    return max(1, min(cores, (available or cores * MEMORY_PER_INFERENCE) // MEMORY_PER_INFERENCE))


def connection_cap() -> int:
    """MAX_CONNECTIONS, or fewer where the open-file limit (raised to its maximum) is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_CONNECTIONS + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else min(MAX_CONNECTIONS, soft - 256)


def head_end(data: bytes | bytearray) -> int | None:
    """Where a request's header block ends (after its blank line), or None while it has not;
    an HTTP/0.9 request line ends it at once."""
    first = data.find(b"\n")
    if first >= 0 and len(data[:first].split()) < 3:
        return first + 1
    ends = [i + len(m) for m in (b"\r\n\r\n", b"\n\n") if (i := data.find(m)) >= 0]
    return min(ends) if ends else None


def body_length(head: bytes) -> int:
    """The body bytes to wait for: the first Content-Length, when it is one the handler takes."""
    match = re.search(rb"(?im)^content-length:[ \t]*(\d{1,18})[ \t]*\r?$", head)
    length = int(match.group(1)) if match else 0
    return length if length <= MAX_BODY else 0


class Busy(Exception):
    """More request bodies in memory than MAX_BUFFERED allows."""


async def discard(reader: asyncio.StreamReader) -> None:
    """Read and drop what a client still sends, until it closes."""
    while await reader.read(65536):
        pass


class Server:
    """The event loop that reads requests and writes answers; a thread pool that handles them.
    Used like the standard library's servers: serve_forever(), shutdown(), server_close()."""

    def __init__(
        self,
        address: tuple[str, int],
        classify: Callable[[bytes], dict],
        page: bytes,
        workers: int | None = None,
        max_connections: int | None = None,
        deadline: float = DEADLINE,
    ) -> None:
        self.classify, self.page, self.deadline = classify, page, deadline
        self.loopback_only = is_loopback(address[0])
        slots = workers or inference_slots()
        self.inference = threading.Semaphore(slots)
        self.max_connections = max_connections or connection_cap()
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.create_server(address, family=family, backlog=BACKLOG)
        self.server_address = self.socket.getsockname()
        # two threads more than inference slots, so a page or an error is answered while the
        # slots are busy; no more, so that whole requests wait in the pool's first-come queue
        # rather than at the semaphore, which wakes no one in order (64 clients on 2 slots:
        # p99 1.0 s with 32 threads, 0.3 s with 4)
        self.pool = ThreadPoolExecutor(slots + 2, thread_name_prefix="request")
        self.open = self.buffered = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping: asyncio.Event | None = None
        self.stop_asked = False
        self.stopped = threading.Event()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server_close()

    def serve_forever(self) -> None:
        """Answer connections until stop() (a signal handler) or shutdown() (another thread)."""
        self.stopped.clear()
        try:
            asyncio.run(self.run())
        finally:
            self.stopped.set()

    async def run(self) -> None:
        """The event loop's main task."""
        self.stopping = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        server = await asyncio.start_server(self.connection, sock=self.socket)
        async with server:
            if not self.stop_asked:
                await self.stopping.wait()

    def stop(self) -> None:
        """Ask serve_forever to return; safe from a signal handler and from other threads."""
        self.stop_asked = True
        if self.loop is not None and self.stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed already
                self.loop.call_soon_threadsafe(self.stopping.set)

    def shutdown(self) -> None:
        """Stop serve_forever and wait for it to return."""
        self.stop()
        if self.loop is not None:
            self.stopped.wait()

    def server_close(self) -> None:
        """Close the listening socket and let the threads go."""
        self.socket.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: read its request within the deadline, answer, close."""
        peer = writer.get_extra_info("peername") or ("?", 0)
        try:
            if self.open >= self.max_connections:
                answer = BUSY
            else:
                self.open += 1
                try:
                    answer = await self.answer(reader, writer, peer)
                finally:
                    self.open -= 1
            if answer:
                writer.write(answer)
                await asyncio.wait_for(writer.drain(), self.deadline)
                # read what else comes for a moment, so closing does not reset the answer
                writer.write_eof()
                with contextlib.suppress(TimeoutError, OSError):
                    await asyncio.wait_for(discard(reader), 1)
        except (OSError, TimeoutError):
            pass  # the client went away or would not read its answer
        except asyncio.CancelledError:
            # the server is stopping; ending the task cancelled would make Python 3.11's
            # asyncio.streams print a traceback for it (task.exception() of a cancelled task)
            pass
        finally:
            writer.close()

    async def answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: tuple
    ) -> bytes:
        """The bytes of the answer to the request on this connection (none for a silent one).
        Its body counts against MAX_BUFFERED until the answer is made, queue and handler too."""
        data, held = bytearray(), [0]  # held: the bytes receive() reserved, also if cut short
        try:
            try:
                await asyncio.wait_for(self.receive(reader, writer, data, held), self.deadline)
            except Busy:
                return BUSY
            except TimeoutError:
                end = head_end(data)
                if not data:
                    return b""  # a connection that never said anything
                if end is None:
                    log.info("%s request timed out", peer[0])
                    return json_response(
                        408, {"error": f"the request did not arrive within {self.deadline:g} s"}
                    )
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.pool, self.respond, bytes(data), peer)
        finally:
            self.buffered -= held[0]

    async def receive(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        data: bytearray,
        held: list[int],
    ) -> None:
        """Read a request's head and the body its Content-Length announces into `data`, first
        reserving the body's bytes in `held`; past MAX_BUFFERED in all, Busy (a 503). A client
        that waits for `Expect: 100-continue` (curl, for bodies over 1 MB) is told to send."""
        while (end := head_end(data)) is None and len(data) <= MAX_HEAD:
            if not (chunk := await reader.read(65536)):
                return
            data += chunk
        if end is None:
            return
        length = body_length(bytes(data[:end]))
        if self.buffered + length > MAX_BUFFERED:
            raise Busy
        self.buffered += length
        held[0] = length
        if length and len(data) == end and EXPECT_CONTINUE.search(bytes(data[:end])):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while len(data) < end + length and (chunk := await reader.read(end + length - len(data))):
            data += chunk

    def respond(self, data: bytes, peer: tuple) -> bytes:
        """Run the standard library's handler on one whole request; its answer's bytes."""
        handler = Handler.__new__(Handler)
        handler.server, handler.client_address, handler.request = self, peer, None
        handler.rfile, handler.wfile = io.BytesIO(data), io.BytesIO()
        handler.close_connection = True
        try:
            handler.handle_one_request()
        except Exception as e:  # noqa: BLE001  one line, never a traceback; the client gets 500
            log.warning("%s: request failed (%s: %s)", peer[0], type(e).__name__, e)
            return json_response(500, {"error": "the server failed on this request"})
        return handler.wfile.getvalue()
