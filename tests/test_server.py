"""server.py in-process with a fake classifier: every status, odd HTTP, uploads, capacity."""

from __future__ import annotations

import contextlib
import http.client
import json
import selectors
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from images import nested_form

from mnist_cnn.use import server

PAGE = b"<!doctype html><title>page</title>"


def fake_classify(image: bytes) -> dict:
    """Digit = the image's length mod 10; b'bad' is not an image."""
    if image == b"bad":
        raise ValueError("not an image this tool can read")
    return {"digit": len(image) % 10, "confidence": 1.0}


@pytest.fixture
def base() -> Iterator[tuple[str, int]]:
    """A live server on a free loopback port with a 1 s request deadline; (host, port)."""
    srv = server.Server(("127.0.0.1", 0), fake_classify, PAGE, max_connections=400, deadline=1)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_address[:2]
    srv.shutdown()
    srv.server_close()


def raw(address: tuple[str, int], data: bytes, timeout: float = 5) -> tuple[int, dict, bytes]:
    """Send bytes as they are; the status, headers and body of the answer."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def post(
    address: tuple[str, int],
    body: bytes,
    length: str | None = None,
    host: str | None = None,
    kind: str = "image/png",
) -> bytes:
    host = host or f"127.0.0.1:{address[1]}"
    size = str(len(body)) if length is None else length
    return (
        f"POST /api/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: {kind}\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode() + body


@pytest.mark.parametrize("length", ["-5", "-1", "abc", "1_0", " "])
def test_a_bad_content_length_is_400_at_once(base: tuple[str, int], length: str) -> None:
    began = time.perf_counter()
    status, headers, body = raw(base, post(base, b"x", length))
    assert status == 400 and "Content-Length" in json.loads(body)["error"]
    assert time.perf_counter() - began < 1
    assert headers["Content-Type"] == "application/json"


def test_a_short_body_is_400_when_the_timeout_ends(base: tuple[str, int]) -> None:
    status, _, body = raw(base, post(base, b"12345", "100"))
    assert status == 400 and "ended after 5 of the 100 bytes" in json.loads(body)["error"]
    assert raw(base, post(base, b"123"))[0] == 200  # the thread is free again


@pytest.mark.parametrize(
    "request_line, status",
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/9.9\r\n\r\n", 505),
        (b"GET / HTTP/1.x\r\n\r\n", 400),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    ],
)
def test_malformed_requests_get_json(
    base: tuple[str, int], request_line: bytes, status: int
) -> None:
    got, headers, body = raw(base, request_line)
    assert got == status and "error" in json.loads(body)
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_head_has_no_body_and_405_has_the_security_headers(base: tuple[str, int]) -> None:
    host = f"Host: 127.0.0.1:{base[1]}\r\n"
    status, headers, body = raw(base, f"HEAD / HTTP/1.1\r\n{host}\r\n".encode())
    assert status == 200 and body == b"" and int(headers["Content-Length"]) == len(PAGE)
    status, headers, body = raw(base, f"HEAD /api/predict HTTP/1.1\r\n{host}\r\n".encode())
    assert status == 405 and body == b""
    status, headers, body = raw(base, f"GET /api/predict HTTP/1.1\r\n{host}\r\n".encode())
    assert status == 405 and headers["Allow"] == "POST" and json.loads(body)["error"]
    for name in server.SECURITY_HEADERS:
        assert name in headers


def test_a_form_upload_is_read_like_a_raw_body(base: tuple[str, int]) -> None:
    image = bytes(range(256)) * 3 + b"\r\n--x"  # binary, with a line break and a dash inside
    boundary = "----form7"
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="anything"; '
            f'filename="d.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, _, body = raw(base, post(base, form, kind=f"multipart/form-data; boundary={boundary}"))
    assert status == 200 and json.loads(body)["digit"] == len(image) % 10
    two = form.replace(
        f"--{boundary}--".encode(),
        f"--{boundary}\r\nContent-Disposition: "
        f'form-data; name="b"; filename="e.png"\r\n\r\nxx\r\n--{boundary}--'.encode(),
    )
    status, _, body = raw(base, post(base, two, kind=f"multipart/form-data; boundary={boundary}"))
    assert status == 400 and "one image file" in json.loads(body)["error"]


def test_errors_of_the_classifier_and_paths(base: tuple[str, int]) -> None:
    assert raw(base, post(base, b"bad"))[0] == 400
    assert raw(base, post(base, b"", str(server.MAX_BODY + 1)))[0] == 413  # body never sent
    host = f"Host: 127.0.0.1:{base[1]}\r\n"
    assert (
        raw(base, f"POST /elsewhere HTTP/1.1\r\n{host}Content-Length: 0\r\n\r\n".encode())[0] == 404
    )
    assert raw(base, f"POST /api/predict HTTP/1.1\r\n{host}\r\n".encode())[0] == 411


@pytest.mark.parametrize("host", ["evil.example:80", "attacker.test", "localhost:1"])
def test_a_foreign_host_is_refused_on_loopback(base: tuple[str, int], host: str) -> None:
    status, _, body = raw(base, post(base, b"123", host=host))
    assert status == 403 and "localhost" in json.loads(body)["error"]
    for name in ("localhost", "127.0.0.1"):
        assert raw(base, post(base, b"123", host=f"{name}:{base[1]}"))[0] == 200


def test_idle_connections_do_not_delay_a_real_request(base: tuple[str, int]) -> None:
    idle = [socket.create_connection(base, timeout=5) for _ in range(300)]
    try:
        for sock in idle[:150]:
            sock.sendall(b"POST /api/predict HTTP/1.1\r\n")  # half a request, then nothing
        began = time.perf_counter()
        conn = http.client.HTTPConnection(*base, timeout=5)
        conn.request("POST", "/api/predict", body=b"1234")
        assert conn.getresponse().status == 200
        assert time.perf_counter() - began < 1
    finally:
        for sock in idle:
            sock.close()


def test_a_connection_over_the_cap_gets_503_at_once() -> None:
    srv = server.Server(("127.0.0.1", 0), fake_classify, PAGE, max_connections=3)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    address = srv.server_address[:2]
    held = [socket.create_connection(address, timeout=5) for _ in range(3)]
    try:
        time.sleep(0.2)  # let the server take the three
        began = time.perf_counter()
        status, _, body = raw(address, post(address, b"123"))
        assert status == 503 and "busy" in json.loads(body)["error"]
        assert time.perf_counter() - began < 1
    finally:
        for sock in held:
            sock.close()
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def many_files() -> Iterator[None]:
    """Room for about 1,100 open sockets in this process (client and server ends)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    if want < 1500:
        pytest.skip(f"the open-file limit is {hard}; the test needs 1,500")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_520_trickling_clients_delay_no_one_and_meet_the_deadline(many_files: None) -> None:
    """The issue's attack, faster: 520 clients each send one byte a second (a per-read idle
    timeout would never fire) while normal requests keep coming; the deadline is 4 s."""
    srv = server.Server(("127.0.0.1", 0), fake_classify, PAGE, deadline=4)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    address = srv.server_address[:2]
    request = post(address, b"123")
    slow = []
    for start in range(0, 520, 100):  # in bursts the listen backlog (128) holds, as clients
        # arriving over time do (one burst of 520 loses SYNs, and data waits for retransmits)
        slow += [
            socket.create_connection(address, timeout=10) for _ in range(min(100, 520 - start))
        ]
        time.sleep(0.1)
    latencies: list[float] = []
    try:
        began = time.perf_counter()
        sent = 0
        while time.perf_counter() - began < 6:
            if time.perf_counter() - began >= sent and sent < 8:
                for sock in slow:
                    with contextlib.suppress(OSError):  # closed by the deadline
                        sock.send(request[sent : sent + 1])
                sent += 1
            start = time.perf_counter()
            status, _, body = raw(address, request)
            latencies.append(time.perf_counter() - start)
            assert status == 200 and json.loads(body)["digit"] == 3
            time.sleep(0.2)
        answers = []  # each 408 comes 4 s after its connection was accepted (a full
        # backlog delays some connections by a SYN retry or two): wait up to 10 s more
        waiting = selectors.DefaultSelector()
        for sock in slow:
            waiting.register(sock, selectors.EVENT_READ)
        end = time.perf_counter() + 10
        while waiting.get_map() and time.perf_counter() < end:
            for key, _ in waiting.select(timeout=0.5):
                with contextlib.suppress(OSError):
                    answers.append(key.fileobj.recv(200))
                waiting.unregister(key.fileobj)
    finally:
        for sock in slow:
            sock.close()
        srv.shutdown()
        srv.server_close()
    print(
        f"\n520 trickling clients: {len(latencies)} normal requests, slowest {max(latencies):.3f} s"
    )
    assert len(latencies) > 10 and max(latencies) < 2
    assert sum(a.startswith(b"HTTP/1.0 408 ") for a in answers) == 520


def test_nested_and_many_part_forms_are_refused(base: tuple[str, int]) -> None:
    kind, body = nested_form(20_000)  # the standard library's parser would recurse 20,000 deep
    status, _, answer = raw(base, post(base, body, kind=kind))
    assert status == 400 and "nested" in json.loads(answer)["error"]
    part = '--m\r\nContent-Disposition: form-data; name="f"; filename="d.png"\r\n\r\nx\r\n'
    many = (part * 40 + "--m--\r\n").encode()
    status, _, answer = raw(base, post(base, many, kind="multipart/form-data; boundary=m"))
    assert status == 400 and "parts" in json.loads(answer)["error"]
    status, _, answer = raw(base, post(base, many, kind="multipart/form-data"))
    assert status == 400 and "boundary" in json.loads(answer)["error"]
    assert raw(base, post(base, b"123"))[0] == 200


def test_bodies_in_memory_are_bounded_in_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many slow uploads at once cannot fill the memory: past MAX_BUFFERED, 503 at once."""
    monkeypatch.setattr(server, "MAX_BUFFERED", 1000)
    srv = server.Server(("127.0.0.1", 0), fake_classify, PAGE, deadline=3)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    address = srv.server_address[:2]
    holding = socket.create_connection(address, timeout=5)
    try:
        holding.sendall(post(address, b"x" * 10, "900"))  # 900 bytes announced, 10 sent
        time.sleep(0.3)
        status, _, body = raw(address, post(address, b"y" * 200))
        assert status == 503 and "busy" in json.loads(body)["error"]
        assert raw(address, post(address, b"z" * 50))[0] == 200  # what still fits is read
    finally:
        holding.close()
        srv.shutdown()
        srv.server_close()
    assert srv.buffered == 0


def test_a_body_counts_until_it_is_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole body waiting for the model (or for a thread) still holds its bytes: a fast sender
    cannot queue more than MAX_BUFFERED behind a slow classify."""
    monkeypatch.setattr(server, "MAX_BUFFERED", 1000)
    release = threading.Event()

    def slow_classify(image: bytes) -> dict:
        release.wait(5)
        return fake_classify(image)

    srv = server.Server(("127.0.0.1", 0), slow_classify, PAGE, deadline=3)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    address = srv.server_address[:2]
    first: list[int] = []
    waiting = threading.Thread(
        target=lambda: first.append(raw(address, post(address, b"x" * 900))[0])
    )
    waiting.start()
    try:
        time.sleep(0.3)  # the 900 bytes have arrived whole and wait in classify
        status, _, body = raw(address, post(address, b"y" * 200))
        assert status == 503 and "busy" in json.loads(body)["error"]
    finally:
        release.set()
        waiting.join()
        srv.shutdown()
        srv.server_close()
    assert first == [200] and srv.buffered == 0
