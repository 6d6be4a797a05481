"""MNIST's file format, IDX: a file read only once its magic number, shape and length agree, with
a one-paragraph error naming the file and the fix otherwise."""

from __future__ import annotations

import math
import stat
import struct
from pathlib import Path

import numpy as np

from mnist_cnn.interrupts import UserError


def idx_count(path: Path, ndim: int, side: int) -> int:
    """Check an IDX file's magic number, shape (side x side images, or labels) and length;
    return how many items it holds."""
    header_len = 4 + 4 * ndim
    fix = (
        f"Replace it with the original MNIST file (see {path.parent} and docs/install.md, 'Data')."
    )
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise UserError(
                f"The MNIST file {path} is not a regular file (a folder, device or FIFO). {fix}"
            )
        with path.open("rb") as f:
            header = f.read(header_len)
    except OSError as e:
        raise UserError(
            f"The MNIST file {path} cannot be read ({e.strerror or e}). {fix}"
        ) from None
    if len(header) < header_len:
        raise UserError(
            f"The MNIST file {path} is truncated: {len(header)} bytes, shorter than "
            f"its {header_len}-byte header. {fix}"
        )
    magic = struct.unpack(">I", header[:4])[0]
    if magic != 0x800 + ndim:
        raise UserError(
            f"The MNIST file {path} has magic number 0x{magic:08x}, expected "
            f"0x{0x800 + ndim:08x} (unsigned bytes, {ndim} dimensions): it is not "
            f"an IDX {'image' if ndim == 3 else 'label'} file. {fix}"
        )
    dims = struct.unpack(f">{ndim}I", header[4:])
    if dims[1:] not in ((), (side, side)):
        raise UserError(
            f"The MNIST file {path} holds {dims[1]}x{dims[2]} images; this model "
            f"needs {side}x{side}. {fix}"
        )
    size, expected = path.stat().st_size, header_len + math.prod(dims)
    if size != expected:
        raise UserError(
            f"The MNIST file {path} is {size:,} bytes but its header announces "
            f"{expected:,} ({dims[0]:,} items): it is truncated or damaged. {fix}"
        )
    return dims[0]


def read_idx(path: Path, ndim: int, side: int) -> np.ndarray:
    """A validated IDX file's items as a uint8 array (images N x side x side, labels N)."""
    count = idx_count(path, ndim, side)
    data = np.fromfile(path, dtype=np.uint8, offset=4 + 4 * ndim)
    return data.reshape(count, side, side) if ndim == 3 else data
