#!/usr/bin/env python3
"""Time training steps of main.py's CNN: the usual DataLoader pipeline against our train_epoch paths."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import main

DEFAULT_DATA = "../shared/mnist" if Path("../shared/mnist/MNIST/raw").is_dir() else "data"


def parse_args() -> argparse.Namespace:
    """Read the command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=main.bounded(int, 128, False), default=12_800,
                   help="training images per timed run")
    p.add_argument("--repeats", type=main.bounded(int, 1, False), default=3, help="timed runs per path")
    p.add_argument("--data_dir", default=DEFAULT_DATA)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--batch_size", type=main.bounded(int, 1, False), default=128)
    p.add_argument("--compile", type=main.str2bool, default=True, help="include the torch.compile path")
    p.add_argument("--amp", type=main.str2bool, default=None,
                   help="include the autocast path (default: where the device has native bf16/fp16)")
    p.add_argument("--accuracy", type=main.bounded(int, 1, False), default=0, metavar="EPOCHS",
                   help="also train EPOCHS full epochs per option and compare test accuracy")
    return p.parse_args()


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
    status = Path("/proc/self/status").read_text()
    return int(next(l.split()[1] for l in status.splitlines() if l.startswith("VmHWM"))) / 1024


def sync(device: torch.device) -> None:
    """Wait for queued device work."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def usual_pipeline(args: argparse.Namespace, device: torch.device) -> Callable[[], int]:
    """Path (a): torchvision MNIST, ToTensor + Normalize per sample, DataLoader(shuffle=True)."""
    from torchvision import datasets, transforms
    main.read_split(args.data_dir, "train")  # same clear errors as main.py for missing data
    dataset = datasets.MNIST(args.data_dir, train=True, download=False, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((main.MEAN,), (main.STD,))]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True)
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


def our_path(loader: main.TensorBatches, device: torch.device, speed: main.Speed) -> Callable[[], int]:
    """Path (b): main.train_epoch over whole-split tensors with the given speed options."""
    model = main.CNN()
    runner = main.prepare_model(model, device, speed)
    optimizer = main.make_optimizer(model, 1e-3)

    def step() -> int:
        main.train_epoch(runner, loader, optimizer, speed)
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
    native_amp = device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    options = {"(b) default: tensors + channels-last": main.Speed(),
               "(b) tensors, fp32 contiguous": main.Speed(channels_last=False)}
    if args.amp if args.amp is not None else native_amp:
        options["(b) default + --amp"] = main.Speed(amp=True)
    if args.compile:
        options["(b) default + --compile"] = main.Speed(compile=True)
    return options


def accuracy_rows(args: argparse.Namespace, device: torch.device) -> None:
    """Train each option for a few full epochs with the same seed; print test accuracy against fp32."""
    train = main.get_loader("train", args.data_dir, args.batch_size, device=device)
    test = main.get_loader("test", args.data_dir, args.batch_size, device=device)
    print(f"\ntest accuracy after {args.accuracy} epochs (seed 0), against fp32 contiguous:")
    options = paths(args, device)
    reference = None
    for name in sorted(options, key=lambda n: "contiguous" not in n):
        speed = options[name]
        main.seed_everything(0)
        model = main.CNN()
        runner = main.prepare_model(model, device, speed)
        optimizer = main.make_optimizer(model, 1e-3)
        for epoch in range(1, args.accuracy + 1):
            train.set_epoch(epoch)
            main.train_epoch(runner, train, optimizer, speed)
        acc = 100 * main.evaluate(runner, test, speed).acc
        reference = acc if reference is None else reference
        print(f"  {name:<44} {acc:6.2f}%  ({acc - reference:+.2f} points)")


def main_bench() -> None:
    """Run the benchmark and print its table."""
    args = parse_args()
    device = main.resolve_device(args.device)
    main.configure_backends(device, argparse.Namespace(deterministic=False, amp=False))
    flops = flops_per_image(device)
    loader = main.get_loader("train", args.data_dir, args.batch_size, args.images, device)
    steps = {"(a) usual: DataLoader + ToTensor/Normalize": usual_pipeline(args, device)}
    steps.update({name: our_path(loader, device, speed) for name, speed in paths(args, device).items()})
    print(f"device {device.type}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch "
          f"{args.batch_size}, {args.images:,} images per run, {args.repeats} runs per path after a warm-up")
    print(f"one training step (forward+backward, counted by torch.utils.flop_counter): "
          f"{flops / 1e6:.1f} MFLOP per image")
    for step in steps.values():  # warm-up: allocator, kernels, torch.compile
        step()
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    for _ in range(args.repeats):  # alternate the paths so drift hits all alike
        for name, step in steps.items():
            results[name].append(time_run(step, device))
    base = statistics.median(r[0] for r in results["(a) usual: DataLoader + ToTensor/Normalize"])
    print(f"\n{'path':<44} {'img/s med':>9} {'min':>7} {'max':>7} {'x (a)':>6} {'peak MB':>8} {'GFLOP/s':>8}")
    for name, rows in results.items():
        rates = [r[0] for r in rows]
        med = statistics.median(rates)
        print(f"{name:<44} {med:9.0f} {min(rates):7.0f} {max(rates):7.0f} {med / base:6.2f} "
              f"{max(r[1] for r in rows):8.0f} {med * flops / 1e9:8.1f}")
    test = main.get_loader("test", args.data_dir, 1000, device=device)
    model = main.CNN()
    main.prepare_model(model, device, main.Speed())
    main.evaluate(model, test)
    sync(device)
    start = time.perf_counter()
    main.evaluate(model, test)
    sync(device)
    print(f"\ninference (evaluate, batch 1000, default path): "
          f"{len(test.labels) / (time.perf_counter() - start):,.0f} images/s")
    if args.accuracy:
        accuracy_rows(args, device)
    default = statistics.median(r[0] for r in results["(b) default: tensors + channels-last"])
    print(f"speedup: {default / base:.2f}")


if __name__ == "__main__":
    sys.exit(main.report_errors(main_bench))
