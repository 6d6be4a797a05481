"""A photo or drawing of one digit -> 28x28 pixels in [0, 1] that look like MNIST.

MNIST's digits are white on black, fit in a 20x20 box and sit with their centre of mass at the
centre of 28x28. read_digit makes any picture look like that: greyscale, dark ink on light paper
inverted, speckle removed, Otsu's threshold, cropped, scaled into 20x20, centred by mass.
NumPy and Pillow only (no torch), so it serves in front of the ONNX model too:

    pixels = read_digit(Path("seven.jpg"))            # 28 x 28 float32 in [0, 1]
    x = ((pixels - 0.1307) / 0.3081)[None, None]       # MNIST's normalisation, N x 1 x 28 x 28

Imports nothing of this project.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

SIZE = 28  # MNIST's images are 28x28 ...
BOX = 20  # ... with the digit inside a 20x20 box
SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
MAX_PIXELS = 40_000_000  # a 5 MB PNG can unpack to gigabytes: refuse before decoding


def otsu_threshold(values: np.ndarray) -> float:
    """The grey level in [0, 1] that best splits values into two classes (Otsu's method)."""
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    weight = hist.cumsum()
    mean = (hist * edges[:-1]).cumsum()
    total, total_mean = weight[-1], mean[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mean * weight - mean * total) ** 2 / (weight * (total - weight))
    return float(edges[np.nanargmax(between) + 1])


def to_grey(image: Image.Image) -> np.ndarray:
    """Greyscale in [0, 1], transparency flattened onto white, camera rotation applied."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    return np.asarray(image.convert("L"), dtype=np.float32) / 255


def mnist_style(image: Image.Image) -> np.ndarray:
    """Make any digit picture look like MNIST: white ink on black, 20 px box, centred by mass."""
    grey = to_grey(image)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if np.median(border) > 0.5:  # light paper, dark ink: the common case
        grey = 1 - grey
    if min(grey.shape) >= 64:  # speckle noise of photos and scans; small images keep thin strokes
        grey = np.asarray(Image.fromarray(grey).filter(ImageFilter.MedianFilter(3)))
    if grey.max() - grey.min() < 0.15:
        raise ValueError("no digit found: the image is blank (one flat colour)")
    threshold = otsu_threshold(grey)
    ink = np.clip((grey - threshold) / (grey.max() - threshold), 0, 1)
    rows, cols = np.nonzero(ink)
    ink = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scale = BOX / max(ink.shape)
    size = (max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale)))
    small = np.clip(np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.LANCZOS)), 0, 1)
    return centre_by_mass(small)


def centre_by_mass(small: np.ndarray) -> np.ndarray:
    """Place a digit of at most 20x20 in 28x28 with its centre of mass at the centre."""
    h, w = small.shape
    ys, xs = np.indices(small.shape)
    mass = small.sum() or 1.0
    top = int(np.clip(round(SIZE / 2 - (ys * small).sum() / mass - 0.5), 0, SIZE - h))
    left = int(np.clip(round(SIZE / 2 - (xs * small).sum() / mass - 0.5), 0, SIZE - w))
    canvas = np.zeros((SIZE, SIZE), dtype=np.float32)
    canvas[top : top + h, left : left + w] = small
    return canvas


def naive(image: Image.Image) -> np.ndarray:
    """The usual tutorial's input: greyscale resized to 28x28, nothing else."""
    grey = Image.fromarray(to_grey(image)).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return np.asarray(grey, dtype=np.float32)


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """The paths named, and the regular files inside the folders named (sorted); pipes and
    devices inside folders are skipped (reading one could wait for ever)."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and (f.suffix.lower() in SUFFIXES or not f.name.startswith("."))
            )
        else:
            files.append(p)
    return files


def read_digit(
    source: Path | bytes, prepare: Callable[[Image.Image], np.ndarray] = mnist_style
) -> np.ndarray:
    """Open one image (a file or its bytes) and prepare it; ValueError with a short reason."""
    try:
        if isinstance(source, Path) and source.exists() and not source.is_file():
            raise ValueError(
                "is a directory"
                if source.is_dir()
                else "not a regular file (a pipe, socket or device)"
            )
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ValueError(
                    f"the image is too large ({image.width}x{image.height} pixels; "
                    f"at most {MAX_PIXELS:,})"
                )
            image.load()
            return prepare(image)
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except Image.DecompressionBombError:
        raise ValueError(f"the image is too large (over {MAX_PIXELS:,} pixels)") from None
    except (UnidentifiedImageError, SyntaxError, EOFError):
        raise ValueError("not an image this tool can read") from None
    except OSError as e:  # a damaged file, a name too long, no permission
        raise ValueError(e.strerror or f"not an image this tool can read ({e})") from None


def png_bytes(pixels: np.ndarray) -> bytes:
    """Pixels in [0, 1] as an 8-bit greyscale PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels * 255, 0, 255).round().astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()
