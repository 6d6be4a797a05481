"""results.md: per-run tables, spreads over seeds, paired comparisons and the generated Answer.

Given runs already read back from their folders (main.py reads config.json and metrics.csv),
this module only composes the markdown; the numbers come from stats.py. It never imports main.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from stats import Difference, paired_difference, spread


class Column(Protocol):
    """What a results table needs of one of main.py's epoch-table columns."""

    name: str
    fmt: str


@dataclass
class RunResult:
    """A finished (or stopped) run as read back from its folder."""

    name: str
    lr: float
    seed: int
    rows: list[dict]
    best: dict  # the saved epoch's row: what chose model.pth chose it
    epochs: int | None = None  # as planned; None where the folder does not say
    finished: bool = True  # all epochs done, or stopped by patience

    @property
    def validated(self) -> bool:
        """Whether a held-out validation split chose its model."""
        return "val_loss" in self.rows[0]

    @property
    def last(self) -> dict:
        """The last finished epoch."""
        return self.rows[-1]


@dataclass(frozen=True)
class Rule:
    """A way to pick one epoch of each run, whose test accuracy is then compared."""

    label: str
    pick: Callable[[RunResult], dict]


def rules_for(results: Sequence[RunResult]) -> tuple[Rule, Rule]:
    """The selected model (named after what chose it) and the last epoch."""
    validated = {r.validated for r in results}
    chosen = (
        "chosen on the validation set"
        if validated == {True}
        else "chosen on the test set, optimistic"
        if validated == {False}
        else "chosen on validation where held out, else on the test set"
    )
    return (
        Rule(f"selected model ({chosen})", lambda r: r.best),
        Rule("last epoch", lambda r: r.last),
    )


def rate_then_seed(r: RunResult) -> tuple[float, int]:
    """The order of every table: highest rate first, then by seed."""
    return -r.lr, r.seed


def by_rate(results: Sequence[RunResult]) -> dict[float, dict[int, RunResult]]:
    """Runs grouped by learning rate, then by seed."""
    groups: dict[float, dict[int, RunResult]] = {}
    for r in sorted(results, key=rate_then_seed):
        groups.setdefault(r.lr, {})[r.seed] = r
    return groups


def comparisons(results: Sequence[RunResult], rule: Rule) -> list[tuple[float, float, Difference]]:
    """Every pair of rates with 2+ common seeds, and their paired test-accuracy difference."""
    groups, pairs = by_rate(results), []
    rates = list(groups)
    for i, a in enumerate(rates):
        for b in rates[i + 1 :]:
            seeds = sorted(set(groups[a]) & set(groups[b]))
            if len(seeds) >= 2:
                pairs.append(
                    (
                        a,
                        b,
                        paired_difference(
                            [100 * rule.pick(groups[a][s])["test_acc"] for s in seeds],
                            [100 * rule.pick(groups[b][s])["test_acc"] for s in seeds],
                        ),
                    )
                )
    return pairs


def interval(d: Difference) -> str:
    """The 95% interval as printed, or why there is none."""
    return f"[{d.low:+.3f}, {d.high:+.3f}]" if d.estimable else "none (no spread)"


def describe(a: float, b: float, d: Difference) -> str:
    """One comparison in words, with its numbers."""
    if not d.estimable:
        return (
            f"{a:g} and {b:g} cannot be judged ({a:g} − {b:g}: {d.mean:+.3f} points in each of "
            f"the {d.n} seeds; identical differences leave no spread to build an interval from, "
            "more seeds will)"
        )
    numbers = f"{d.mean:+.3f} points, 95% interval {interval(d)}, p = {d.p:.3g}"
    if d.low > 0 or d.high < 0:
        better, worse = (a, b) if d.low > 0 else (b, a)
        return f"{better:g} beats {worse:g} by {abs(d.mean):.2f} points ({a:g} − {b:g}: {numbers})"
    return f"{a:g} and {b:g} cannot be told apart ({a:g} − {b:g}: {numbers})"


# per rule, every pair of rates and their paired difference
Compared = Sequence[tuple[Rule, list[tuple[float, float, Difference]]]]


def answer(results: Sequence[RunResult], compared: Compared) -> str:
    """The Answer paragraph, generated from the paired intervals of every rule."""
    lines = ["## Answer", ""]
    found = False
    for rule, pairs in compared:
        if pairs:
            found = True
            n = max(d.n for _, _, d in pairs)
            lines.append(
                f"- **{rule.label}**, test accuracy paired by seed over {n} seeds: "
                + "; ".join(describe(a, b, d) for a, b, d in pairs)
                + "."
            )
    if not found:
        lines.append(
            "Each rate has fewer than two seeds in common with another, so no interval "
            "can say whether one rate is better: train more seeds (--seed 0 1 2 3 4)."
        )
    else:
        lines += [
            "",
            "Better means: the 95% interval of the paired difference excludes 0. "
            "Intervals are Student's t over the seeds (paired: same seed, same data order).",
        ]
    unfinished = [
        f"{r.name} ({len(r.rows)} of {r.epochs} epochs)" for r in results if not r.finished
    ]
    if unfinished:
        lines += [
            "",
            f"**Unfinished runs**, counted as they stand: {', '.join(unfinished)}. "
            "Their last epoch is not the end of the run; resume them before reading this.",
        ]
    return "\n".join(lines)


def seed_statistics(results: Sequence[RunResult], compared: Compared) -> str:
    """Per rate: spreads over seeds under each rule; per pair of rates and rule: the paired
    difference with its interval, p-value and verdict."""
    rules = [rule for rule, _ in compared]
    lines = [
        "## Over seeds",
        "",
        "Mean ± standard deviation over seeds (min–max in brackets), test accuracies in %.",
        "",
        "| learning rate | seeds | "
        + " | ".join(f"test acc, {r.label}" for r in rules)
        + " | selected epoch |",
        "|---" * (len(rules) + 3) + "|",
    ]
    for lr, runs in by_rate(results).items():
        rs = list(runs.values())
        if len(rs) >= 2:
            cells = [spread([100 * rule.pick(r)["test_acc"] for r in rs], ".3f") for rule in rules]
            lines.append(
                f"| {lr:g} | {len(rs)} | "
                + " | ".join(cells)
                + f" | {spread([r.best['epoch'] for r in rs], '.1f')} |"
            )
    for rule, pairs in compared:
        lines += [
            "",
            f"Paired by seed, {rule.label}: test accuracy of the first rate minus the "
            "second, in points.",
            "",
            "| rates | seeds | mean difference | 95% interval | p | verdict |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {a:g} − {b:g} | {d.n} | {d.mean:+.3f} | {interval(d)} "
            f"| {f'{d.p:.3g}' if d.estimable else '–'} | {d.verdict(f'{a:g}', f'{b:g}')} |"
            for a, b, d in pairs
        ]
    return "\n".join(lines)


def results_table(
    results: Sequence[RunResult], pick: Callable[[RunResult], dict], columns: Sequence[Column]
) -> str:
    """A markdown table of one row per run, at the epoch `pick` chooses."""
    shown = [c for c in columns if c.name not in ("seconds", "saved")]
    lines = [
        "| run | learning rate | seed | " + " | ".join(c.name for c in shown) + " |",
        "|---" * (len(shown) + 3) + "|",
    ]
    for r in results:
        row = pick(r)
        lines.append(
            f"| {r.name} | {r.lr:g} | {r.seed} | "
            + " | ".join(f"{row[c.name]:{c.fmt}}" if c.name in row else "–" for c in shown)
            + " |"
        )
    return "\n".join(lines)


def report(results: Sequence[RunResult], columns: Sequence[Column], loss_note: str) -> str:
    """The whole of results.md: the Answer, a table per rule, and the statistics over seeds."""
    results = sorted(results, key=rate_then_seed)
    rules = rules_for(results)
    compared = [(rule, comparisons(results, rule)) for rule in rules]
    parts = [
        "# Results",
        "",
        answer(results, compared),
        "",
        f"{loss_note}. Accuracies in the run tables are fractions of the images.",
        "",
    ]
    for rule in rules:
        parts += [f"## Per run: {rule.label}", "", results_table(results, rule.pick, columns), ""]
    if len({r.seed for r in results}) > 1:
        parts += [seed_statistics(results, compared), ""]
    return "\n".join(parts)
