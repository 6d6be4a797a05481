"""File safety: the one gate every write passes (a folder's record of what the tool wrote there,
so that no command replaces what it did not make, nor one of its inputs), whole files written
atomically (temp, fsync, rename), a run folder's lock, and torch weights loaded safely
(weights_only, every failure one paragraph).
filelock and torch load only where used: the modes that never touch weights start fast.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from mnist_cnn.interrupts import EXIT_WRITE_FAILED, UserError

RECORD = ".written.json"  # in every folder the tool writes: each file it wrote there, by hash


def sha256(data: bytes) -> str:
    """The content hash a record keeps."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str | None:
    """An output's content hash (None where there is no regular file); one that cannot be read
    is a write that failed (exit 1)."""
    if not path.is_file() or path.is_symlink():
        return None
    try:
        return sha256(path.read_bytes())
    except OSError as e:
        raise write_failed(path, e) from None


class Gate:
    """The one way this tool writes a file: into one folder, where it replaces or removes only
    what the folder's record says it wrote itself (the same bytes since), or any regular file
    with --overwrite; never one of the command's inputs, a folder, a device or a FIFO, and never
    through a symbolic link met in the folder. A path a person named on the command line
    (`named`) keeps no record and is written through a link to its target, as people expect.

    The record is a JSON map, file name -> the hashes it accepts. Before a file is replaced its
    new hash joins the old one, and the old one leaves only after the file is in place: a kill
    at any moment leaves a file the record vouches for."""

    def __init__(
        self,
        folder: Path,
        overwrite: bool,
        flag: str = "--out_dir",
        inputs: Sequence[Path] = (),
        named: str | None = None,
        trusts_record: bool = True,
    ) -> None:
        self.folder, self.overwrite, self.flag = Path(folder), overwrite, flag
        self.inputs, self.named = [Path(p) for p in inputs], named
        self.trusts_record = trusts_record  # test mode's report: only the same report again
        self.advice = f"Add --overwrite to replace it, or write elsewhere with {flag}."

    def path(self, name: str) -> Path:
        """Where writing `name` lands: the folder's own entry, or a named link's target."""
        path = self.folder / name
        return Path(os.path.realpath(path)) if name == self.named and path.is_symlink() else path

    def record(self) -> dict[str, list[str]]:
        """The folder's record (empty where there is none, or one this tool cannot read)."""
        if self.named is not None:
            return {}
        path = self.folder / RECORD
        try:
            record = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def vouches(self, name: str, record: dict[str, list[str]] | None = None) -> bool:
        """Whether the record says this tool wrote the file as it is now."""
        accepted = (self.record() if record is None else record).get(name, [])
        here = file_sha256(self.folder / name)
        return self.trusts_record and isinstance(accepted, list) and here in accepted

    def check(self, name: str, replaces: bool = True) -> None:
        """Refuse, with what to do, to write `name` (replaces: the content may differ)."""
        path = self.folder / name
        if path.is_symlink() and name != self.named:
            raise UserError(
                f"{path} is a symbolic link (to {os.readlink(path)}): this tool writes the "
                "files of a folder it writes in place, never through a link. Remove the link, "
                f"or write elsewhere with {self.flag}."
            )
        target = self.path(name)
        with contextlib.suppress(OSError):
            if not stat.S_ISREG(target.stat().st_mode):
                raise UserError(
                    f"Cannot write {target}: it is not a regular file (a folder, device, FIFO "
                    f"or socket). Remove it, or write elsewhere with {self.flag}."
                )
        for source in self.inputs:
            if source.exists() and target.exists() and os.path.samefile(target, source):
                alias = "" if path == source else f" (the same file as {source})"
                raise UserError(
                    f"{path} is one of this command's inputs{alias}: write elsewhere with "
                    f"{self.flag}."
                )
        if replaces and target.exists() and not self.overwrite and not self.vouches(name):
            raise UserError(
                f"{target} already exists"
                + (
                    ", and this tool did not write it there (or it changed since)"
                    if self.trusts_record and self.named is None
                    else ""
                )
                + f". {self.advice}"
            )

    def read(self, name: str) -> bytes | None:
        """An output's current bytes, to append to (None where there is none); one it cannot
        read is a write that failed (exit 1), not a path given wrong."""
        path = self.path(name)
        try:
            return path.read_bytes() if path.exists() else None
        except OSError as e:
            raise write_failed(path, e) from None

    def claim(self, names: Sequence[str]) -> None:
        """Check every output before any work: a refusal costs nothing."""
        for name in names:
            self.check(name)

    def claim_in_place(self, names: Sequence[str]) -> None:
        """Check that outputs could be written in place at all (no link, folder, FIFO, device or
        input), before whether they may be replaced can be known (a resume's own files)."""
        for name in names:
            self.check(name, replaces=False)

    def write(self, name: str, data: bytes) -> None:
        """Write a whole file atomically; the same bytes again replace nothing."""
        self.write_all({name: data})

    def write_all(self, files: dict[str, bytes]) -> None:
        """Write several files of the folder, each atomically, the record kept true throughout."""
        new = {name: sha256(data) for name, data in files.items()}
        old = {name: file_sha256(self.path(name)) for name in files}
        changed = [name for name in files if old[name] != new[name]]
        for name in changed:
            self.check(name)
        self.rerecord({name: [new[name], old[name]] for name in changed})
        for name in changed:
            atomic_write(self.path(name), files[name])
        self.rerecord({name: [new[name]] for name in changed})

    def append(self, name: str, data: bytes) -> None:
        """Add bytes to the end of a file this gate may write (a TensorBoard file grows)."""
        self.check(name)
        path, current = self.path(name), self.read(name) or b""
        old, new = sha256(current), sha256(current + data)
        self.rerecord({name: [new, old]})
        try:
            with open(path, "ab") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise write_failed(path, e) from None
        self.rerecord({name: [new]})

    @contextlib.contextmanager
    def stream(self, name: str) -> Iterator[BinaryIO]:
        """A named file written as it is made, atomically (a CSV of many predictions)."""
        self.check(name)
        with atomic_file(self.path(name)) as f:
            yield f

    def remove(self, name: str) -> None:
        """Remove a file this gate may replace (nothing where there is none)."""
        path = self.folder / name
        if path.exists() or path.is_symlink():
            self.check(name)
            path.unlink()
        self.rerecord({name: []})

    def adopt(self, names: Sequence[str]) -> None:
        """Vouch for files as they are where the folder has no record yet: a run folder made
        before records existed, whose checkpoint has just verified, gains its record."""
        if (self.folder / RECORD).exists():
            return
        self.rerecord({name: [file_sha256(self.folder / name)] for name in names})

    def rerecord(self, hashes: dict[str, list[str | None]]) -> None:
        """Set the hashes the record accepts for some files (none: forget the file); while a
        file is being replaced, its new hash and its current one."""
        if self.named is not None or not hashes:
            return
        before = self.record()
        record = dict(before)
        for name, given in hashes.items():
            accepted = [h for h in given if h]
            if accepted:
                record[name] = list(dict.fromkeys(accepted))
            else:
                record.pop(name, None)
        if record == before:
            return
        path = self.folder / RECORD
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise UserError(f"{path} is not this tool's record of what it wrote: remove it.")
        atomic_write(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())


_GATES: dict[Path, Gate] = {}  # the gates this command opened, by folder


def open_gate(
    folder: Path,
    overwrite: bool,
    flag: str = "--out_dir",
    inputs: Sequence[Path] = (),
    trusts_record: bool = True,
) -> Gate:
    """Open the gate of a folder this command writes in (the folder itself is made later)."""
    gate = Gate(folder, overwrite, flag, inputs, trusts_record=trusts_record)
    _GATES[Path(os.path.abspath(folder))] = gate
    return gate


def open_named(path: Path, overwrite: bool, flag: str, inputs: Sequence[Path] = ()) -> Gate:
    """Open the gate of one file a person named on the command line, and check it."""
    path = Path(path)
    gate = Gate(path.parent, overwrite, flag, inputs, named=path.name)
    gate.claim([path.name])
    _GATES[Path(os.path.abspath(path))] = gate
    return gate


def gate_of(path: Path) -> Gate:
    """The gate a write to `path` passes: its own (a named file) or its folder's."""
    path = Path(os.path.abspath(path))
    gate = _GATES.get(path) or _GATES.get(path.parent)
    if gate is None:
        raise RuntimeError(f"no gate was opened for {path.parent}: every write passes one")
    return gate


def close_gates() -> None:
    """Forget every gate: a new command opens its own."""
    _GATES.clear()


def write(path: Path, data: bytes) -> None:
    """Write a whole file through its gate."""
    gate_of(path).write(Path(path).name, data)


def write_text(path: Path, text: str) -> None:
    """Write a text file through its gate."""
    write(path, text.encode())


def remove(path: Path) -> None:
    """Remove a file through its gate."""
    gate_of(path).remove(Path(path).name)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A file that replaces `path` only when the block ends without error (temp, fsync,
    rename): a crash, a full disk or an exception leaves the old one intact. Only the gate
    calls it: the gate says where a write lands."""
    path = Path(path)
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
