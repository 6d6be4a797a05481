"""Using a trained model: the predict, serve and export modes, given the loaded network.

main.py loads and checks the weights and hands over `classify` (28x28 pixel arrays in [0, 1] ->
digit probabilities, N x 10); this module reads people's images (digits.py), prints and writes
predictions, serves the page and its API (server.py), and writes ONNX.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import io
import itertools
import logging
import os
import stat
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TextIO, cast

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from mnist_cnn.files import open_gate, open_named, prepare_out_dir, write, write_failed
from mnist_cnn.interrupts import UserError, signals_to

log = logging.getLogger("mnist_cnn")
Classify = Callable[[Sequence[np.ndarray]], torch.Tensor]
PAGE = Path(__file__).with_name("page.html")


BATCH = 256  # images through the network at once: --predict's memory stays flat in the count


def save_preprocessed(
    images: dict[Path, np.ndarray], folder: Path, used: set[str], inputs: set[Path]
) -> None:
    """Write each 28x28 model input as a PNG named after its source file (`used`: names taken;
    a name that is one of the images read, `inputs` resolved, is never written over)."""
    from mnist_cnn.use.digits import png_bytes

    for path, pixels in images.items():
        name = path.stem
        while name in used or (folder / f"{name}.png").resolve() in inputs:
            name += "_"
        used.add(name)
        write(folder / f"{name}.png", png_bytes(pixels))


def readable_digits(
    paths: Iterable[Path], prepare: Callable[[np.ndarray], np.ndarray]
) -> Iterator[tuple[Path, np.ndarray]]:
    """(path, model input) for each image that reads; one line on stderr for each that does not."""
    from mnist_cnn.use.digits import read_digit

    for path in paths:
        try:
            yield path, read_digit(path, prepare)
        except ValueError as e:
            print(f"skipped {path}: {e}", file=sys.stderr)


def batches(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of `size` items (the last one shorter)."""
    items = iter(items)
    while batch := list(itertools.islice(items, size)):
        yield batch


@contextlib.contextmanager
def csv_output(
    name: str | None, overwrite: bool, inputs: Sequence[Path]
) -> Iterator[TextIO | None]:
    """Where --output_csv writes: nothing, standard output (`-`), a FIFO or character device
    written to as it is, or a file replaced atomically at the end (an earlier one only with
    --overwrite, never an input); anything else is refused."""
    if name is None:
        yield None
        return
    if name == "-":
        yield sys.stdout
        return
    path = Path(name)
    kind = path.stat().st_mode if path.exists() else None
    if kind is not None and same_as_stdout(path):  # /dev/stdout: the CSV alone, as with -
        yield sys.stdout
        return
    if kind is not None and (stat.S_ISFIFO(kind) or stat.S_ISCHR(kind)):
        try:
            with open(path, "w", newline="") as f:
                yield f
        except OSError as e:
            raise write_failed(path, e) from None
    elif kind is not None and not stat.S_ISREG(kind):
        raise UserError(
            f"--output_csv {path} is not a file, FIFO or terminal (a folder, socket or disk). "
            "Name a file to write, or - for standard output."
        )
    else:
        gate = open_named(path, overwrite, "--output_csv", inputs)
        prepare_out_dir(path.parent, "--output_csv")
        with gate.stream(path.name) as f:
            text = io.TextIOWrapper(f, newline="", write_through=True)
            yield text
            text.detach()  # atomic_file syncs and closes the file itself


def same_as_stdout(path: Path) -> bool:
    """Whether a path is where standard output goes (/dev/stdout, or the pipe it writes to)."""
    try:
        ours, theirs = os.fstat(sys.stdout.fileno()), path.stat()
    except (OSError, ValueError, io.UnsupportedOperation):  # no real stdout (captured, closed)
        return False
    return (ours.st_dev, ours.st_ino) == (theirs.st_dev, theirs.st_ino)


def claim_preprocessed(folder: Path, overwrite: bool, inputs: Sequence[Path]) -> None:
    """--save_preprocessed writes into a new folder, or among the pictures it wrote there before;
    among other pictures only with --overwrite, and never into a folder of the images it
    reads."""
    for source in inputs:
        if source.exists() and folder.exists() and os.path.samefile(folder, source):
            raise UserError(
                f"{folder} is one of this command's inputs: name another folder for "
                "--save_preprocessed."
            )
    prepare_out_dir(folder, "--save_preprocessed")
    read = {p.resolve() for p in inputs}  # never written: a picture takes another name
    open_gate(folder, overwrite, "--save_preprocessed", inputs).claim(
        sorted(p.name for p in folder.glob("*.png") if p.resolve() not in read)
    )


def run_predict(args: argparse.Namespace, classify: Classify, model_path: Path) -> None:
    """Print PATH DIGIT CONFIDENCE per image (and the top-k), optionally to CSV; the images go
    through the network BATCH at a time."""
    from mnist_cnn.use.digits import image_files, mnist_style, naive

    prepare = naive if args.no_preprocess else mnist_style
    header = ["path", "digit", "confidence"]
    if args.topk > 1:
        header += [f"top{i + 1}" for i in range(args.topk)]
    seen, used = Path(args.save_preprocessed or "."), set[str]()
    files = image_files(args.predict)
    inputs = [model_path, *map(Path, args.predict), *files]
    if args.save_preprocessed:
        claim_preprocessed(seen, args.overwrite, inputs)
    count = 0
    with csv_output(args.output_csv, args.overwrite, inputs) as out:
        table = csv.writer(out) if out else None
        for batch in batches(readable_digits(files, prepare), BATCH):
            images = dict(batch)
            top_p, top_d = classify(list(images.values())).topk(args.topk, dim=1)
            if not count:  # one header, for the CSV and for people alike
                if table:
                    table.writerow(header)
                if out is not sys.stdout:
                    print("  ".join(header))
            for path, ps, ds in zip(images, top_p.tolist(), top_d.tolist()):
                row = [str(path), ds[0], f"{ps[0]:.3f}"]
                if args.topk > 1:
                    row += [f"{d}:{p:.3f}" for d, p in zip(ds, ps)]
                if out is not sys.stdout:
                    print("  ".join(map(str, row)))
                if table:
                    table.writerow(row)
            if args.save_preprocessed:
                save_preprocessed(images, seen, used, {p.resolve() for p in files})
            count += len(images)
        if not count:
            raise UserError(
                "None of the given files could be read as a digit image. Give PNG, JPEG, "
                "BMP or similar files (or folders of them), one dark or light digit each."
            )


def answer_image(classify: Classify, image: bytes) -> dict:
    """The API's answer for one uploaded image: digit, confidence, probabilities, model input."""
    import base64

    from mnist_cnn.use.digits import png_bytes, read_digit

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
    from mnist_cnn.use.server import Server, is_loopback

    page = PAGE.read_bytes()
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
        server.stop()  # the event loop ends its connections and returns; no exception mid-task

    # Ctrl-C and SIGTERM stop it (exit 0), also where SIGINT was inherited ignored
    with signals_to(stop), server:
        server.serve_forever()
    log.info("stopped")


def run_export(
    path: Path, model: nn.Module, mean: float, std: float, overwrite: bool, model_path: Path
) -> None:
    """Write the model in the format the file's suffix names: .onnx or .html (an earlier file
    only with --overwrite; never the model or the page's template)."""
    writers = {".onnx": export_onnx, ".html": export_page, ".htm": export_page}
    if path.suffix.lower() not in writers:
        raise UserError(
            f"--export {path}: name a .onnx file (the model for onnxruntime) or a .html file "
            "(the draw-a-digit page with the model inside, no server needed)."
        )
    open_named(path, overwrite, "--export", inputs=[model_path, PAGE])
    prepare_out_dir(path.parent, "--export")
    writers[path.suffix.lower()](path, model, mean, std)


def folded_layers(model: nn.Module) -> list[dict[str, torch.Tensor]]:
    """The network's convolutions and linear layers in order, each batch norm folded into the
    convolution before it (eval mode: y = scale * (conv(x) - mean) + shift), in float64."""
    layers: list[dict[str, torch.Tensor]] = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            layers.append({"weight": m.weight.double(), "bias": cast(Tensor, m.bias).double()})
        elif isinstance(m, nn.BatchNorm2d):
            mean, var = cast(Tensor, m.running_mean), cast(Tensor, m.running_var)
            scale = m.weight.double() / (var.double() + m.eps).sqrt()
            conv = layers[-1]
            conv["weight"] = conv["weight"] * scale[:, None, None, None]
            conv["bias"] = (conv["bias"] - mean.double()) * scale + m.bias.double()
    return layers


def page_html(model: nn.Module, mean: float, std: float) -> str:
    """page.html with the folded weights inside and a Content-Security-Policy that allows only
    its own script (by hash): no request, no third-party code, works from file://."""
    import base64
    import hashlib
    import json

    def b64(t: torch.Tensor) -> str:
        return base64.b64encode(t.detach().float().numpy().astype("<f4").tobytes()).decode()

    with torch.no_grad():
        layers = [
            {
                "shape": list(layer["weight"].shape),
                "weight": b64(layer["weight"]),
                "bias": b64(layer["bias"]),
            }
            for layer in folded_layers(model)
        ]
    spec = json.dumps({"mean": mean, "std": std, "layers": layers})
    html = PAGE.read_text(encoding="utf-8").replace(
        "<!-- model -->", f'<script type="application/json" id="model">{spec}</script>'
    )
    start = html.index("<script>") + len("<script>")
    script = html[start : html.index("</script>", start)]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    policy = (
        f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; "
        "img-src data: blob:; base-uri 'none'; form-action 'none'"
    )
    return html.replace(
        '<meta charset="utf-8">',
        f'<meta charset="utf-8">\n<meta http-equiv="Content-Security-Policy" content="{policy}">',
    )


def export_page(path: Path, model: nn.Module, mean: float, std: float) -> None:
    """Write the self-contained draw-a-digit page: open it from a disk or any static host."""
    data = page_html(model, mean, std).encode()
    write(path, data)
    log.info(
        "wrote %s (%s bytes, the weights inside): open it in a browser, no server or network "
        "needed; it reads digits on the visitor's own device.",
        path,
        f"{len(data):,}",
    )


def export_onnx(path: Path, model: nn.Module, mean: float, std: float) -> None:
    """Write the CNN as ONNX: images N x 1 x 28 x 28, normalised as in training -> logits N x 10."""
    try:
        import onnx  # noqa: F401  (the exporter writes through it)
        import onnxscript  # noqa: F401  (the dynamo exporter translates through it)
    except ImportError:
        raise UserError(
            "--export needs the onnx and onnxscript packages: pip install -r requirements.txt."
        ) from None
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
        cast("torch.onnx.ONNXProgram", program).save(f"{tmp}/model.onnx")
        write(path, Path(tmp, "model.onnx").read_bytes())
    log.info(
        "wrote %s. Read a digit with onnxruntime and mnist_cnn/use/digits.py (NumPy, Pillow):\n"
        "  import onnxruntime as ort; from pathlib import Path\n"
        "  from mnist_cnn.use.digits import read_digit\n"
        "  x = ((read_digit(Path('digit.png')) - %g) / %g)[None, None]\n"
        "  print(ort.InferenceSession('%s').run(None, {'images': x})[0].argmax(1))",
        path,
        mean,
        std,
        path,
    )
