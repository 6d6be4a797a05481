"""The browser tests' helpers: Debian's Chromium for Playwright, hand-drawn digits as strokes, a
free port."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

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


def free_port() -> int:
    """A TCP port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
