"""Argparse's helpers, standard library only: value types with bounds (and the learning rates'
LOW:HIGH:N), the help formatter and a parser whose errors are one line. The parser itself, and
the flags, are main.py's."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn

from mnist_cnn.interrupts import EXIT_BAD_INPUT

MAX_SEED = 2**32 - 1  # NumPy's seeds are 32-bit
MAX_LEARNING_RATE = 10.0  # steps of 10 already wreck any network; larger ones are typos


def str2bool(text: str) -> bool:
    """Parse true/false/yes/no/1/0 in any case."""
    value = text.strip().lower()
    if value in ("true", "yes", "1"):
        return True
    if value in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false/yes/no/1/0, got {text!r}")


def switch_or_auto(text: str) -> bool | str:
    """--amp's value: a yes/no, or auto (where the device does it natively)."""
    return "auto" if text.strip().lower() == "auto" else str2bool(text)


def bounded(
    kind: type, low: float, strict: bool, high: float = math.inf, high_included: bool = False
) -> Callable[[str], float]:
    """Argparse type: a finite `kind` above `low` (at least `low` when not strict), below `high`
    (at most `high` when high_included)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(
                f"{text!r} must be {'greater than' if strict else 'at least'} {low:g}"
            )
        if value > high or (value == high and not high_included):
            limit = f"{int(high):,}" if kind is int else f"{high:g}"  # not 4.29497e+09
            raise argparse.ArgumentTypeError(
                f"{text!r} must be {'at most' if high_included else 'less than'} {limit}"
            )
        return value

    parse.__name__ = kind.__name__
    return parse


def learning_rates(text: str) -> list[float]:
    """Argparse type: one rate (1e-3), or LOW:HIGH:N, N rates evenly spaced on a log scale from
    LOW to HIGH inclusive, each rounded to three significant digits (1e-5:1e-1:9)."""
    one_rate = bounded(float, 0, True, MAX_LEARNING_RATE, True)
    if ":" not in text:
        return [one_rate(text)]
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise argparse.ArgumentTypeError("not a rate nor LOW:HIGH:N")
        low, high = one_rate(parts[0]), one_rate(parts[1])
        count = int(bounded(int, 2, False, 1000, True)(parts[2]))
        if low >= high:
            raise argparse.ArgumentTypeError("LOW must be below HIGH")
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e} (e.g. 1e-5:1e-1:9)") from None
    step = (math.log10(high) - math.log10(low)) / (count - 1)
    return [float(f"{10 ** (math.log10(low) + i * step):.3g}") for i in range(count)]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a flag's default unless it has none or its help already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action) or ""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage block buries the message)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")
