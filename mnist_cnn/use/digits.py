"""A photo or drawing of one digit -> 28x28 pixels in [0, 1] that look like MNIST.

MNIST's digits are white on black, fit in a 20x20 box and sit with their centre of mass at the
centre of 28x28. read_digit makes any picture look like that: decoded within fixed bounds,
greyscale, dark ink on light paper inverted, speckle removed, Otsu's threshold, cropped, scaled
into 20x20, centred by mass.
NumPy and Pillow only (no torch), so it serves in front of the ONNX model too:

    pixels = read_digit(Path("seven.jpg"))            # 28 x 28 float32 in [0, 1]
    x = ((pixels - 0.1307) / 0.3081)[None, None]       # MNIST's normalisation, N x 1 x 28 x 28
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
# Decoding is bounded before it starts (a 78 KB PNG can unpack to gigabytes): no file larger,
# no side longer than a phone photo's, and no more pixels than fit in 50 MB once decoded
# (Pillow keeps 4 bytes a pixel); a JPEG is decoded at 1/2, 1/4 or 1/8 of its size (draft), so
# a 48 MP photo passes. What is decoded is then shrunk (reduce) to at most WORK_SIDE before the
# float steps: a 20x20 digit needs no more. The worst accepted image measured, a 3,535 x 3,535
# RGBA PNG, cost about 100 MB and 0.3 s.
MAX_BYTES = 25 * 2**20
MAX_SIDE = 10_000
MAX_PIXELS = 12_500_000
MAX_JPEG_PIXELS = 50_000_000
WORK_SIDE = 1024


def otsu_threshold(values: np.ndarray) -> float:
    """The grey level in [0, 1] that best splits values into two classes (Otsu's method)."""
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    weight = hist.cumsum()
    mean = (hist * edges[:-1]).cumsum()
    total, total_mean = weight[-1], mean[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mean * weight - mean * total) ** 2 / (weight * (total - weight))
    return float(edges[np.nanargmax(between) + 1])


WIDE = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # more than 8 bits a pixel, one channel
# the ranges an integer image's values can fill: 8 bits kept in a wide mode, 16, 32 (signed)
INTEGER_RANGES = (255, 65535, 2**31 - 1)


def wide_to_unit(pixels: np.ndarray, floating: bool) -> np.ndarray:
    """A 16-bit, 32-bit or float greyscale image in [0, 1], scaled by the range its values fill
    (Pillow's convert("L") clips every value above 255 instead: grey ink on a 16-bit page turns
    white). Integers: the smallest of 8, 16 and 31 bits (Pillow's "I" is signed) that holds
    them; floats in [0, 1] as they are; anything else (negative values, floats past 1): their
    own minimum to maximum."""
    values = pixels.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if low >= 0 and floating and high <= 1:
        low, high = 0.0, 1.0
    elif low >= 0 and not floating:
        low, high = 0.0, float(next(top for top in INTEGER_RANGES if high <= top))
    return ((values - low) / (high - low or 1.0)).astype(np.float32)


def to_grey(image: Image.Image) -> np.ndarray:
    """Greyscale in [0, 1], transparency flattened onto white, camera rotation applied, wide
    images scaled by their value range."""
    image = ImageOps.exif_transpose(image)
    if image.mode in WIDE:
        return wide_to_unit(np.asarray(image), image.mode == "F")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    return np.asarray(image.convert("L"), dtype=np.float32) / 255


class TooLarge(ValueError):
    """An image refused for its size before decoding."""


def check_shape(image: Image.Image) -> None:
    """Refuse, before decoding, an image whose shape costs more than a digit needs."""
    w, h = image.size
    cap = MAX_JPEG_PIXELS if image.format == "JPEG" else MAX_PIXELS
    if max(w, h) > MAX_SIDE or w * h > cap:
        raise TooLarge(
            f"the image is too large ({w}x{h} pixels; at most {MAX_SIDE:,} on a side and "
            f"{cap:,} in all)"
        )


def decode(image: Image.Image) -> np.ndarray:
    """Decode a checked image at the smallest size that keeps WORK_SIDE, as greyscale."""
    w, h = image.size
    image.draft(image.mode, (w * WORK_SIDE // max(w, h), h * WORK_SIDE // max(w, h)))
    image.load()
    factor = -(-max(image.size) // WORK_SIDE)
    if factor > 1:
        if image.mode.startswith("I;16"):  # reduce cannot average them; 32-bit keeps the values
            image = image.convert("I")
        elif image.mode in ("1", "P"):  # modes reduce cannot average
            image = image.convert("RGBA" if "transparency" in image.info else "L")
        image = image.reduce(factor)
    return to_grey(image)


def mnist_style(grey: np.ndarray) -> np.ndarray:
    """Make a greyscale digit picture look like MNIST: white ink on black, 20 px box, centred by
    mass."""
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


def naive(grey: np.ndarray) -> np.ndarray:
    """The usual tutorial's input: greyscale resized to 28x28, nothing else."""
    small = Image.fromarray(grey).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.float32)


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
    source: Path | bytes, prepare: Callable[[np.ndarray], np.ndarray] = mnist_style
) -> np.ndarray:
    """Open one image (a file or its bytes) and prepare it; ValueError with a short reason."""
    if isinstance(source, Path) and source.exists() and not source.is_file():
        raise ValueError(
            "is a directory" if source.is_dir() else "not a regular file (a pipe, socket or device)"
        )
    if isinstance(source, bytes):
        size = len(source)
    else:  # a missing file is Image.open's to report
        size = source.stat().st_size if source.is_file() else 0
    if size > MAX_BYTES:
        raise ValueError(f"the file is too large ({size:,} bytes; at most {MAX_BYTES:,})")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            check_shape(image)
            grey = decode(image)
    except TooLarge:
        raise
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except Image.DecompressionBombError:
        raise ValueError(f"the image is too large (over {MAX_PIXELS:,} pixels)") from None
    except (UnidentifiedImageError, SyntaxError, EOFError):
        raise ValueError("not an image this tool can read") from None
    except OSError as e:  # a damaged file, a name too long, no permission
        raise ValueError(e.strerror or f"not an image this tool can read ({e})") from None
    except Exception as e:  # noqa: BLE001  Pillow's decoders raise struct.error, OverflowError...
        kind = (
            type(e).__name__
            if type(e).__module__ == "builtins"
            else f"{type(e).__module__}.{type(e).__name__}"
        )
        raise ValueError(f"not an image this tool can read ({kind}: {e})") from None
    return prepare(grey)


def png_bytes(pixels: np.ndarray) -> bytes:
    """Pixels in [0, 1] as an 8-bit greyscale PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels * 255, 0, 255).round().astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()
