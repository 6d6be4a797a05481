"""Interruptions and errors, standard library only (main imports it before anything else, so a
signal at any moment of the start is handled and --help stays instant).

Owns: console logging (plain lines on whatever stdout is), the exit codes, UserError (a
one-paragraph problem the user can fix), Interrupted and the StopFlag that defers a signal to
the next batch or file boundary once training has begun, the handlers' installation and
restoration, and report_errors, which turns all of it into a message and an exit code.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import NoReturn, TextIO

log = logging.getLogger("mnist_cnn")

EXIT_CODES: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}


def exit_during_import(signum: int, frame: object) -> None:
    """A signal while Python loads its modules (or once the command has returned): nothing is
    being written, so leave with the code."""
    name = signal.Signals(signum).name
    print(f"{name} received while starting or ending: stopped", file=sys.stderr)
    os._exit(EXIT_CODES[signum])


EXIT_BAD_INPUT, EXIT_WRITE_FAILED = 2, 1


class UserError(Exception):
    """A problem the user can fix: printed as one paragraph, exit code 2 (1 for failed writes)."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.code = code


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the process (training: at a batch or file boundary)."""

    def __init__(self, signum: int, note: str = "") -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.note = signum, note


def stop_at_once(signum: int, frame: object) -> None:
    """A signal where nothing is half-written: stop now (report_errors prints the line)."""
    raise Interrupted(signum, "stopped")


class StopFlag:
    """SIGINT/SIGTERM of a training process. During start-up (nothing written yet) it stops at
    once; once a run has begun it is remembered, and the process stops at the next boundary:
    the next batch, or, in figures and final writes, after the file being written, before any
    further run starts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.deferred = False  # set when the first run begins

    def __call__(self, signum: int, frame: object) -> None:
        if not self.deferred:
            raise Interrupted(signum, "during start-up, before any epoch; nothing was written")
        if self.signum is None:
            log.warning(
                "%s received: stopping at the next batch or after the file being written "
                "(finished epochs are kept)",
                signal.Signals(signum).name,
            )
        self.signum = self.signum or signum

    def check(self, resume_command: str) -> None:
        """Stop here if a signal came: every finished run's files are complete."""
        if self.signum is not None:
            log.warning("Stopped before the next step; resume with:\n  %s", resume_command)
            raise Interrupted(self.signum)


@contextlib.contextmanager
def signals_to(handler: Callable[[int, object], None]) -> Iterator[None]:
    """Send SIGINT and SIGTERM to `handler` for the duration of the block."""
    previous = {s: signal.signal(s, handler) for s in EXIT_CODES}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Catch SIGINT and SIGTERM into a StopFlag for the duration of the block; a signal that
    came after the block's last check still ends the process with its exit code."""
    flag = StopFlag()
    with signals_to(flag):
        yield flag
    if flag.signum is not None:  # between the last check and the handlers' restoring
        raise Interrupted(flag.signum, "after the last file was written; every file is complete")


def os_refusal(e: OSError) -> str:
    """One line for an OSError that reached the top: the open-file limit named as such, any
    other one as a path the OS refused."""
    if e.errno == errno.EMFILE:
        return (
            "the process reached its open-file limit (ulimit -n). Raise it (ulimit -n 4096) "
            "or run fewer things at once in this process."
        )
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or e}. Check the path given on the command line."


def report_errors(command: Callable[[], object]) -> int:
    """Run a command; a UserError becomes its one-paragraph message, a stop its exit code."""
    try:
        command()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except OSError as e:  # a path the OS refuses: too long, a device, no permission
        print(f"error: {os_refusal(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Interrupted as e:
        if e.note:
            print(f"{signal.Signals(e.signum).name} received {e.note}", file=sys.stderr)
        return EXIT_CODES[e.signum]
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_CODES[signal.SIGINT]
    return 0


def leave(code: int) -> NoReturn:
    """Once the command has returned, every file complete and closed: flush the console and end
    the process without Python's own shutdown. That shutdown tears torch's modules down for
    about 0.3 s (a few percent of the fast recipe's run), and a signal arriving during it
    would wait for a handler that never runs; from here on the OS's default ends it."""
    # held in the kernel while the handlers change: one caught between Python's C handler and
    # its Python handler would otherwise be dropped once the handler is SIG_DFL (bpo-43406);
    # POSIX only (Windows has no signal masks)
    mask = getattr(signal, "pthread_sigmask", lambda how, signals: None)
    mask(getattr(signal, "SIG_BLOCK", 0), EXIT_CODES)
    for signum in EXIT_CODES:
        signal.signal(signum, signal.SIG_DFL)
    mask(getattr(signal, "SIG_UNBLOCK", 1), EXIT_CODES)  # a held one ends the process here
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing left to tell
            stream.flush()
    os._exit(code)


def guard_start_up() -> None:
    """Before any other import: a signal while modules load ends the process with its code."""
    for signum in EXIT_CODES:
        signal.signal(signum, exit_during_import)


class StdoutHandler(logging.StreamHandler):
    """A handler that writes to whatever sys.stdout is at the time (callers and tests swap it)."""

    @property
    def stream(self) -> TextIO:
        return sys.stdout

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def configure_logging() -> None:
    """Console messages as plain lines on stdout."""
    handler = StdoutHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
