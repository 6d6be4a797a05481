"""--export page.html: one file that reads digits in Chromium from file://, networking blocked."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from browser import CHROMIUM, STROKES, draw_in_browser, need_chromium
from images import IMAGE_MODES, seven_in_mode
from paths import ROOT

import main
from mnist_cnn.use import digits

MODEL = ROOT / "lr_1e-3" / "model.pth"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The page exported from the committed model."""
    path = tmp_path_factory.mktemp("static") / "page.html"
    assert main.main(["--export", str(path), "--model_path", str(MODEL)]) == 0
    return path


def test_the_page_is_one_file_that_allows_only_its_own_script(exported: Path) -> None:
    html = exported.read_text(encoding="utf-8")
    print(f"\npage.html: {len(html.encode()):,} bytes")
    assert len(html.encode()) < 250_000
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing from elsewhere
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    rules = dict(rule.strip().split(" ", 1) for rule in policy.split(";"))
    assert rules["default-src"] == "'none'" and "connect-src" not in rules
    code = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert len(code) == 1  # the weights are data (type application/json), not code
    digest = base64.b64encode(hashlib.sha256(code[0].encode()).digest()).decode()
    assert rules["script-src"] == f"'sha256-{digest}'"


def test_folding_batch_norm_changes_no_logit() -> None:
    from mnist_cnn.use import inference

    model = main.load_model(MODEL)
    x = torch.randn(64, 1, 28, 28)
    (c1, c2, fc) = inference.folded_layers(model)
    y = torch.nn.functional.conv2d(x.double(), c1["weight"], c1["bias"], padding=2)
    y = torch.nn.functional.max_pool2d(y.relu(), 2)
    y = torch.nn.functional.conv2d(y, c2["weight"], c2["bias"], padding=2)
    y = torch.nn.functional.max_pool2d(y.relu(), 2)
    logits = y.flatten(1) @ fc["weight"].T + fc["bias"]
    with torch.no_grad():
        assert torch.allclose(logits.float(), model(x), atol=1e-4)


@pytest.fixture(scope="module")
def browser(exported: Path) -> Iterator[tuple[object, list[str]]]:
    """Chromium with the page open from file://, every other request aborted; (page, asked)."""
    need_chromium()
    from playwright.sync_api import sync_playwright

    asked: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = chromium.new_context(viewport={"width": 900, "height": 640}, has_touch=True)
        context.set_offline(True)

        def only_the_file(route: object) -> None:
            asked.append(route.request.url)
            if route.request.url == exported.as_uri():
                route.continue_()
            else:
                route.abort()

        context.route("**/*", only_the_file)
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(exported.as_uri())
        yield page, asked
        chromium.close()
    assert errors == []


def test_2000_mnist_images_read_in_the_page_as_in_pytorch(
    browser: tuple[object, list[str]], real_mnist: Path
) -> None:
    page, _ = browser
    images, _ = main.read_split(str(real_mnist), "test")
    pixels = images[:2000].numpy()
    got = np.array(
        page.evaluate(
            """(b64) => {
              const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)), out = [];
              for (let i = 0; i < bytes.length; i += 784) {
                const pixels = Array.from(bytes.subarray(i, i + 784), (v) => v / 255);
                out.push(window.mnist.classify(pixels));
              }
              return out;
            }""",
            base64.b64encode(pixels.tobytes()).decode(),
        )
    )
    model = main.load_model(MODEL)
    with torch.inference_mode():
        x = main.normalise(torch.from_numpy(pixels).float().div(255)).unsqueeze(1)
        expected = model(x).softmax(1).numpy()
    same = (got.argmax(1) == expected.argmax(1)).mean()
    print(
        f"\n2,000 MNIST test images: the same digit {100 * same:.2f}%, largest probability "
        f"difference {np.abs(got - expected).max():.1e}"
    )
    assert got.shape == (2000, 10) and same >= 0.999
    assert np.abs(got - expected).max() < 1e-4


@pytest.mark.parametrize("finger", [False, True], ids=["mouse", "finger"])
def test_drawn_digits_are_read_in_the_page_as_digits_py_reads_them(
    browser: tuple[object, list[str]], finger: bool
) -> None:
    from playwright.sync_api import expect

    page, asked = browser
    touch = page.context.new_cdp_session(page) if finger else None
    worst = 0.0
    for digit in (7, 1, 0, 3):
        page.click("#clear")
        draw_in_browser(page, STROKES[digit], touch)
        expect(page.locator("#confidence")).to_contain_text("sure")
        assert page.inner_text("#digit") == str(digit)
        drawn = page.evaluate("document.getElementById('pad').toDataURL('image/png')")
        expected = digits.read_digit(base64.b64decode(drawn.split(",", 1)[1]))
        got = np.array(page.evaluate("Array.from(window.mnist.lastInput)")).reshape(28, 28)
        worst = max(worst, float(np.abs(got - expected).max()))
    print(
        f"\ndrawn with the {'finger' if finger else 'mouse'}: largest per-pixel difference "
        f"from digits.py {worst:.1e}"
    )
    assert worst < 1e-3
    assert page.get_attribute("#seen", "src").startswith("data:image/png;base64,")
    assert asked == [page.url]  # the file itself, and nothing else, ever


def test_a_large_photo_is_read_in_the_page_as_digits_py_reads_it(
    browser: tuple[object, list[str]], tmp_path: Path
) -> None:
    from PIL import Image, ImageDraw
    from playwright.sync_api import expect

    page, asked = browser
    worst = 0.0
    for digit in (1, 7):
        # a 4000x3000 photo of grey paper, a digit drawn 2,400 pixels tall in 24-pixel strokes:
        # the page shrinks it to 1,024 pixels with the canvas, digits.py by averaging (reduce)
        photo = Image.new("L", (4000, 3000), 200)
        pen = ImageDraw.Draw(photo)
        for stroke in STROKES[digit]:
            pen.line([(x * 12 + 800, y * 12 + 150) for x, y in stroke], fill=30, width=24)
        path = tmp_path / f"photo{digit}.png"
        photo.save(path)
        page.click("#clear")
        page.set_input_files("#file", str(path))
        expect(page.locator("#confidence")).to_contain_text("sure", timeout=20_000)
        assert page.inner_text("#digit") == str(digit)
        got = np.array(page.evaluate("Array.from(window.mnist.lastInput)")).reshape(28, 28)
        worst = max(worst, float(np.abs(got - digits.read_digit(path.read_bytes())).max()))
    print(f"\na 4000x3000 photo: largest per-pixel difference from digits.py {worst:.1e}")
    # with the canvas's default shrinking ("low" quality, which skips pixels): 0.066
    assert worst < 0.03
    assert asked == [page.url]


# the modes a browser decodes (PNG and JPEG; no browser reads TIFF)
BROWSER_MODES = [mode for mode, suffix in IMAGE_MODES.items() if suffix in (".png", ".jpg")]


@pytest.mark.parametrize("mode", BROWSER_MODES)
def test_the_page_reads_every_image_mode_as_predict_does(
    browser: tuple[object, list[str]], tmp_path: Path, mode: str
) -> None:
    from playwright.sync_api import expect

    page, asked = browser
    path = tmp_path / f"seven{IMAGE_MODES[mode]}"
    path.write_bytes(seven_in_mode(mode))
    page.click("#clear")
    page.set_input_files("#file", str(path))
    expect(page.locator("#confidence")).to_contain_text("sure", timeout=20_000)
    assert page.inner_text("#digit") == "7"
    assert asked == [page.url]
