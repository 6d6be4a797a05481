"""--summarize: results.md, compare.png and (for four rates or more) rates.png from finished
run folders, grid folders and a range test's folder, written without training and without
torch (the analysis side reads CSV and JSON files: a summary starts in a fraction of the time;
only --tensorboard's event files load it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from mnist_cnn.analysis import lrfind
from mnist_cnn.analysis.comparisons import named_settings
from mnist_cnn.analysis.readback import diverged_at_once, read_runs, run_folders
from mnist_cnn.analysis.results import rate_axis, rate_curve, rate_curves, report
from mnist_cnn.files import file_sha256, open_gate, prepare_out_dir, sha256, write_text
from mnist_cnn.interrupts import UserError
from mnist_cnn.plots import plot_curves, plot_rates
from mnist_cnn.runformat import COLUMNS, COMPARE, EVENTS, LOSS_NOTE, RATES, RESULTS, VAL_COLUMNS

log = logging.getLogger("mnist_cnn")


def summarize(
    folders: Sequence[Path], out_dir: Path, overwrite: bool = False, tensorboard: bool = False
) -> str:
    """Write results.md and compare.png (and rates.png for four rates or more) from run folders
    (grid folders are searched for runs; an lr_find/ folder adds the range test's suggestion);
    an earlier summary there is replaced only with overwrite. tensorboard: also each run's
    event file, derived from its metrics.csv and config.json (analysis.events; torch loads)."""
    finder = lrfind.suggestion_in(folders)
    runs = [f for f in folders if not (Path(f) / "lr_find.csv").is_file()]
    results, skipped = read_runs(runs)
    if not results:
        raise UserError(
            f"No finished run among {', '.join(map(str, folders))}: nothing to summarize."
        )
    columns = VAL_COLUMNS if any(r.validated for r in results) else COLUMNS
    text = report(results, columns, LOSS_NOTE, skipped, finder.text() if finder else "")
    out_dir = Path(out_dir)
    curves = rate_curves(results)
    outputs = [out_dir / RESULTS, out_dir / COMPARE]
    rates = len(curves) >= 4 and rate_axis(results)
    open_gate(out_dir, overwrite).claim([p.name for p in outputs] + [RATES] * rates)
    events = {}
    if tensorboard:  # every event file made (each folder's record checked) before any is written
        from mnist_cnn.analysis.events import event_bytes, write_events

        events = {f: event_bytes(f) for f in run_folders(runs) if not diverged_at_once(f)}
        for folder, data in events.items():  # the same bytes again write nothing
            gate = open_gate(folder, overwrite)
            gate.advice = "Add --overwrite to replace it, or move it out of the run folder."
            gate.check(EVENTS, replaces=file_sha256(folder / EVENTS) != sha256(data))
    written: list[Path | str] = [*outputs]
    prepare_out_dir(out_dir)
    write_text(out_dir / RESULTS, text)
    plot_curves(
        curves,
        out_dir / COMPARE,
        f"test loss and accuracy per {'setting' if named_settings(results) else 'learning rate'}"
        + (" (mean over seeds, 95% interval of the mean)" if len(results) > len(curves) else ""),
    )
    if rates:
        found = [v for v in (finder.per_seed.values() if finder else []) if v is not None]
        mark = (finder.lr, min(found), max(found)) if finder and finder.lr and found else None
        plot_rates(rate_curve(results), mark, out_dir / RATES)
        written.append(out_dir / RATES)
    if tensorboard:
        for folder, data in events.items():
            write_events(folder, data)
        written.append(f"TensorBoard's event file in each of {len(events)} run folders")
    log.info("%s\n\nwrote %s", answer(text), ", ".join(map(str, written)))
    return text


def answer(text: str) -> str:
    """The Answer section of a results.md, what the console shows of it (the rest is read in
    the file)."""
    section = text.split("## Answer\n", 1)[-1].split("\n## ", 1)[0]
    return "\n".join(["Answer", *filter(None, section.splitlines())])
