"""File safety: whole files written atomically (temp, fsync, rename) and through links, outputs
claimed before any work (no command replaces what it did not make, nor one of its inputs), a
run folder's lock, and torch weights loaded safely (weights_only, every failure one paragraph).
filelock and torch load only where used: the modes that never touch weights start fast.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from mnist_cnn.interrupts import EXIT_WRITE_FAILED, UserError


def refuse_links(folder: Path, names: Sequence[str]) -> None:
    """A run folder's own files are written in place, never through a symbolic link (one to a
    committed model.log would be overwritten; a dangling one would make a file elsewhere)."""
    for name in names:
        path = Path(folder) / name
        if path.is_symlink():
            raise UserError(
                f"{path} is a symbolic link (to {os.readlink(path)}): this tool writes a run "
                "folder's own files in place, never through a link. Remove the link, or write "
                "elsewhere with --out_dir."
            )


def written_through(path: Path) -> Path:
    """Where writing `path` lands: a symbolic link's target (so the link stays a link), refused
    when that is something other than a regular file (a folder, a device, a FIFO, a socket)."""
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    with contextlib.suppress(OSError):
        if not stat.S_ISREG(path.stat().st_mode):
            raise UserError(
                f"Cannot write {path}: it is not a regular file (a folder, device, FIFO or "
                "socket). Name a file to write."
            )
    return path


def claim_outputs(
    outputs: Sequence[Path], overwrite: bool, flag: str, inputs: Sequence[Path] = ()
) -> None:
    """Refuse, before any work, an output that is one of the command's inputs, or that exists
    already unless --overwrite: no command replaces what it did not make."""
    for output in map(Path, outputs):
        for source in map(Path, inputs):
            if source.exists() and output.exists() and os.path.samefile(output, source):
                alias = "" if output == source else f" (the same file as {source})"
                raise UserError(
                    f"{output} is one of this command's inputs{alias}: write elsewhere with {flag}."
                )
        if output.exists() and not overwrite:
            raise UserError(
                f"{output} already exists. Add --overwrite to replace it, or write elsewhere "
                f"with {flag}."
            )


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A file that replaces `path` only when the block ends without error (temp, fsync,
    rename): a crash, a full disk or an exception leaves the old one intact. A link is written
    through to its target."""
    path = written_through(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # a full disk often shows only here, not at write()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
        sync_folder(path.parent)  # the rename itself survives a power cut only once synced
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_failed(path, e) from None
        raise


def write_failed(path: Path, e: OSError) -> UserError:
    """The one-paragraph error for a file that could not be written."""
    reason = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    return UserError(
        f"Cannot write {path}: {reason}. The files written before it are "
        "unchanged; free some space or write elsewhere, then run again (a training run "
        "continues with --resume).",
        EXIT_WRITE_FAILED,
    )


def atomic_write(path: Path, data: bytes) -> None:
    """Write a whole file atomically (see atomic_file)."""
    with atomic_file(path) as f:
        f.write(data)


def sync_folder(folder: Path) -> None:
    """fsync a folder's entry list (POSIX; Windows cannot open folders and needs no such step)."""
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text(path: Path, text: str) -> None:
    """Atomically write a text file."""
    atomic_write(path, text.encode())


def prepare_out_dir(path: Path, flag: str = "--out_dir") -> None:
    """Create the output folder and prove it is writable, before any work starts; the error
    names the flag that chose the folder."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(
            f"Cannot write to the output folder {path} ({e.strerror or e}). "
            f"Choose a writable folder with {flag}."
        ) from None


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an OS lock on a run folder while writing there (flock on POSIX, msvcrt on Windows,
    through filelock); the OS drops it even on kill -9. The holder's PID is written inside."""
    import filelock

    path = folder / ".lock"
    lock = filelock.FileLock(path, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        holder = ""
        with contextlib.suppress(OSError):
            holder = path.read_text(errors="replace").strip()
        raise UserError(
            f"{folder} is in use: process {holder or 'unknown'} is training there. "
            "Wait for it to finish (or stop it), or train into another --out_dir."
        ) from None
    try:
        with open(path, "r+") as f:
            f.write(f"{os.getpid()}\n")
        yield
    finally:
        lock.release()


def load_tensors(path: Path, what: str) -> dict:
    """torch.load with weights_only=True; any failure becomes a clear UserError."""
    path = Path(path)
    try:
        kind = path.stat()
    except FileNotFoundError:
        raise UserError(
            f"The {what} {path} does not exist. Train it first (the same flags without the "
            "mode flag train into that folder) or pass --model_path."
        ) from None
    except OSError as e:  # a name too long, no permission, a loop of links
        raise UserError(f"The {what} {path} cannot be opened ({e.strerror}).") from None
    if path.is_dir():
        raise UserError(
            f"The {what} {path} is a directory, not a file. Give the path of the "
            f".pth file inside it, e.g. {path / 'model.pth'}."
        )
    if not path.is_file():
        raise UserError(
            f"The {what} {path} is not a regular file (a pipe or a device?). Give "
            "the path of a .pth file."
        )
    if kind.st_size == 0:
        raise UserError(
            f"The {what} {path} is empty (0 bytes), probably from an interrupted copy. "
            "Copy or train it again."
        )
    try:
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged files
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(
            f"The {what} {path} cannot be read as PyTorch weights: it is truncated, "
            f"damaged, not a PyTorch file, or holds more than tensors ({reason}). "
            "Only files saved by this tool (torch.save of a state_dict) load."
        ) from None
    if not isinstance(obj, dict):
        raise UserError(
            f"The {what} {path} holds a {type(obj).__name__}, not a dictionary of "
            "tensors (a state_dict). Save weights with torch.save(model.state_dict())."
        )
    return obj
