#!/usr/bin/env python3
"""The docs' pictures of the page: a 7 drawn with the mouse in Chromium, first in the page that
--export writes (opened from file://, offline), then in the page that --serve serves, each
captured once every transition of the page has ended. About 15 s; needs Playwright and Debian's
chromium. From the clone's root:

    python -m tools.screenshots                      # -> runs/screenshots/*.png
    python -m tools.screenshots --out_dir docs       # refresh the committed pictures
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, cast

if TYPE_CHECKING:
    from playwright.sync_api import FloatRect, Page, ViewportSize

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
SEVEN = [(45, 40), (150, 40), (75, 175)]  # a polyline on a 200x200 pad
VIEWPORT: ViewportSize = {"width": 900, "height": 640}


def box_of(page: Page, css: str) -> FloatRect:
    """Where an element of the page lies (it must be shown)."""
    box = page.locator(css).bounding_box()
    if box is None:
        sys.exit(f"{css} is not shown on the page")
    return box


def draw_and_settle(page: Page) -> None:
    """Draw the 7, wait for its reading, then for every CSS transition to end."""
    box = box_of(page, "#pad")
    points = [
        (box["x"] + x * box["width"] / 200, box["y"] + y * box["height"] / 200) for x, y in SEVEN
    ]
    page.mouse.move(*points[0])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(x, y, steps=12)
    page.mouse.up()
    page.wait_for_function("document.querySelector('#digit').textContent === '7'")
    # the bars grow with a CSS transition: a picture taken before it ends shows them part-way
    page.wait_for_function("document.getAnimations().every((a) => a.playState === 'finished')")
    # the picture checks itself: the 7's bar fills its track
    bar, track = (
        box_of(page, f"#bars li:nth-child(8) {css}")["width"] for css in (".bar span", ".bar")
    )
    if bar < 0.99 * track:
        sys.exit(f"the 7's bar is {bar:.0f} of {track:.0f} pixels: the page has not settled")


def shoot(url: str, path: Path) -> None:
    """Open a page, draw the 7 and save the picture."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport=VIEWPORT, bypass_csp=True)  # for the waits only
        page.goto(url)
        draw_and_settle(page)
        page.screenshot(path=str(path))
        browser.close()
    print(f"wrote {path}")


def serve(model: str) -> tuple[subprocess.Popen, str]:
    """Start --serve on a free port; the process and its URL."""
    proc = subprocess.Popen(
        [sys.executable, "main.py", "--serve", "--model_path", model, "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    url = re.search(r"http://\S+/", cast(IO[str], proc.stdout).readline())
    if not url:
        proc.kill()
        sys.exit("--serve did not start")
    return proc, url.group(0)


def main() -> None:
    """Take both pictures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out_dir", default="runs/screenshots")
    p.add_argument("--model_path", default="lr_1e-3/model.pth")
    args = p.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp, "page.html")
        command = [
            sys.executable,
            "main.py",
            "--export",
            str(page),
            "--model_path",
            args.model_path,
        ]
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        shoot(page.as_uri(), out / "page_static.png")
    proc, url = serve(args.model_path)
    try:
        shoot(url, out / "serve.png")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
