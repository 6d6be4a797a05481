"""--serve: the JSON API against a live server, the page in a real Chromium, and --export."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from browser import CHROMIUM, STROKES, draw_in_browser, need_chromium
from images import IMAGE_MODES, hostile_images, nested_form, seven_in_mode
from paths import ROOT
from PIL import Image, ImageDraw

import main

MODEL = ROOT / "lr_1e-3" / "model.pth"


SERVER_PID: list[int] = []  # the live server's process, for its peak memory


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """`main.py --serve` on a free port with the committed model; its base URL."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "main.py"),
            "--serve",
            "--port",
            "0",
            "--model_path",
            str(MODEL),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    SERVER_PID[:] = [proc.pid]
    line = proc.stdout.readline()
    match = re.search(r"http://localhost:(\d+)/", line)
    assert match, line + proc.stderr.read()
    # drain the request log: a full pipe would block the server's threads
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    yield f"http://127.0.0.1:{match.group(1)}"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) in (0, 130)
    assert "Traceback" not in proc.stderr.read()


def request(
    base: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None
) -> tuple[int, dict | str]:
    """One HTTP request; the status and the JSON (or text) answer."""
    conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=60)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read().decode()
    conn.close()
    kind = response.getheader("Content-Type", "")
    return response.status, json.loads(data) if kind.startswith("application/json") else data


def png(image: Image.Image) -> bytes:
    """An image as PNG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def drawn_digit(digit: int, photo: bool = False) -> Image.Image:
    """A digit drawn with a thick pen; as a photo: dark ink on a tinted, noisy, larger page."""
    image = Image.new("L", (200, 200), 255)
    draw = ImageDraw.Draw(image)
    for stroke in STROKES[digit]:
        draw.line(stroke, fill=0, width=16, joint="curve")
    if not photo:
        return image
    rng = np.random.default_rng(digit)
    page = np.asarray(image.resize((640, 640)), dtype=np.float32) * 0.7 + 60
    page = np.clip(page + rng.normal(0, 12, page.shape), 0, 255).astype(np.uint8)
    rgb = np.stack([page, (page * 0.95).astype(np.uint8), (page * 0.85).astype(np.uint8)], -1)
    return Image.fromarray(rgb, "RGB")


@pytest.mark.parametrize("digit", range(10))
def test_hand_drawn_digits_are_read(server: str, digit: int) -> None:
    status, answer = request(server, "POST", "/api/predict", png(drawn_digit(digit)))
    assert status == 200, answer
    assert answer["digit"] == digit, answer["probabilities"]
    assert len(answer["probabilities"]) == 10
    assert sum(answer["probabilities"]) == pytest.approx(1, abs=1e-5)
    assert answer["confidence"] == max(answer["probabilities"])
    assert answer["preprocessed"].startswith("data:image/png;base64,")


@pytest.mark.parametrize("mode", IMAGE_MODES)
def test_the_api_reads_every_image_mode_as_predict_does(server: str, mode: str) -> None:
    status, answer = request(server, "POST", "/api/predict", seven_in_mode(mode))
    assert status == 200 and answer["digit"] == 7, answer


def test_a_photo_like_jpeg_is_read(server: str) -> None:
    buffer = io.BytesIO()
    drawn_digit(7, photo=True).save(buffer, format="JPEG", quality=80)
    status, answer = request(server, "POST", "/api/predict", buffer.getvalue())
    assert status == 200 and answer["digit"] == 7


BODIES = {
    "garbage": b"this is not an image",
    "none": None,
    "x": b"x",
    "blank": png(Image.new("RGB", (120, 120), "white")),
}


@pytest.mark.parametrize(
    "method, path, body, status, needle",
    [
        ("POST", "/api/predict", "garbage", 400, "not an image"),
        ("POST", "/api/predict", "blank", 400, "blank"),
        ("GET", "/api/predict", "none", 405, "use POST"),
        ("DELETE", "/api/predict", "none", 405, "use POST"),
        ("GET", "/secret.txt", "none", 404, "no such page"),
        ("POST", "/api/other", "x", 404, "no such endpoint"),
    ],
)
def test_errors_are_json_with_the_right_status(
    server: str, method: str, path: str, body: str, status: int, needle: str
) -> None:
    got, answer = request(server, method, path, BODIES[body])
    assert got == status and needle in answer["error"]


def test_a_6_mb_body_is_refused_with_413_before_it_is_read(server: str) -> None:
    import socket

    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:%s\r\n" % port.encode()
            + b"Content-Length: %d\r\n\r\n" % (6 * 2**20)
            + b"\0" * 65536
        )
        reply = sock.makefile("rb").read().decode()  # the server answers and closes at once
    assert reply.startswith("HTTP/1.0 413") and "larger than 5,242,880 bytes" in reply


def noisy_seven(side: int) -> bytes:
    """A dark 7 on a light page of noise: a PNG of about 5 MB at side 1,500."""
    rng = np.random.default_rng(0)
    page = Image.fromarray(rng.integers(200, 256, (side, side, 3), dtype=np.uint8))
    ImageDraw.Draw(page).line(
        [(side * 0.2, side * 0.15), (side * 0.75, side * 0.15), (side * 0.35, side * 0.85)],
        fill=(20, 20, 20),
        width=side // 14,
    )
    out = io.BytesIO()
    page.save(out, format="PNG")
    return out.getvalue()


def test_curl_uploads_a_5_mb_photo_without_waiting_for_100_continue(
    server: str, tmp_path: Path
) -> None:
    """curl sends `Expect: 100-continue` before a body over 1 MB and waits a second for the
    interim answer before it sends anyway: the server answers 100 at once."""
    photo = tmp_path / "seven.png"
    photo.write_bytes(noisy_seven(1500))
    assert 4.5 * 2**20 < photo.stat().st_size <= 5 * 2**20
    done = subprocess.run(
        ["curl", "-sS", "-v", "--data-binary", f"@{photo}", f"{server}/api/predict"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0 and json.loads(done.stdout)["digit"] == 7, done.stderr
    assert "Expect: 100-continue" in done.stderr and "HTTP/1.1 100 Continue" in done.stderr
    assert "Done waiting for 100-continue" not in done.stderr  # curl's line when it gave up


def test_a_decompression_bomb_is_refused(server: str) -> None:
    bomb = png(Image.new("1", (20_000, 20_000), 1))  # 400 megapixels in a few kilobytes
    assert len(bomb) < 2**20
    status, answer = request(server, "POST", "/api/predict", bomb)
    assert status == 400 and "too large" in answer["error"]


def test_the_page_is_served_and_self_contained(server: str) -> None:
    status, page = request(server, "GET", "/")
    assert status == 200
    assert 'id="digit"' in page and 'id="clear"' in page and "<canvas" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing from elsewhere


def test_a_classroom_of_64_clients_times_30_requests_all_get_200(server: str, capsys) -> None:
    body = png(drawn_digit(3).resize((56, 56)))  # a phone's small upload
    latencies: list[float] = []
    failures: list[str] = []

    def client() -> None:
        for _ in range(30):
            start = time.perf_counter()
            try:
                status, _ = request(server, "POST", "/api/predict", body)
            except OSError as e:  # a reset or refused connection is a failed request
                status = repr(e)
            latencies.append(time.perf_counter() - start)
            if status != 200:
                failures.append(str(status))

    threads = [threading.Thread(target=client) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(latencies) == 64 * 30 and failures == []
    assert request(server, "GET", "/")[0] == 200  # and it still answers
    q = statistics.quantiles(latencies, n=100)
    with capsys.disabled():
        print(f"\n64 clients x 30 requests: p50 {1000 * q[49]:.0f} ms, p99 {1000 * q[98]:.0f} ms")


def test_a_form_upload_as_curl_sends_it_is_read(server: str) -> None:
    boundary = "------------------------d74496d66958873e"
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
            f'filename="seven.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        + png(drawn_digit(7))
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, answer = request(
        server,
        "POST",
        "/api/predict",
        form,
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert status == 200 and answer["digit"] == 7


def test_a_client_that_sends_nothing_does_not_block_others(server: str) -> None:
    import socket

    host, port = server.removeprefix("http://").split(":")
    idle = socket.create_connection((host, int(port)))
    idle.sendall(b"POST /api/predict HTTP/1.1\r\nContent-Length: 1000\r\n\r\n")  # no body
    try:
        status, answer = request(server, "POST", "/api/predict", png(drawn_digit(1)))
        assert status == 200 and answer["digit"] == 1
    finally:
        idle.close()


@pytest.mark.slow
def test_drawing_in_chromium_shows_the_digit(server: str, tmp_path: Path) -> None:
    need_chromium()
    from playwright.sync_api import expect, sync_playwright

    asked: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 900, "height": 640})
        page.on("request", lambda r: asked.append(r.url))
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server + "/")
        for digit in (1, 0, 7):
            page.click("#clear")
            assert page.inner_text("#digit") == ""
            draw_in_browser(page, STROKES[digit])
            expect(page.locator("#confidence")).to_contain_text("sure")
            assert page.inner_text("#digit") == str(digit)
        assert page.get_attribute("#seen", "src").startswith("data:image/png;base64,")
        shot = Path(os.environ.get("SCREENSHOT", tmp_path / "page.png"))
        page.screenshot(path=str(shot))
        page.set_viewport_size({"width": 390, "height": 844})  # a phone
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        browser.close()
    assert errors == []
    assert asked and all(url.startswith(server) for url in asked), asked
    with Image.open(shot) as im:
        assert im.size == (900, 640)


@pytest.mark.slow
def test_onnx_export_gives_the_same_digits_and_logits(
    real_mnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import onnxruntime as ort
    import torch

    path = tmp_path / "model.onnx"
    assert main.main(["--export", str(path), "--model_path", str(MODEL)]) == 0
    assert "onnxruntime" in capsys.readouterr().out
    images = main.get_loader("test", str(real_mnist), 1000, limit=1000).images
    model = main.load_model(MODEL)
    with torch.inference_mode():
        expected = model.eval()(images).numpy()
    session = ort.InferenceSession(str(path))
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    got = np.concatenate(
        [session.run(None, {"images": images[i : i + 250].numpy()})[0] for i in range(0, 1000, 250)]
    )  # several batch sizes: dynamic batch
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert np.abs(got - expected).max() < 1e-4


def test_hostile_images_and_forms_get_json_400_and_good_ones_still_200(server: str) -> None:
    for name, data in hostile_images().items():
        status, answer = request(server, "POST", "/api/predict", data)
        assert status == 400, (name, answer)
        assert "cannot read" in answer["error"] or "too large" in answer["error"], answer
    kind, body = nested_form(20_000)
    status, answer = request(server, "POST", "/api/predict", body, {"Content-Type": kind})
    assert status == 400 and "nested" in answer["error"]
    status, answer = request(server, "POST", "/api/predict", png(drawn_digit(7)))
    assert status == 200 and answer["digit"] == 7
    status_file = Path(f"/proc/{SERVER_PID[0]}/status")
    if status_file.exists():  # Linux: the server's peak resident memory so far
        peak = int(re.search(r"VmHWM:\s+(\d+) kB", status_file.read_text()).group(1))
        print(f"\nthe server after the hostile images: peak memory {peak / 1024:.0f} MB")
        assert peak < 1_000_000
