"""Hostile and unusual image files for the predict and serve tests: PNG chunks by hand, huge
strips, deep forms, a 7 in every image mode."""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw


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
