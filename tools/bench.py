#!/usr/bin/env python3
"""Benchmarks of main.py against the usual DataLoader script, measured side by side in one run.

Run from the clone's root:
python -m tools.bench                     # training steps per second, path by path (2 minutes)
python -m tools.bench --time_to_accuracy  # whole processes: seconds to 99.0% and 99.18% test
                                          # accuracy for the report's, the fast and the accurate
                                          # recipe, runs/frontier.png, and the fixed cost
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import main
from mnist_cnn import runformat
from mnist_cnn.files import open_gate
from mnist_cnn.training.optim import Adam
from tools.baseline import mnist_loader

ROOT = Path(__file__).resolve().parents[1]
MAIN, BASELINE = str(ROOT / "main.py"), "tools.baseline"  # processes run in ROOT
DEFAULT_DATA = "../shared/mnist" if Path("../shared/mnist/MNIST/raw").is_dir() else "data"
USUAL = "(a) usual: baseline.py, a DataLoader"
TARGETS = (0.99, 0.9918)  # 99.0%, and the report's best test accuracy after 50 epochs


def parse_args() -> argparse.Namespace:
    """Read the command line."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--images",
        type=main.bounded(int, 128, False),
        default=12_800,
        help="training images per timed run (default 12,800)",
    )
    p.add_argument(
        "--repeats",
        type=main.bounded(int, 1, False),
        default=3,
        help="timed runs per path (default 3)",
    )
    p.add_argument("--data_dir", default=DEFAULT_DATA)
    p.add_argument("--device", default="auto", choices=main.DEVICES)
    p.add_argument("--batch_size", type=main.bounded(int, 1, False), default=128)
    p.add_argument(
        "--compile",
        type=main.str2bool,
        default=True,
        help="include the torch.compile path (default true)",
    )
    p.add_argument(
        "--amp",
        type=main.str2bool,
        default=None,
        help="include the autocast path (default: where bf16/fp16 is native)",
    )
    p.add_argument(
        "--accuracy",
        type=main.bounded(int, 1, False),
        default=0,
        metavar="EPOCHS",
        help="also train EPOCHS full epochs per option and compare test accuracy",
    )
    p.add_argument(
        "--time_to_accuracy",
        action="store_true",
        help="time whole processes instead: the recipes (report, fast, accurate) to 99.0%% "
        "and 99.18%%, the usual script's first epoch, frontier.png and main.py's fixed cost",
    )
    p.add_argument(
        "--frontier",
        default="runs/frontier.png",
        help="with --time_to_accuracy: where to draw test accuracy against wall time",
    )
    p.add_argument(
        "--fixed_cost",
        type=main.str2bool,
        default=True,
        help="with --time_to_accuracy: also measure main.py's fixed cost (default true)",
    )
    p.add_argument(
        "--lr_find",
        action="store_true",
        help="time whole processes instead: main.py --lr_find with three seeds (twice; the "
        "two CSVs must be equal), against the usual script's first epoch",
    )
    p.add_argument(
        "--pairs",
        type=main.bounded(int, 1, False),
        default=3,
        help="with --time_to_accuracy: (usual script, fast recipe) pairs timed one after the "
        "other; every pair's ratio is printed and the median pair drawn (default 3)",
    )
    p.add_argument(
        "--report_epochs",
        type=main.bounded(int, 1, False),
        default=20,
        help="with --time_to_accuracy: most epochs of the report's recipe (default 20)",
    )
    return p.parse_args()


def cpu_name() -> str:
    """The processor's model name, for any figure printed."""
    info = Path("/proc/cpuinfo")
    names = (
        [
            line.split(":", 1)[1].strip()
            for line in info.read_text().splitlines()
            if line.startswith("model name")
        ]
        if info.exists()
        else []
    )
    return names[0] if names else platform.processor() or "unknown CPU"


def flops_per_image(device: torch.device, batch: int = 128) -> float:
    """FLOPs of one forward+backward training step, counted by PyTorch, per image."""
    model = main.CNN().to(device)
    x = torch.randn(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window (CUDA allocator, or the process's peak RSS on Linux)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since the last reset, in MB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line.split()[1] for line in status if line.startswith("VmHWM"))) / 1024


def sync(device: torch.device) -> None:
    """Wait for queued device work."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def usual_pipeline(args: argparse.Namespace, device: torch.device) -> Callable[[], int]:
    """Path (a): the usual DataLoader pipeline, one timed step being args.images images."""
    main.read_split(args.data_dir, "train")  # same clear errors as main.py for missing data
    loader = mnist_loader(args.data_dir, args.batch_size, train=True)
    model = main.CNN().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> int:
        model.train()
        seen = 0
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(labels)
            if seen >= args.images:
                break
        return seen

    return step


def trainer(device: torch.device, speed: main.Speed) -> main.Trainer:
    """A fresh CNN with main.py's optimizer and scaler."""
    model = main.prepare_model(main.CNN(), device, speed)
    return main.Trainer(
        model, Adam(model.parameters(), 1e-3), speed, main.make_scaler(device, speed)
    )


def our_path(
    loader: main.TensorBatches, device: torch.device, speed: main.Speed
) -> Callable[[], int]:
    """Path (b): main.train_epoch over whole-split tensors with the given speed options."""
    t = trainer(device, speed)

    def step() -> int:
        main.train_epoch(t, loader)
        return len(loader.labels)

    return step


def time_run(step: Callable[[], int], device: torch.device) -> tuple[float, float]:
    """Images per second and peak memory of one timed run."""
    reset_peak_memory(device)
    sync(device)
    start = time.perf_counter()
    seen = step()
    sync(device)
    return seen / (time.perf_counter() - start), peak_memory_mb(device)


def paths(args: argparse.Namespace, device: torch.device) -> dict[str, main.Speed]:
    """Our speed configurations to time; the first is main.py's default."""
    options = {
        "(b) default: tensors + channels-last": main.Speed(),
        "(b) tensors, fp32 contiguous": main.Speed(channels_last=False),
    }
    if args.amp if args.amp is not None else main.native_low_precision(device):
        options["(b) default + --amp"] = main.Speed(amp=True)
    if args.compile:
        options["(b) default + --compile"] = main.Speed(compile=True)
    return options


def accuracy_rows(args: argparse.Namespace, device: torch.device) -> None:
    """Train each option a few full epochs with the same seed; test accuracy against fp32."""
    train = main.get_loader("train", args.data_dir, args.batch_size, device=device)
    test = main.get_loader("test", args.data_dir, args.batch_size, device=device)
    print(f"\ntest accuracy after {args.accuracy} epochs (seed 0), against fp32 contiguous:")
    options = paths(args, device)
    reference = None
    for name in sorted(options, key=lambda n: "contiguous" not in n):
        main.seed_everything(0)
        t = trainer(device, options[name])
        for epoch in range(1, args.accuracy + 1):
            train.set_epoch(epoch)
            main.train_epoch(t, train)
        acc = 100 * main.evaluate(t.model, test, options[name]).acc
        reference = acc if reference is None else reference
        print(f"  {name:<44} {acc:6.2f}%  ({acc - reference:+.2f} points)")


def step_benchmark(args: argparse.Namespace) -> None:
    """Training steps per second of each path, alternated, with peak memory and GFLOP/s."""
    device = main.resolve_device(args.device)
    main.configure_backends(device, deterministic=False, amp=False)
    flops = flops_per_image(device)
    loader = main.get_loader("train", args.data_dir, args.batch_size, args.images, device)
    steps = {USUAL: usual_pipeline(args, device)}
    for name, speed in paths(args, device).items():
        steps[name] = our_path(loader, device, speed)
    print(
        f"{cpu_name() if device.type == 'cpu' else torch.cuda.get_device_name()}; device "
        f"{device.type}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"batch {args.batch_size}, {args.images:,} images per run, {args.repeats} runs per path "
        "after a warm-up"
    )
    print(
        f"one training step (forward+backward, counted by torch.utils.flop_counter): "
        f"{flops / 1e6:.1f} MFLOP per image"
    )
    for step in steps.values():  # warm-up: allocator, kernels, torch.compile
        step()
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    for _ in range(args.repeats):  # alternate the paths so drift hits all alike
        for name, step in steps.items():
            results[name].append(time_run(step, device))
    base = statistics.median(r[0] for r in results[USUAL])
    print(
        f"\n{'path':<44} {'img/s med':>9} {'min':>7} {'max':>7} {'x (a)':>6} "
        f"{'peak MB':>8} {'GFLOP/s':>8}"
    )
    for name, rows in results.items():
        rates = [r[0] for r in rows]
        med = statistics.median(rates)
        print(
            f"{name:<44} {med:9.0f} {min(rates):7.0f} {max(rates):7.0f} {med / base:6.2f} "
            f"{max(r[1] for r in rows):8.0f} {med * flops / 1e9:8.1f}"
        )
    test = main.get_loader("test", args.data_dir, 1000, device=device)
    model = main.prepare_model(main.CNN(), device, main.Speed())
    main.evaluate(model, test)
    sync(device)
    start = time.perf_counter()
    main.evaluate(model, test)
    sync(device)
    print(
        f"\ninference (evaluate, batch 1000, default path): "
        f"{len(test.labels) / (time.perf_counter() - start):,.0f} images/s"
    )
    if args.accuracy:
        accuracy_rows(args, device)
    default = statistics.median(r[0] for r in results["(b) default: tensors + channels-last"])
    print(f"speedup: {default / base:.2f}")


def whole_process(
    command: list[str], metrics: Path | None = None, stop_when_reached: bool = False
) -> tuple[float, dict[float, float], float, list[tuple[float, float]]]:
    """Run a command; its wall seconds, the seconds at which each target accuracy was first
    logged (read from metrics.csv as it is written, or the script's final line), the final
    accuracy, and (seconds, test accuracy) as each epoch's row appeared."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    reached: dict[float, float] = {}
    curve: list[tuple[float, float]] = []
    acc = 0.0

    def read_rows(metrics: Path, now: float) -> None:
        """Take the rows metrics.csv has gained: the curve, the best accuracy, the targets."""
        nonlocal acc
        rows = runformat.read_metrics_csv(metrics)
        curve.extend((now, r["test_acc"]) for r in rows[len(curve) :])
        acc = max([acc] + [r["test_acc"] for r in rows])
        reached.update({t: now for t in TARGETS if t not in reached and acc >= t})

    while proc.poll() is None:
        if metrics is not None and metrics.exists():
            read_rows(metrics, time.perf_counter() - start)
            if stop_when_reached and len(reached) == len(TARGETS):
                proc.terminate()
        time.sleep(0.02)
    wall = time.perf_counter() - start
    out, err = proc.communicate()
    if proc.returncode not in (0, -15, 143):
        raise main.UserError(
            f"{shlex.join(command)} failed ({proc.returncode}): {err.strip()[-400:]}"
        )
    if metrics is not None and metrics.exists():  # rows written in the last poll's gap
        read_rows(metrics, wall)
    words = out.split()
    if metrics is None and words[-2:-1] == ["test_acc"]:  # the usual script's last line
        acc = float(words[-1])
        reached = {t: wall for t in TARGETS if acc >= t}
        curve = [(wall, acc)]
    return wall, reached, acc, curve


def plot_frontier(rows: dict, title: str, path: Path) -> None:
    """frontier.png: test accuracy against wall time, each recipe's epochs as a line."""
    from mnist_cnn.plots import new_figure, save_figure

    fig = new_figure(7.5, 4.5)
    ax = fig.subplots()
    for name, (_, _, _, curve) in rows.items():
        xs, ys = [t for t, _ in curve], [100 * a for _, a in curve]
        ax.plot(xs, ys, marker="o", markersize=3, label=name)
    for t in TARGETS:
        ax.axhline(100 * t, color="grey", linewidth=0.6, linestyle=":")
    ax.set(
        xscale="log",
        xlabel="wall time since the process started, s (log)",
        ylabel="test accuracy, %",
        ylim=(98.0, 99.7),
        title=title,
    )
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def time_to_accuracy(args: argparse.Namespace) -> None:
    """Whole processes side by side: the recipes' time to accuracy, frontier.png, and
    main.py's fixed cost."""
    python, data = sys.executable, ["--data_dir", args.data_dir]
    frontier = Path(args.frontier)  # refused before the timing, not after: its own it replaces
    open_gate(frontier.parent, overwrite=False, flag="--frontier").claim([frontier.name])
    native = main.native_low_precision(main.resolve_device(args.device))
    machine = f"{cpu_name()}, {torch.get_num_threads()} threads, native bf16: {native}"
    print(f"{machine}, torch {torch.__version__}; whole processes, start to exit")
    with tempfile.TemporaryDirectory() as tmp:

        def ours(name: str, *flags: str) -> list[str]:
            return [python, MAIN, *flags, *data, "--out_dir", f"{tmp}/{name}", "--overwrite"]

        def usual(epochs: int, limit: int | None = None) -> list[str]:
            return [
                python,
                "-m",
                BASELINE,
                "--epochs",
                str(epochs),
                *data,
                *(["--limit", str(limit)] if limit else []),
            ]

        # the machine's speed drifts from one process to the next: alternate the two and
        # take the median pair's ratio
        pairs = [  # a folder each: a new process must not find the last one's metrics.csv
            (
                whole_process(usual(1)),
                whole_process(
                    ours(f"fast{i}", "--recipe", "fast"), Path(tmp, f"fast{i}", runformat.METRICS)
                ),
            )
            for i in range(args.pairs)
        ]
        ratios = [fast_run[0] / usual_run[0] for usual_run, fast_run in pairs]
        median = sorted(range(len(pairs)), key=ratios.__getitem__)[len(pairs) // 2]
        rows = {
            "usual DataLoader script, 1 epoch": pairs[median][0],
            "main.py --recipe fast": pairs[median][1],
            f"main.py report recipe (lr 1e-3), up to {args.report_epochs} epochs": whole_process(
                ours("report", "--epoch", str(args.report_epochs)),
                Path(tmp, "report", runformat.METRICS),
                stop_when_reached=True,
            ),
            "main.py --recipe accurate": whole_process(
                ours("accurate", "--recipe", "accurate"), Path(tmp, "accurate", runformat.METRICS)
            ),
        }
        print(f"\n{'run':<52} {'wall s':>7} {'to 99.0%':>9} {'to 99.18%':>10} {'best acc':>9}")
        for name, (wall, reached, acc, _) in rows.items():
            cells = [f"{reached[t]:.1f}" if t in reached else "-" for t in TARGETS]
            print(f"{name:<52} {wall:7.1f} {cells[0]:>9} {cells[1]:>10} {100 * acc:8.2f}%")
        fast, report = rows["main.py --recipe fast"], list(rows.values())[2]
        usual_wall = rows["usual DataLoader script, 1 epoch"][0]
        for t in TARGETS:
            if t in fast[1] and t in report[1]:
                print(
                    f"to {100 * t:.2f}%: the fast recipe is {report[1][t] / fast[1][t]:.1f}x "
                    "sooner than the report's"
                )
        for (usual_run, fast_run), ratio in zip(pairs, ratios):
            print(f"pair: usual {usual_run[0]:.1f} s, fast {fast_run[0]:.1f} s: {ratio:.2f}x")
        print(
            f"the fast recipe's whole process takes {fast[0] / usual_wall:.2f}x the usual "
            f"script's first epoch (whole processes, the median of {len(pairs)} alternating "
            f"pairs, {cpu_name()})"
        )
        frontier.parent.mkdir(parents=True, exist_ok=True)
        plot_frontier(rows, machine, frontier)
        print(f"wrote {args.frontier}")
        if args.fixed_cost:
            fixed_cost(ours, usual, native)


def fixed_cost(
    ours: Callable[..., list[str]], usual: Callable[..., list[str]], native: bool
) -> None:
    """2*T(1 epoch) - T(2 epochs) at 30,000 images an epoch, and 1-epoch runs against the usual
    script; each the best of two whole processes."""

    def best(command: list[str]) -> float:
        return min(whole_process(command)[0] for _ in range(2))

    limit = ["--limit", "30000"]
    one, two = best(ours("e1", "--epoch", "1", *limit)), best(ours("e2", "--epoch", "2", *limit))
    base = best(usual(1, 30000))
    print(
        f"\nfixed cost (2*T(1 epoch) - T(2 epochs), 30,000 images an epoch): "
        f"{2 * one - two:.2f} s"
        f"  (T1 {one:.2f} s, T2 {two:.2f} s)"
    )
    print(
        f"1-epoch 30,000-image run: usual script {base:.2f} s, main.py {one:.2f} s: "
        f"{base / one:.2f}x"
    )
    if native:
        amp = best(ours("amp", "--epoch", "1", "--amp", *limit))
        print(f"  with --amp: {amp:.2f} s: {base / amp:.2f}x")


def time_lr_find(args: argparse.Namespace) -> None:
    """The range test (three seeds, 100 steps) as a whole process, twice, beside the usual
    script's first epoch; the two runs' lr_find.csv must be byte for byte the same."""
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        walls = []
        for name in ("a", "b"):
            command = [sys.executable, MAIN, "--lr_find", "--data_dir", args.data_dir]
            walls.append(whole_process([*command, "--out_dir", f"{tmp}/{name}"])[0])
        same = (
            Path(tmp, "a", "lr_find.csv").read_bytes() == Path(tmp, "b", "lr_find.csv").read_bytes()
        )
        usual = whole_process(
            [sys.executable, "-m", BASELINE, "--epochs", "1", "--data_dir", args.data_dir]
        )[0]
    print(
        f"--lr_find, 3 seeds x 100 steps: {min(walls):.1f} s (whole process, best of 2; "
        f"{min(walls) / usual:.2f}x the usual script's first epoch, {usual:.1f} s); "
        f"the two CSVs are {'equal' if same else 'DIFFERENT'}"
    )


def run() -> None:
    """Pick the benchmark the flags ask for."""
    args = parse_args()
    if args.lr_find:
        time_lr_find(args)
    elif args.time_to_accuracy:
        time_to_accuracy(args)
    else:
        step_benchmark(args)


if __name__ == "__main__":
    sys.exit(main.report_errors(run))
