"""Fuzz: 300 command lines (odd values that pass argparse too) and 100 damaged images, with
zero tracebacks and zero hangs."""

from __future__ import annotations

import faulthandler
import io
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from paths import ROOT
from PIL import Image

import main
from mnist_cnn.use import digits

pytestmark = pytest.mark.slow


def pools(tmp: Path, data: Path) -> dict[str, list[str]]:
    """Per flag, values from plain to hostile."""
    long = str(tmp / ("n" * 300))
    fifo = tmp / "pipe.png"
    if hasattr(os, "mkfifo") and not fifo.exists():
        os.mkfifo(fifo)
    model = str(ROOT / "lr_1e-3" / "model.pth")
    return {
        "--epoch": ["0", "-1", "1e9", "abc", "", "1", "99999999999999999999", "100001"],
        "--learning_rate": ["0", "-1", "nan", "inf", "1e39", "1e-300", "1e-3", "abc", "10"],
        "--seed": ["-1", "4294967296", "4294967295", "0", "1.5", "x", "1 2"],
        "--batch_size": ["0", "-5", "1", "99999999999", "abc", "1048577"],
        "--limit": ["0", "-3", "1", "1000000000", "5"],
        "--val_split": ["-1", "0", "256", "10000000", "abc", "1", "255"],
        "--patience": ["0", "-1", "1", "x"],
        "--label_smoothing": ["1", "-0.1", "0.5", "nan"],
        "--lr_schedule": ["onecycle", "cosine"],
        "--model_path": [long, "/dev/null", "/", str(tmp / "none.pth"), "", str(fifo), model],
        "--data_dir": [str(data), "/nonexistent", long, "/dev/null"],
        "--out_dir": [str(tmp / "out"), long, "/proc/x", "/dev/null/x"],
        "--test": ["true", "maybe", "0"],
        "--predict": [str(fifo), "/", long, str(tmp), str(ROOT / "docs" / "serve.png")],
        "--topk": ["0", "11", "3"],
        "--summarize": [str(tmp), "/nonexistent", long, "/dev/null"],
        "--export": [long, "/proc/x.onnx"],
        "--device": ["cuda", "mps", "cpu", "tpu"],
        "--amp": ["maybe", "false"],
        "--recipe": ["fast", "slow"],
        "--serve --port": ["-1", "65536", "x"],
        "--serve --host": ["999.0.0.1", "no.such.host.invalid"],
    }


def test_300_fuzzed_command_lines_give_no_traceback_and_no_hang(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rng = random.Random(2026)
    values = pools(tmp_path, tiny_data)
    codes: dict[int, int] = {}
    # a hang fails the whole run loudly (stderr: pytest captures sys.stderr)
    faulthandler.dump_traceback_later(600, exit=True, file=sys.__stderr__)
    try:
        for i in range(300):
            argv = [
                "--epoch",
                "1",
                "--data_dir",
                str(tiny_data),
                "--out_dir",
                str(tmp_path / f"o{i}"),
            ]
            for flag in rng.sample(sorted(values), rng.randint(1, 3)):
                words = flag.split()
                if "--export" in words or "--serve" in words:  # only their failing values
                    argv += ["--model_path", str(tmp_path / "none.pth")]
                argv += [*words, rng.choice(values[flag])]
            code = main.main(argv)
            out, err = capsys.readouterr()
            assert "Traceback" not in out + err, (argv, err)
            assert code in (0, 1, 2), (argv, code)  # ran, failed to write, or refused
            assert code == 0 or err.strip(), (argv, code)  # a failure always says why
            codes[code] = codes.get(code, 0) + 1
    finally:
        faulthandler.cancel_dump_traceback_later()
    print(f"\n300 command lines: exit codes {dict(sorted(codes.items()))}")
    assert codes.get(2, 0) > 150 and codes.get(0, 0) > 5  # most refused, some ran


def damaged(seed: bytes, rng: random.Random) -> bytes:
    b = bytearray(seed)
    for _ in range(rng.randrange(1, 12)):
        b[rng.randrange(len(b))] = rng.randrange(256)
    if rng.random() < 0.3:
        b = b[: rng.randrange(1, len(b))]
    return bytes(b)


def test_100_damaged_images_are_read_or_refused_cleanly(tmp_path: Path) -> None:
    rng = random.Random(7)
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 60), np.uint8))
    seeds = []
    for kind in ("PNG", "JPEG", "BMP", "GIF"):
        buffer = io.BytesIO()
        picture.save(buffer, kind)
        seeds.append(buffer.getvalue())
    outcomes = {"read": 0, "refused": 0}
    for i in range(100):
        blob = damaged(seeds[i % len(seeds)], rng)
        path = tmp_path / f"d{i}.img"
        path.write_bytes(blob)
        for source in (blob, path):
            try:
                pixels = digits.read_digit(source)
                assert pixels.shape == (28, 28) and np.isfinite(pixels).all()
                outcomes["read"] += 1
            except ValueError:
                outcomes["refused"] += 1
    print(f"\n100 damaged images, as bytes and as files: {outcomes}")
    assert outcomes["refused"] > 20
