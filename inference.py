"""Using a trained model: the predict, serve and export modes, given the loaded network.

main.py loads and checks the weights and hands over `classify` (28x28 pixel arrays in [0, 1] ->
digit probabilities, N x 10); this module reads people's images (digits.py), prints and writes
predictions, serves the page and its API (server.py), and writes ONNX. Never imports main.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import io
import logging
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from interrupts import UserError, signals_to
from runfolder import atomic_write, prepare_out_dir, write_text

log = logging.getLogger("mnist_cnn")
Classify = Callable[[Sequence[np.ndarray]], torch.Tensor]


def save_preprocessed(images: dict[Path, np.ndarray], folder: Path) -> None:
    """Write each 28x28 model input as a PNG named after its source file."""
    from digits import png_bytes

    prepare_out_dir(folder)
    used: set[str] = set()
    for path, pixels in images.items():
        name = path.stem
        while name in used:
            name += "_"
        used.add(name)
        atomic_write(folder / f"{name}.png", png_bytes(pixels))


def run_predict(args: argparse.Namespace, classify: Classify) -> None:
    """Print PATH DIGIT CONFIDENCE per image (and the top-k), optionally to CSV."""
    from digits import image_files, mnist_style, naive, read_digit

    prepare = naive if args.no_preprocess else mnist_style
    images: dict[Path, np.ndarray] = {}
    for path in image_files(args.predict):
        try:
            images[path] = read_digit(path, prepare)
        except ValueError as e:
            print(f"skipped {path}: {e}", file=sys.stderr)
    if not images:
        raise UserError(
            "None of the given files could be read as a digit image. Give PNG, JPEG, "
            "BMP or similar files (or folders of them), one dark or light digit each."
        )
    top_p, top_d = classify(list(images.values())).topk(args.topk, dim=1)
    header = ["path", "digit", "confidence"]
    if args.topk > 1:
        header += [f"top{i + 1}" for i in range(args.topk)]
    rows = []
    for path, ps, ds in zip(images, top_p.tolist(), top_d.tolist()):
        row = [str(path), ds[0], f"{ps[0]:.3f}"]
        if args.topk > 1:
            row += [f"{d}:{p:.3f}" for d, p in zip(ds, ps)]
        rows.append(row)
        print("  ".join(map(str, row)))
    if args.output_csv:
        buffer = io.StringIO()
        csv.writer(buffer).writerows([header, *rows])
        write_text(Path(args.output_csv), buffer.getvalue())
    if args.save_preprocessed:
        save_preprocessed(images, Path(args.save_preprocessed))


def answer_image(classify: Classify, image: bytes) -> dict:
    """The API's answer for one uploaded image: digit, confidence, probabilities, model input."""
    import base64

    from digits import png_bytes, read_digit

    pixels = read_digit(image)
    probabilities = classify([pixels])[0].tolist()
    digit = max(range(len(probabilities)), key=probabilities.__getitem__)
    return {
        "digit": digit,
        "confidence": probabilities[digit],
        "probabilities": probabilities,
        "preprocessed": "data:image/png;base64," + base64.b64encode(png_bytes(pixels)).decode(),
    }


def run_serve(args: argparse.Namespace, classify: Classify, model_path: Path) -> None:
    """Serve the draw-a-digit page and the JSON API until Ctrl-C or SIGTERM."""
    from server import Server, is_loopback

    page = Path(__file__).with_name("page.html").read_bytes()
    try:
        server = Server((args.host, args.port), functools.partial(answer_image, classify), page)
    except (OSError, OverflowError) as e:
        reason = getattr(e, "strerror", None) or e
        raise UserError(
            f"Cannot listen on {args.host}:{args.port} ({reason}). Choose another "
            "--port (0 picks a free one) or --host."
        ) from None
    if not is_loopback(args.host):
        log.warning(
            "warning: listening on %s: every machine that can reach this address can "
            "use the page and the API (no password, no TLS). Use --host 127.0.0.1 to "
            "keep it to this machine.",
            args.host,
        )
    host, port = server.server_address[:2]
    log.info(
        "serving %s at http://%s:%d/ (Ctrl-C stops)",
        model_path,
        "localhost" if args.host == "127.0.0.1" else host,
        port,
    )

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Ctrl-C and SIGTERM stop it (exit 0), also where SIGINT was inherited ignored
    with signals_to(stop), server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            log.info("stopped")


def run_export(path: Path, model: nn.Module, mean: float, std: float) -> None:
    """Write the CNN as ONNX: images N x 1 x 28 x 28, normalised as in training -> logits N x 10."""
    try:
        import onnx  # noqa: F401  (the exporter writes through it)
        import onnxscript  # noqa: F401  (the dynamo exporter translates through it)
    except ImportError:
        raise UserError(
            "--export needs the onnx and onnxscript packages: pip install -r requirements.txt."
        ) from None
    prepare_out_dir(path.parent)
    batch = torch.export.Dim("batch", min=1)
    # the exporter reports its progress and its warnings on stdout and through warnings;
    # people asked for one file and one line
    with (
        tempfile.TemporaryDirectory() as tmp,
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            model,
            (torch.zeros(2, 1, 28, 28),),
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            dynamo=True,
            verbose=False,
        )
        program.save(f"{tmp}/model.onnx")
        atomic_write(path, Path(tmp, "model.onnx").read_bytes())
    log.info(
        "wrote %s. Read a digit with onnxruntime and digits.py (NumPy and Pillow only):\n"
        "  import onnxruntime as ort; from pathlib import Path\n"
        "  from digits import read_digit\n"
        "  x = ((read_digit(Path('digit.png')) - %g) / %g)[None, None]\n"
        "  print(ort.InferenceSession('%s').run(None, {'images': x})[0].argmax(1))",
        path,
        mean,
        std,
        path,
    )
