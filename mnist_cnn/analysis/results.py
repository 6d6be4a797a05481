"""results.md written from runs read back: the generated Answer (do the three selection rules
agree?), a table per rule, the training dynamics, the report's claims, the rate curve, spreads
and paired comparisons over seeds, the recipes named where runs mix them; and compare.png's
curves. It composes; what is compared and decided is rules', comparisons' and claims' (of
mnist_cnn.analysis), the numbers stats'. Values that are not finite (a diverged
run's NaN or inf) are shown as such and left out of statistics, with a note.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mnist_cnn.analysis.claims import claims
from mnist_cnn.analysis.comparisons import (
    Groups,
    Pair,
    adjusted,
    boot_interval,
    by_rate,
    compare,
    describe,
    every_pair,
    finding,
    improvement_cell,
    interval,
    named_settings,
    needed_cell,
    p_cells,
    rate_then_seed,
)
from mnist_cnn.analysis.rules import (
    Rule,
    RunResult,
    Statistic,
    dynamics,
    finite,
    finite_values,
    kept_rule,
    rules_for,
    shown,
    test_accuracy,
)
from mnist_cnn.analysis.stats import (
    FEWEST_TO_RESAMPLE,
    POWER,
    RESAMPLES,
    Difference,
    mean_band,
    spread,
    t_interval,
)
from mnist_cnn.plots import Curve
from mnist_cnn.runformat import Column


def summary_line(rule: Rule, pairs: Sequence[Pair], groups: dict) -> str:
    """A rule's line of the Answer: every comparison for three rates or fewer; for more, the
    best rate and those that cannot be told apart from it."""
    n = max(p.d.n for p in pairs)
    head = f"- **{rule.label}**, test accuracy paired by seed over {n} seeds: "
    if len(groups) <= 3:
        return head + "; ".join(map(describe, pairs)) + "."
    of = test_accuracy(rule)
    means = {
        lr: sum(v) / len(v)
        for lr, runs in groups.items()
        if (v := finite_values(of(r) for r in runs.values()))
    }
    top = max(means, key=lambda lr: means[lr])
    against = {(p.b if p.a == top else p.a): p for p in pairs if top in (p.a, p.b)}
    ties = [f"{lr:g}" for lr, p in against.items() if not p.d.sign]
    above = [f"{lr:g}" for lr, p in against.items() if p.d.sign and (p.a == lr) == (p.d.sign > 0)]
    unpaired = [f"{lr:g}" for lr in groups if lr != top and lr not in against]
    lower = [f"{lr:g}" for lr, p in against.items() if p.d.sign and f"{lr:g}" not in above]
    noun = "setting" if any(g.folder for g in groups) else "rate"
    parts = [f"the highest mean is {top:g} ({means[top]:.3f}%)"]
    parts += [f"not told apart from it: {', '.join(ties)}"] * bool(ties)
    if lower and not above and not unpaired:
        parts.append(f"every other {noun} is lower (Holm-adjusted p < 0.05)")
    elif lower or above or unpaired:
        parts.append(
            f"lower (Holm-adjusted p < 0.05): {', '.join(lower) or 'none'}"
            + (f"; higher on their common seeds: {', '.join(above)}" if above else "")
            + (
                f"; not compared with it (fewer than two common seeds): {', '.join(unpaired)}"
                if unpaired
                else ""
            )
        )
    return head + "; ".join(parts) + "."


Compared = Sequence[tuple[Rule, list[Pair]]]


def answer(results: Sequence[RunResult], compared: Compared) -> str:
    """The Answer, generated from the paired intervals of every rule: first whether the rules
    agree, then what each says."""
    lines, groups = ["## Answer", ""], by_rate(results)
    judged = [(rule, pairs) for rule, pairs in compared if pairs]
    if len(groups) == 1:
        # the rule that chose model.pth: the last epoch where the runs keep it
        (lr, runs), (rule, _) = next(iter(groups.items())), compared[kept_rule(results)]
        values = [v for r in runs.values() if finite(v := test_accuracy(rule)(r))]
        found = (
            f"test accuracy (%) {spread(values, '.2f')} over "
            f"{len(values)} seed{'s' if len(values) > 1 else ''}"
            if values
            else "no epoch of any run has a finite loss to be chosen by"
        )
        lines.append(
            f"One learning rate ({lr:g}), so nothing to compare within these runs: under the "
            f"{rule.label}, {found}."
        )
    elif not judged:
        lines.append(
            "Each rate has fewer than two seeds in common with another, so no interval "
            "can say whether one rate is better: train more seeds (--seed 0 1 2 3 4)."
        )
    else:
        findings = {
            rule.label: finding(pairs)
            for rule, pairs in judged
            if any(p.d.estimable for p in pairs)
        }
        unjudged = [rule.label for rule, _ in judged if rule.label not in findings]
        if len(set(findings.values())) <= 1:
            said = next(iter(findings.values()), "")
            first = f"The selection rules agree: {said}." if said else ""
        else:
            first = (
                "The selection rules disagree: "
                + "; ".join(f"under the {label}, {said}" for label, said in findings.items())
                + "."
            )
        if unjudged:
            first += (
                f" The {' and the '.join(unjudged)} cannot judge (every seed gives the same "
                "difference: no spread)."
            )
        first = first.strip()
        lines += [first, ""]
        lines += [summary_line(rule, pairs, groups) for rule, pairs in judged]
        lines += [
            "",
            "Better means: the paired difference's Holm-adjusted p-value (over the rule's table) "
            "is below 0.05. Intervals are Student's t over the seeds (paired: same seed, same "
            "data order), 95%, unadjusted.",
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
    diverged = [f"{r.name} (in epoch {r.diverged})" for r in results if r.diverged]
    if diverged:
        lines += [
            "",
            f"**Diverged runs**: {', '.join(diverged)}: their loss became infinite or NaN; they "
            "are counted with the epochs before it.",
        ]
    return "\n".join(lines)


def left_out_note(results: Sequence[RunResult], stats: Sequence[Statistic]) -> list[str]:
    """A note naming the runs whose value of a statistic is not a number (left out)."""
    missing = [
        f"{s.name}: {', '.join(r.name for r in results if not finite(s.of(r)))}"
        for s in stats
        if any(not finite(s.of(r)) for r in results)
    ]
    return (
        ["", "Not a number, so left out of the statistics: " + "; ".join(missing) + "."]
        if missing
        else []
    )


def per_rate_table(groups: dict, stats: Sequence[Statistic]) -> list[str]:
    """Per rate: mean ± sd (min–max) of each statistic over its seeds with finite values."""
    lines = [
        "| learning rate | seeds | " + " | ".join(s.name for s in stats) + " |",
        "|---" * (len(stats) + 2) + "|",
    ]
    for lr, runs in groups.items():
        cells = []
        for s in stats:
            values = finite_values(s.of(r) for r in runs.values())
            cells.append(spread(values, s.fmt) if values else "–")
        lines.append(f"| {lr:g} | {len(runs)} | " + " | ".join(cells) + " |")
    return lines


def pairs_table(rows: Sequence[tuple[str, Pair]]) -> list[str]:
    """Paired differences, one row per (statistic, pair of rates)."""
    lines = [
        "| statistic | rates | seeds | mean difference | 95% interval | bootstrap 95% "
        "| P(first better) | p | Holm p | verdict | seeds needed |",
        "|---" * 11 + "|",
    ]
    for name, p in rows:
        lines.append(
            f"| {name} | {p.a:g} − {p.b:g} | {p.d.n} | {p.d.mean:+.3f} "
            f"| {interval(p.d, 100 if name == 'test acc' else math.inf)} "
            f"| {boot_interval(p.d)} | {improvement_cell(p.d)} "
            f"| {p_cells(p.d)} | {p.d.verdict(f'{p.a:g}', f'{p.b:g}')} | {needed_cell(p.d)} |"
        )
    return lines


PAIRS_NOTE = (
    "The 95% interval is Student's t over the seeds; the bootstrap's is scipy.stats.bootstrap's "
    f"(percentile method, {RESAMPLES:,} resamples of the seeds, generator seeded with 0; "
    f"none from fewer than {FEWEST_TO_RESAMPLE} seeds, where it under-covers). "
    "P(first better) is the probability of improvement: the share of seeds on which the "
    "first beats the second (a tie counts half), with its bootstrap interval. Seeds needed, "
    f"where the table cannot tell: how many seeds a paired t test at the 5% level would need "
    f"to find the observed mean difference {int(100 * POWER)}% of the time, given the observed "
    "spread (scipy's noncentral t)."
)


def seed_statistics(results: Sequence[RunResult], compared: Compared) -> str:
    """Per rate: the test accuracy under each rule over seeds; per rule, every pair of rates."""
    groups = by_rate(results)
    accuracy = [
        Statistic(f"test acc, {rule.label}", ".3f", test_accuracy(rule)) for rule, _ in compared
    ]
    lines = [
        "## Over seeds",
        "",
        "Mean ± standard deviation over seeds (min–max in brackets); with four seeds or more "
        "the median and the interquartile mean (IQM: the mean of the middle half) beside it. "
        "Test accuracies in %.",
        "",
        PAIRS_NOTE,
        "",
        *per_rate_table(groups, accuracy),
        *left_out_note(results, accuracy),
    ]
    for rule, pairs in compared:
        lines += [
            "",
            f"Paired by seed, {rule.label}: test accuracy of the first rate minus the "
            "second, in points; Holm over this table's rows.",
            "",
            *pairs_table([("test acc", p) for p in pairs]),
        ]
    return "\n".join(lines)


def dynamics_section(results: Sequence[RunResult]) -> str:
    """Per run and per rate, the training dynamics; paired differences for every pair of rates."""
    stats, groups = dynamics(results), by_rate(results)
    lines = [
        "## Training dynamics",
        "",
        "Per run (definitions in the README: epochs to fit, selected epochs, overfitting, "
        "roughness, spikes; – where a run never fits):",
        "",
        "| run | learning rate | seed | " + " | ".join(s.name for s in stats) + " |",
        "|---" * (len(stats) + 3) + "|",
    ]
    for r in sorted(results, key=rate_then_seed):
        lines.append(
            f"| {r.name} | {r.lr:g} | {r.seed} | "
            + " | ".join(shown(s.of(r), s.fmt) for s in stats)
            + " |"
        )
    lines += ["", "Per rate, over seeds:", "", *per_rate_table(groups, stats)]
    lines += left_out_note(results, stats)
    if len({r.seed for r in results}) > 1:
        rows = [(s.name, p) for s in stats for p in compare(groups, s.of, every_pair(groups))]
        adjusted_rows = list(zip([n for n, _ in rows], adjusted([p for _, p in rows])))
        if adjusted_rows:
            lines += [
                "",
                "Paired by seed, first rate minus second; Holm over all rows of this table; "
                "the columns as under Over seeds.",
                "",
                *pairs_table(adjusted_rows),
            ]
    return "\n".join(lines)


@dataclass
class RatePoint:
    """One rate of the curve: its seeds, per rule the mean test accuracy with the 95% interval
    of the mean, and the mean selected epoch under rules (a) and (b)."""

    lr: float
    seeds: int
    accuracy: dict[str, Difference]  # rule label -> mean, low, high (NaN bounds: no spread)
    epochs: dict[str, float]
    diverged: int


def rate_curve(results: Sequence[RunResult]) -> list[RatePoint]:
    """The curve behind rates.png, lowest rate first."""
    rules, points = rules_for(results), []
    for lr, runs in sorted(by_rate(results).items()):
        accuracy = {}
        for rule in rules:
            values = [v for r in runs.values() if finite(v := test_accuracy(rule)(r))]
            if values:
                accuracy[rule.label] = t_interval(values)
        epochs = {
            rule.label: sum(e) / len(e)
            for rule in rules[:2]
            if (e := [row["epoch"] for r in runs.values() if (row := rule.pick(r))])
        }
        diverged = sum(1 for r in runs.values() if r.diverged)
        points.append(RatePoint(lr.lr, len(runs), accuracy, epochs, diverged))
    return points


def rate_section(points: Sequence[RatePoint], suggestion: str) -> str:
    """results.md's table behind rates.png."""
    labels = list(points[0].accuracy)
    lines = [
        "## The rate curve",
        "",
        "Behind rates.png: per rate, test accuracy (%) mean ± sd over seeds under each rule "
        "(95% interval of the mean in brackets), and the mean selected epoch.",
        "",
        "| learning rate | seeds | "
        + " | ".join(f"test acc, {label}" for label in labels)
        + " | epoch (a) | epoch (b) | diverged |",
        "|---" * (len(labels) + 5) + "|",
    ]
    for p in points:
        cells = []
        for label in labels:
            d = p.accuracy.get(label)
            cells.append(
                "–"
                if d is None
                else f"{d.mean:.3f} [{max(d.low, 0):.3f}, {min(d.high, 100):.3f}]"
                + (" (clipped to 0–100)" if d.low < 0 or d.high > 100 else "")
                if d.estimable
                else f"{d.mean:.3f} ({'one seed' if d.n == 1 else 'no spread'})"
            )
        epochs = [f"{p.epochs[k]:.1f}" if k in p.epochs else "–" for k in labels[:2]]
        lines.append(
            f"| {p.lr:g} | {p.seeds} | " + " | ".join(cells + epochs) + f" | {p.diverged} |"
        )
    if suggestion:
        lines += ["", f"The range test (lr_find.csv): {suggestion}."]
    return "\n".join(lines)


def results_table(
    results: Sequence[RunResult],
    pick: Callable[[RunResult], dict | None],
    columns: Sequence[Column],
) -> str:
    """A markdown table of one row per run, at the epoch `pick` chooses."""
    cols = [c for c in columns if c.name not in ("seconds", "saved")]
    lines = [
        "| run | learning rate | seed | " + " | ".join(c.name for c in cols) + " |",
        "|---" * (len(cols) + 3) + "|",
    ]
    for r in results:
        row = pick(r) or {}
        lines.append(
            f"| {r.name} | {r.lr:g} | {r.seed} | "
            + " | ".join(f"{row[c.name]:{c.fmt}}" if c.name in row else "–" for c in cols)
            + " |"
        )
    return "\n".join(lines)


def mixed_recipes(results: Sequence[RunResult]) -> bool:
    """Whether the runs trained with more than one recipe."""
    return len({r.recipe for r in results}) > 1


def rate_axis(results: Sequence[RunResult]) -> bool:
    """Whether the runs differ by learning rate alone (one recipe, one folder per rate): only
    then is there a rate curve."""
    return not mixed_recipes(results) and not named_settings(results)


def settings_note(results: Sequence[RunResult]) -> str:
    """Why the groups carry names besides their rate: runs of one rate trained with other
    settings, or two of the folders given trained one rate alike."""
    left_out = (
        "the rate curve is left out, and the Claims judge Adam's runs with SGD's as the "
        "control of claim 7"
        if {r.optimizer for r in results if r.recipe == "report"} == {"adam", "sgd"}
        else "the Claims section and the rate curve are left out"
    )
    if results[0].differs:
        return (
            f"**Settings**: runs of one learning rate trained with other "
            f"{', '.join(results[0].differs)}, so each group is named by its settings "
            "(never pooled), and a comparison at one rate compares them (paired by seed as "
            f"before); {left_out}."
        )
    folders = ", ".join(dict.fromkeys(r.setting for r in results))
    return (
        f"**Settings**: two of the folders given ({folders}) trained one learning rate, so each "
        "group is named by its folder, and a comparison at one rate compares those folders' "
        f"settings (paired by seed as before); {left_out}."
    )


def recipes_note(groups: Groups) -> str:
    """Which recipe each rate's runs trained with, where the runs mix recipes: the comparisons
    between rates are then comparisons between recipes."""
    named = {
        lr: ", ".join(sorted({r.recipe for r in runs.values()})) for lr, runs in groups.items()
    }
    return (
        "**Recipes**: "
        + "; ".join(f"{lr:g}: {recipe}" for lr, recipe in named.items())
        + ". These runs mix recipes, so a comparison of two rates here compares their recipes "
        "(paired by seed as before); the Claims section reads only the report recipe's runs, "
        "and no rate curve is drawn."
    )


def report(
    results: Sequence[RunResult],
    columns: Sequence[Column],
    loss_note: str,
    skipped: Sequence[str] = (),
    suggestion: str = "",
) -> str:
    """The whole of results.md: the Answer, a table per rule, the training dynamics, the
    report's claims, the rate curve (four rates or more) and the statistics over seeds."""
    results = sorted(results, key=rate_then_seed)
    rules, groups = rules_for(results), by_rate(results)
    compared = [
        (rule, adjusted(compare(groups, test_accuracy(rule), every_pair(groups)))) for rule in rules
    ]
    parts = [
        "# Results",
        "",
        answer(results, compared),
        "",
        *(
            [settings_note(results), ""]
            if named_settings(results)
            else [recipes_note(groups), ""]
            if mixed_recipes(results)
            else []
        ),
        *([f"**Skipped**: {'; '.join(skipped)}.", ""] if skipped else []),
        f"{loss_note}. Accuracies in the run tables are fractions of the images.",
        "",
    ]
    for letter, rule in zip("abc", rules):
        parts += [
            f"## Per run, rule ({letter}): {rule.label}",
            "",
            results_table(results, rule.pick, columns),
            "",
        ]
    parts += [dynamics_section(results), ""]
    reported = [r for r in results if r.recipe == "report"]
    # the claims compare rates of one setting; or of Adam against SGD, the explanation's control
    controlled = {r.optimizer for r in reported} == {"adam", "sgd"}
    if reported and (controlled or not named_settings(results)):
        parts += [claims(reported), ""]
    if len(groups) >= 4 and rate_axis(results):  # a rate curve across recipes is none
        parts += [rate_section(rate_curve(results), suggestion), ""]
    if len({r.seed for r in results}) > 1:
        parts += [seed_statistics(results, compared), ""]
    return "\n".join(parts)


def rate_curves(results: Sequence[RunResult]) -> list[Curve]:
    """compare.png's curves: one per rate (mean over seeds), rules (a) and (b) marked."""
    a, b, _ = rules_for(results)
    return [
        Curve(
            f"lr {lr:g}"
            + (
                f" ({len(rs)} seeds)"
                if len(rs) > 1
                else f" (seed {next(iter(rs.values())).seed})"
                if next(iter(rs.values())).differs  # the settings name the group already
                else f" ({next(iter(rs.values())).name})"
            ),
            [r.rows for r in rs.values()],
            "test",
            [(a.pick(r) or {}).get("epoch", 0) for r in rs.values()],
            [(b.pick(r) or {}).get("epoch", 0) for r in rs.values()],
            f"(a) {a.label}",
            f"(b) {b.label}",
            mean_band,
            "95% interval of the mean over seeds (Student's t)",
        )
        for lr, rs in by_rate(results).items()
    ]
