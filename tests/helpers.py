"""Helpers the tests share: tiny IDX datasets, the real MNIST's place, a CLI runner, the
one-paragraph-error check, a progress poll and a stop in a chosen epoch."""

from __future__ import annotations

import ast
import contextlib
import functools
import io
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import main
from mnist_cnn import runformat
from mnist_cnn.settings import REPORT, Settings

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"  # the committed results
REAL_MNIST = Path(os.environ.get("MNIST_DIR", ROOT.parent / "shared" / "mnist"))
CHROMIUM = next(  # Debian's chromium, for Playwright
    (
        p
        for p in (
            os.environ.get("CHROMIUM"),
            shutil.which("chromium"),
            shutil.which("chromium-browser"),
        )
        if p and Path(p).exists()
    ),
    None,
)


def need_chromium() -> None:
    """Skip a browser test where there is no Chromium; fail it in CI, where it is mandatory."""
    if CHROMIUM is None:
        message = "no Chromium: apt-get install -y chromium (or set CHROMIUM=/path/to/chrome)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


STROKES = {  # hand-drawn digits as polylines on a 200x200 page (x, y)
    0: [
        [
            (100, 30),
            (60, 50),
            (45, 100),
            (60, 150),
            (100, 170),
            (140, 150),
            (155, 100),
            (140, 50),
            (100, 30),
        ]
    ],
    1: [[(100, 25), (100, 175)]],
    2: [[(55, 60), (80, 30), (125, 30), (145, 60), (130, 100), (55, 170), (150, 170)]],
    3: [[(55, 40), (140, 40), (95, 95), (140, 120), (140, 155), (100, 175), (55, 160)]],
    4: [[(120, 170), (120, 25), (45, 125), (160, 125)]],
    5: [[(145, 30), (65, 30), (60, 90), (120, 85), (148, 125), (125, 168), (60, 165)]],
    6: [[(135, 30), (80, 70), (55, 130), (80, 170), (130, 160), (140, 120), (100, 100), (60, 125)]],
    7: [[(45, 35), (155, 35), (90, 175)]],
    8: [
        [
            (100, 95),
            (60, 65),
            (100, 30),
            (140, 65),
            (100, 95),
            (55, 135),
            (100, 172),
            (145, 135),
            (100, 95),
        ]
    ],
    9: [[(140, 70), (100, 95), (60, 70), (100, 30), (140, 70), (135, 175)]],
}


def draw_in_browser(page: object, strokes: list, touch: object = None) -> None:
    """Draw polylines of a 200x200 page on the page's #pad with the mouse, or with a finger
    through a CDP session (`touch`), which Chromium turns into touch pointer events."""
    box = page.locator("#pad").bounding_box()
    for stroke in strokes:
        points = [
            (box["x"] + x * box["width"] / 200, box["y"] + y * box["height"] / 200)
            for x, y in stroke
        ]
        if touch is None:
            page.mouse.move(*points[0])
            page.mouse.down()
            for x, y in points[1:]:
                page.mouse.move(x, y, steps=8)
            page.mouse.up()
            continue
        path = [points[0]]
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            path += [(x0 + (x1 - x0) * k / 8, y0 + (y1 - y0) * k / 8) for k in range(1, 9)]
        for i, (x, y) in enumerate(path):
            kind = "touchStart" if i == 0 else "touchMove"
            touch.send(
                "Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": x, "y": y}]}
            )
        touch.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format."""
    header = struct.pack(">I", 0x800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def digit_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 images whose bright bar position encodes the label, with noise: easy to learn."""
    images = rng.integers(0, 40, size=(len(labels), 28, 28), dtype=np.uint8)
    for image, label in zip(images, labels):
        row = 3 + 2 * int(label)
        image[row : row + 2, 4:24] = 255
    return images


def write_mnist(
    folder: Path, n_train: int = 256, n_test: int = 128, seed: int = 0, shuffle_labels: bool = False
) -> Path:
    """Write a tiny dataset in torchvision's MNIST/raw layout; return the data_dir. With
    shuffle_labels the labels are shuffled after the images are drawn: nothing can learn them."""
    rng = np.random.default_rng(seed)
    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        images_name, labels_name = main.SPLIT_FILES[split]
        (raw / images_name).write_bytes(idx_bytes(digit_images(labels, rng)))
        if shuffle_labels:
            rng.shuffle(labels)
        (raw / labels_name).write_bytes(idx_bytes(labels))
    return folder


def free_port() -> int:
    """A TCP port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run main.py in a fresh interpreter, as a user would."""
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def start_cli(*args: str) -> subprocess.Popen:
    """Start main.py in a fresh interpreter, its output piped as text."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_python(code: str) -> subprocess.CompletedProcess:
    """Run Python code in a fresh interpreter in the repository root."""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def modules_after(argv: list[str]) -> tuple[int, set[str]]:
    """main.main(argv) in a fresh interpreter: its exit code and every module then loaded."""
    probe = f"import sys, main\ncode = main.main({argv!r})\nprint(code, sorted(sys.modules))"
    result = run_python(probe)
    code, _, loaded = result.stdout.strip().splitlines()[-1].partition(" ")
    return int(code), set(ast.literal_eval(loaded))


def same_weights(a: Path, b: Path) -> bool:
    """Whether two state_dict (or checkpoint) files hold equal model tensors."""
    wa, wb = (torch.load(p, weights_only=True) for p in (a, b))
    wa, wb = (w.get("model", w) for w in (wa, wb))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def metrics(folder: Path) -> list[dict]:
    """The log's rows without the wall-clock column."""
    return [
        {k: v for k, v in r.items() if k != "seconds"}
        for r in runformat.parse_log(folder / "model.log")
    ]


def refused(capsys: pytest.CaptureFixture, argv: list[str], *needles: str) -> str:
    """Run main in-process; assert exit code 2 and a one-paragraph message holding the needles."""
    code = main.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (code, err)
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def wait_for_epochs(
    folder: Path, epochs: int, proc: subprocess.Popen, timeout: float = 300
) -> None:
    """Poll a run's metrics.csv until it holds `epochs` rows; fail if the process ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"training ended early: {proc.communicate()[1][-3000:]}"
        try:
            if len(runformat.read_metrics_csv(folder / "metrics.csv")) >= epochs:
                return
        except (OSError, main.UserError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"{folder} made no progress")


@contextlib.contextmanager
def stopped_in_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> Iterator[None]:
    """Inside the block, training stops as on SIGTERM when epoch `epoch` (counted over the whole
    block, 1-based) begins; after it, main.train_epoch is the real one again."""
    real, calls = main.train_epoch, []

    def stop_there(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == epoch:
            raise main.Interrupted(signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(main, "train_epoch", stop_there)
    try:
        yield
    finally:
        monkeypatch.setattr(main, "train_epoch", real)


def replace_test_set(data: Path, seed: int) -> None:
    """Put other test images and labels (drawn with `seed`) in a tiny dataset's place."""
    other = write_mnist(data.parent / f"other{seed}", n_train=8, n_test=96, seed=seed)
    for name in main.SPLIT_FILES["test"]:
        (data / "MNIST" / "raw" / name).write_bytes((other / "MNIST" / "raw" / name).read_bytes())


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def strip_png(height: int = 39_999_999) -> bytes:
    """A valid 1-pixel-wide greyscale PNG: under the pixel cap, about 78 KB, gigabytes once
    decoded into floats by code that bounds only width x height."""
    packer = zlib.compressobj(9)
    rows = b"\x00\xff" * 1_000_000  # filter byte, one white pixel
    data = b"".join(
        packer.compress(rows[: 2 * min(1_000_000, height - i)]) for i in range(0, height, 1_000_000)
    )
    ihdr = struct.pack(">IIBBBBB", 1, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", data + packer.flush())
        + png_chunk(b"IEND", b"")
    )


@functools.cache
def hostile_images() -> dict[str, bytes]:
    """Images that made Pillow raise what a reader did not catch, or cost gigabytes: a JPEG
    whose EXIF has a signed rational of -1/0 beside a rotation (struct.error when rotated), a
    TIFF whose strip offsets claim 8-byte integers (OverflowError), and the 1-pixel strip."""
    from PIL import Image

    entries = [(0x0112, 3, 1, b"\x06\0\0\0"), (0x011A, 10, 1, struct.pack("<I", 8 + 2 + 24 + 4))]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", *e[:3]) + e[3] for e in entries
    )
    exif = (
        b"Exif\0\0II*\0"
        + struct.pack("<I", 8)
        + ifd
        + struct.pack("<I", 0)
        + struct.pack("<ii", -1, 0)
    )
    jpeg, tiff = io.BytesIO(), io.BytesIO()
    Image.new("L", (40, 30), 255).save(jpeg, "JPEG", exif=exif)
    Image.new("L", (8, 8), 128).save(tiff, "TIFF")
    odd = bytearray(tiff.getvalue())
    offset = struct.unpack_from("<I", odd, 4)[0]
    for i in range(struct.unpack_from("<H", odd, offset)[0]):
        entry = offset + 2 + 12 * i
        if struct.unpack_from("<H", odd, entry)[0] == 273:  # StripOffsets: LONG -> LONG8
            struct.pack_into("<H", odd, entry + 2, 16)
    return {"bad_exif.jpg": jpeg.getvalue(), "odd.tif": bytes(odd), "strip.png": strip_png()}


def nested_form(depth: int) -> tuple[str, bytes]:
    """A multipart form nested `depth` deep (the stdlib parser recurses once per level):
    (Content-Type, body)."""
    head = "".join(
        f"--b{i}\r\nContent-Type: multipart/form-data; boundary=b{i + 1}\r\n\r\n"
        for i in range(depth)
    )
    tail = "".join(f"\r\n--b{i}--" for i in reversed(range(depth + 1)))
    body = (
        head
        + f'--b{depth}\r\nContent-Disposition: form-data; name="f"; filename="d.png"\r\n\r\nx'
        + tail
    )
    return "multipart/form-data; boundary=b0", body.encode()


# a digit in each image mode people's files come in: (file suffix, what the test names it)
IMAGE_MODES = {
    "I;16": ".png",  # a 16-bit greyscale PNG
    "I;16B": ".tiff",  # big-endian 16-bit, as TIFF writes it
    "I": ".tiff",  # 32-bit integers
    "F": ".tiff",  # 32-bit floats in [0, 1]
    "F-wide": ".tiff",  # floats outside [0, 1]: a scan's raw values
    "LA": ".png",  # grey with alpha, the page transparent
    "P": ".png",  # a palette with a transparent colour
    "CMYK": ".jpg",  # a print-shop JPEG
}


def seven_in_mode(mode: str) -> bytes:
    """A 7 with grey ink (about an eighth of white) on a light page, encoded in `mode`: the
    values far above 255 in the wide modes, which clipping at 255 would turn into a blank page."""
    pen = Image.new("L", (200, 200), 0)
    ImageDraw.Draw(pen).line([(55, 45), (150, 45), (85, 170)], fill=255, width=14)
    ink = np.asarray(pen) > 127
    page = {
        "I;16": (8000, 65535, np.uint16),
        "I;16B": (8000, 65535, ">u2"),
        "I": (250_000_000, 2_000_000_000, np.int32),
        "F": (0.12, 1.0, np.float32),
        "F-wide": (-40.0, 900.0, np.float32),
    }
    out = io.BytesIO()
    if mode in page:
        dark, light, kind = page[mode]
        values = np.where(ink, dark, light).astype(kind)
        image = Image.fromarray(values)
        assert image.mode == mode.removesuffix("-wide")
        image.save(out, format="PNG" if mode == "I;16" else "TIFF")
    elif mode == "LA":
        alpha = np.where(ink, 255, 0).astype(np.uint8)
        Image.fromarray(np.dstack([np.full_like(alpha, 30), alpha]), mode="LA").save(out, "PNG")
    elif mode == "P":
        image = Image.fromarray(np.where(ink, 1, 0).astype(np.uint8), mode="P")
        image.putpalette([255, 255, 255, 30, 30, 30])
        image.save(out, "PNG", transparency=0)
    else:
        grey = Image.fromarray(np.where(ink, 30, 235).astype(np.uint8))
        grey.convert("CMYK").save(out, "JPEG", quality=95)
    return out.getvalue()


def report_settings(**changed: object) -> Settings:
    """One run's settings: the report's values (its first rate) with some changed."""
    report = {**REPORT, "learning_rate": REPORT["learning_rate"][0]}
    return Settings(**{**report, **changed})
