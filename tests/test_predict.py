"""Reading people's own digit pictures: MNIST-style preprocessing and the --predict command."""

from __future__ import annotations

import csv
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from cli import run_cli
from images import IMAGE_MODES, hostile_images, seven_in_mode
from paths import ROOT
from PIL import Image

import main
from mnist_cnn.use import digits
from tools import check_digits

MODEL = ROOT / "lr_1e-3" / "model.pth"


def stroke_digit(size: int = 200, light_background: bool = True) -> Image.Image:
    """A thick '1'-like vertical stroke with a foot, off-centre, on a plain page."""
    page = np.full((size, size), 235 if light_background else 20, dtype=np.uint8)
    ink = 25 if light_background else 240
    page[size // 5 : size // 5 + size // 2, size // 3 : size // 3 + size // 12] = ink
    page[size // 5 + size // 2 - size // 12 : size // 5 + size // 2, size // 4 : size // 2] = ink
    return Image.fromarray(page)


def as_pixels(array: np.ndarray) -> np.ndarray:
    """digits.py's output is already pixels in [0, 1]."""
    return array


def centre_of_mass(pixels: np.ndarray) -> tuple[float, float]:
    ys, xs = np.indices(pixels.shape)
    return (ys * pixels).sum() / pixels.sum(), (xs * pixels).sum() / pixels.sum()


def test_preprocess_gives_mnist_layout_white_ink_20px_box_centred_by_mass() -> None:
    pixels = as_pixels(digits.mnist_style(digits.to_grey(stroke_digit())))
    assert pixels.shape == (28, 28)
    assert pixels.min() == pytest.approx(0, abs=1e-6) and pixels.max() > 0.9
    assert pixels[0].max() < 0.05 and pixels[:, 0].max() < 0.05  # black background
    rows, cols = np.nonzero(pixels > 0.05)
    assert max(np.ptp(rows), np.ptp(cols)) + 1 in (
        20,
        21,
        22,
    )  # longer side 20 px (+ anti-aliased fringe)
    cy, cx = centre_of_mass(pixels)
    assert abs(cy - 13.5) <= 0.75 and abs(cx - 13.5) <= 0.75


def test_dark_and_light_backgrounds_give_the_same_input() -> None:
    light = digits.mnist_style(digits.to_grey(stroke_digit(light_background=True)))
    dark = digits.mnist_style(digits.to_grey(stroke_digit(light_background=False)))
    assert np.abs(as_pixels(light) - as_pixels(dark)).max() < 0.05


def test_rgba_transparent_background_is_flattened_on_white() -> None:
    grey = np.asarray(stroke_digit())
    rgba = np.zeros(grey.shape + (4,), dtype=np.uint8)
    rgba[..., 3] = np.where(grey < 128, 255, 0)  # ink opaque black, page fully transparent
    pixels = as_pixels(digits.mnist_style(digits.to_grey(Image.fromarray(rgba, "RGBA"))))
    reference = as_pixels(digits.mnist_style(digits.to_grey(stroke_digit())))
    assert np.abs(pixels - reference).max() < 0.1


@pytest.mark.parametrize("size", [14, 3000])
def test_tiny_and_huge_images(size: int) -> None:
    pixels = as_pixels(digits.mnist_style(digits.to_grey(stroke_digit(size))))
    assert pixels.shape == (28, 28) and pixels.max() > 0.9
    rows, cols = np.nonzero(pixels > 0.05)
    assert 18 <= max(np.ptp(rows), np.ptp(cols)) + 1 <= 22


def test_blank_image_is_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="blank"):
        digits.mnist_style(digits.to_grey(Image.new("L", (50, 50), 255)))


def write_samples(folder: Path) -> None:
    """Two readable digits, one blank page and one non-image file."""
    folder.mkdir()
    stroke_digit().convert("RGB").save(folder / "one.png")
    stroke_digit(light_background=False).save(folder / "one_dark.jpg")
    Image.new("RGB", (40, 40), "white").save(folder / "blank.png")
    (folder / "notes.txt").write_text("not a picture")


@pytest.fixture
def model_path(trained: Path) -> Path:
    """Any CNN weights (the tiny run's); the accuracy target test uses the committed model."""
    return trained / "model.pth"


def test_predict_folder_prints_rows_skips_unreadable_and_writes_csv(
    tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_samples(tmp_path / "digits")
    csv_path = tmp_path / "out.csv"
    code = main.main(
        [
            "--predict",
            str(tmp_path / "digits"),
            "--model_path",
            str(model_path),
            "--topk",
            "3",
            "--output_csv",
            str(csv_path),
            "--save_preprocessed",
            str(tmp_path / "seen"),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0
    assert f"skipped {tmp_path / 'digits' / 'blank.png'}: no digit found" in err
    assert f"skipped {tmp_path / 'digits' / 'notes.txt'}: not an image" in err
    header, *lines = out.strip().splitlines()
    assert header.split() == ["path", "digit", "confidence", "top1", "top2", "top3"]
    assert [line.split()[0] for line in lines] == [
        str(tmp_path / "digits" / n) for n in ("one.png", "one_dark.jpg")
    ]
    for line in lines:
        fields = line.split()
        assert fields[1] in "0123456789" and 0 <= float(fields[2]) <= 1 and len(fields) == 6
        assert fields[3].startswith(f"{fields[1]}:")
    with open(csv_path) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "digit", "confidence", "top1", "top2", "top3"]
    assert [r[:3] for r in rows[1:]] == [line.split()[:3] for line in lines]
    saved = sorted(p.name for p in (tmp_path / "seen").glob("*.png"))
    assert saved == ["one.png", "one_dark.png"]
    with Image.open(tmp_path / "seen" / "one.png") as im:
        assert im.size == (28, 28)


def test_predict_with_nothing_readable_fails(
    tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "a.txt").write_text("x")
    code = main.main(
        [
            "--predict",
            str(tmp_path / "a.txt"),
            str(tmp_path / "missing.png"),
            "--model_path",
            str(model_path),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert (
        "skipped" in err
        and "no such file" in err
        and "None of the given files could be read" in err
    )


@pytest.mark.slow
def test_committed_model_reads_97_percent_of_photographed_mnist_digits(
    real_mnist: Path, tmp_path: Path
) -> None:
    if not MODEL.is_file():
        pytest.fail(f"{MODEL} is not committed")
    photos, labels = check_digits.photographed_mnist(str(real_mnist), 500)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, photo in enumerate(photos):
        photo.save(folder / f"{i:03d}.png")
    assert (
        main.main(
            [
                "--predict",
                str(folder),
                "--model_path",
                str(MODEL),
                "--output_csv",
                str(tmp_path / "p.csv"),
            ]
        )
        == 0
    )
    with open(tmp_path / "p.csv") as f:
        predicted = [int(r["digit"]) for r in csv.DictReader(f)]
    assert len(predicted) == 500
    correct = sum(int(p == t) for p, t in zip(predicted, labels))
    assert correct / 500 >= 0.97, correct


def test_hostile_images_are_skipped_beside_good_ones_within_bounded_memory(
    tmp_path: Path, model_path: Path
) -> None:
    """Each image that once raised past the reader, or cost gigabytes, is one skipped line; the
    good ones are still predicted and written. Peak memory of the whole process is measured."""
    folder = tmp_path / "digits"
    write_samples(folder)
    for name, data in hostile_images().items():
        (folder / name).write_bytes(data)
    csv_path = tmp_path / "out.csv"
    command = [sys.executable, str(ROOT / "main.py"), "--predict", str(folder)]
    command += ["--model_path", str(model_path), "--output_csv", str(csv_path)]
    probe = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, "
        "text=True); print(r.returncode); print(resource.getrusage(resource.RUSAGE_CHILDREN)"
        ".ru_maxrss); sys.stdout.write(r.stdout); sys.stderr.write(r.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True)
    code, peak_kb, _, *lines = result.stdout.splitlines()  # the rows after their header
    print(f"\n--predict beside the hostile images: peak memory {int(peak_kb) / 1024:.0f} MB")
    assert code == "0" and "Traceback" not in result.stderr
    assert [line.split()[0] for line in lines] == [
        str(folder / n) for n in ("one.png", "one_dark.jpg")
    ]
    skipped = {line.split(":")[0].removeprefix("skipped ") for line in result.stderr.splitlines()}
    assert {str(folder / n) for n in hostile_images()} <= skipped
    assert "bad_exif.jpg: not an image this tool can read (struct.error" in result.stderr
    assert "odd.tif: not an image this tool can read (" in result.stderr
    assert "strip.png: the image is too large (1x39999999 pixels" in result.stderr
    assert len(list(csv.reader(csv_path.open()))) == 3
    assert int(peak_kb) < 1_000_000  # the strip alone cost 1.25 GB before it was refused by shape


def test_batches_give_the_same_rows_with_no_more_images_at_once(
    tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mnist_cnn.use import inference

    folder = tmp_path / "digits"
    folder.mkdir()
    for i in range(5):
        digits_image = stroke_digit(100 + 10 * i)
        digits_image.save(folder / f"d{i}.png")
    argv = ["--predict", str(folder), "--model_path", str(model_path), "--topk", "2"]
    assert main.main(argv) == 0
    whole = capsys.readouterr().out
    sizes: list[int] = []
    real = main.classify
    monkeypatch.setattr(main, "classify", lambda m, p: sizes.append(len(p)) or real(m, p))
    monkeypatch.setattr(inference, "BATCH", 2)
    assert main.main(argv) == 0
    assert capsys.readouterr().out == whole and sizes == [2, 2, 1]


def test_output_csv_goes_to_stdout_a_fifo_or_a_device_and_never_replaces_them(
    tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_samples(tmp_path / "digits")
    argv = ["--predict", str(tmp_path / "digits"), "--model_path", str(model_path)]
    assert main.main([*argv, "--output_csv", "-"]) == 0
    out = capsys.readouterr().out
    rows = list(csv.reader(out.splitlines()))
    assert rows[0] == ["path", "digit", "confidence"] and len(rows) == 3  # the CSV alone
    # a whole process into a pipe, block-buffered as a user's is (not this machine's -u): no
    # log line follows the rows, and the process leaves without Python's shutdown
    # (interrupts.leave), which must flush them first
    piped = run_cli(*argv, "--output_csv", "-", env={"PYTHONUNBUFFERED": ""})
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == out.replace("\r\n", "\n")  # text mode reads csv's \r\n as \n
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    assert main.main([*argv, "--output_csv", str(fifo)]) == 0
    reader.join(timeout=30)
    assert got and got[0].replace("\r\n", "\n") == out.replace("\r\n", "\n")
    assert stat.S_ISFIFO(fifo.stat().st_mode)  # written to, not replaced by a file
    assert main.main([*argv, "--output_csv", os.devnull]) == 0
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    capsys.readouterr()
    assert main.main([*argv, "--output_csv", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a file, FIFO or terminal" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("mode", IMAGE_MODES)
def test_every_image_mode_is_read_as_people_see_it(
    mode: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """16-bit, 32-bit and float images are scaled by their range (clipped at 255 they were a
    blank page); alpha, a transparent palette colour and CMYK read as they look."""
    path = tmp_path / f"seven{IMAGE_MODES[mode]}"
    path.write_bytes(seven_in_mode(mode))
    assert main.main(["--predict", str(path), "--model_path", str(MODEL)]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[1] == "7"


def test_output_csv_naming_standard_output_writes_the_csv_alone() -> None:
    """--output_csv /dev/stdout is `-` by another name: people's lines would mix into the CSV."""
    command = [sys.executable, "main.py", "--predict", "docs/digits", "--output_csv"]
    done = subprocess.run(
        [*command, "/dev/stdout", "--model_path", str(MODEL)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(done.stdout.splitlines()))
    assert rows[0] == ["path", "digit", "confidence"] and len(rows) == 4
    assert all(len(row) == 3 for row in rows)
