"""Atomic file writes: an interrupted or killed write leaves the previous complete file, or none.

Every file fastamort writes (learner checkpoints; the results, tables and figures of
``fastamort demo``, ``bench`` and ``experiment``) goes through this module. Rules:

* The bytes go to a temporary file in the target's own folder (the same filesystem), are
  flushed and fsync'ed, and the temporary file is renamed over the target (``os.replace``,
  atomic on POSIX and Windows); the folder is fsync'ed after the rename where the platform
  allows it.
* A symlink is written through: the link stays, and its target gets the new content.
* A new file gets mode 0o666 less the umask (as ``open`` gives); a replaced file keeps its mode.
* Temporary files are named ``.<name>.<pid>.<8 hex>.tmp<suffix>`` (the target's suffix last,
  so writers that infer a format from the name, such as matplotlib, still work). One left by
  a process that no longer runs (killed mid-write) is removed by the next write to the same
  target.
* Several files that make one result are written as a :class:`StagedFiles` set (or into a
  :func:`staged_folder`): each to its temporary file, all renamed at the end, with Ctrl-C held
  back during the renames. An interrupted run leaves the previous complete set (or nothing).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp(\.[^.]*)?$")


def resolve_target(path: str | os.PathLike) -> Path:
    """The file a write to ``path`` must change: ``path`` with every symlink followed (a
    dangling link gives the file it points to), as an absolute path."""
    return Path(os.path.realpath(os.fspath(path)))


def _temp_path(target: Path) -> Path:
    return target.with_name(
        f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{target.suffix}"
    )


def _pid_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def stale_temps(target: Path) -> list[Path]:
    """Temporary files (or staging folders) of ``target`` left by processes that are gone."""
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return []
    out = []
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m and m["name"] == target.name and not _pid_running(int(m["pid"])):
            out.append(Path(entry.path))
    return out


def clean_stale_temps(target: Path) -> None:
    """Removes :func:`stale_temps` of ``target`` (errors ignored: a cleanup, never a failure)."""
    for path in stale_temps(target):
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def _create_temp(target: Path) -> tuple[int, Path]:
    """An exclusive new temporary file beside ``target``: (fd, path). Its mode is the
    target's when the target exists, else 0o666 less the umask."""
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = _temp_path(target)
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        if mode is not None:
            try:
                os.chmod(tmp, mode)
            except OSError:
                os.close(fd)
                os.unlink(tmp)
                raise
        return fd, tmp
    raise FileExistsError(f"cannot create a temporary file beside {str(target)!r}")


def _fsync_folder(folder: Path) -> None:
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def probe_writable(path: str | os.PathLike) -> Path:
    """Creates ``path``'s folder and writes, fsyncs and removes a temporary file beside its
    target, so an unwritable place (permissions, a read-only filesystem, a missing or full
    device) raises ``OSError`` now rather than at the first real write. Stale temporary
    files of the target are removed. Returns the target (symlinks followed)."""
    target = resolve_target(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(target)
    fd, tmp = _create_temp(target)
    try:
        os.write(fd, b"\0")
        os.fsync(fd)
    finally:
        os.close(fd)
        _unlink_quietly(tmp)
    return target


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None,
    newline: str | None = None,
) -> Iterator[IO[Any]]:  # fmt: skip
    """``open(path, mode)`` for writing, atomically: the target changes only when the block
    ends without an exception (then with the whole content, fsync'ed).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_open(p, "w") as fh:
        ...     _ = fh.write("done")
        >>> p.read_text()
        'done'
    """
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"mode: expected 'w', 'wt' or 'wb', got {mode!r}")
    target = resolve_target(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(target)
    fd, tmp = _create_temp(target)
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding or "utf-8", "newline": newline}
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_folder(target.parent)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Writes ``data`` (bytes, or text as UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Holds SIGINT (Ctrl-C) back until the block ends, then delivers it (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    except (ValueError, OSError):  # no signal support here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(signal.SIGINT, None)
            elif previous == signal.SIG_DFL:
                raise KeyboardInterrupt


class StagedFiles:
    """Files that make one result, replaced together when the ``with`` block ends.

    :meth:`path` gives a temporary path to write a target's content to (any writer, e.g.
    ``fig.savefig(stage.path(out / "plot.png"))``); :meth:`write` takes the content directly.
    At a clean exit every temporary file is fsync'ed, then all are renamed over their targets
    in the order they were staged (stage the file that marks a complete result, such as
    ``metrics.json``, last), with Ctrl-C held back; at an exception they are removed and no
    target changes.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (temporary, target)

    def path(self, target: str | os.PathLike) -> Path:
        """A new temporary path for ``target`` (same folder; created empty)."""
        final = resolve_target(target)
        final.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(final)
        fd, tmp = _create_temp(final)
        os.close(fd)
        self._staged = [(t, f) for t, f in self._staged if f != final]  # the last one wins
        self._staged.append((tmp, final))
        return tmp

    def write(self, target: str | os.PathLike, data: bytes | str) -> Path:
        """Stages ``data`` (bytes, or text as UTF-8) for ``target``; returns ``target``."""
        self.path(target).write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        return Path(target)

    def unstage(self, target: str | os.PathLike) -> None:
        """Drops ``target`` from the set (its temporary file is removed; the target stays)."""
        final = resolve_target(target)
        for tmp, f in self._staged:
            if f == final:
                _unlink_quietly(tmp)
        self._staged = [(t, f) for t, f in self._staged if f != final]

    def commit(self) -> None:
        for tmp, _ in self._staged:
            _fsync_file(tmp)
        with _interrupts_held():
            for tmp, final in self._staged:
                os.replace(tmp, final)
            for folder in dict.fromkeys(final.parent for _, final in self._staged):
                _fsync_folder(folder)
        self._staged = []

    def discard(self) -> None:
        for tmp, _ in self._staged:
            _unlink_quietly(tmp)
        self._staged = []

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.discard()
                raise
        else:
            self.discard()


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike, *, last: tuple[str, ...] = ()) -> Iterator[Path]:
    """A new empty folder to write a whole result into; at a clean exit its files move into
    ``folder`` (sub-folders kept, files named in ``last`` moved last, existing files
    replaced, other files of ``folder`` left alone); at an exception it is removed and
    ``folder`` is unchanged. The staging folder lies inside ``folder`` (hidden), so the moves
    are renames on one filesystem."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    anchor = resolve_target(root) / "staging"
    clean_stale_temps(anchor)
    stage = _temp_path(anchor)
    stage.mkdir()
    try:
        yield stage
        files = sorted(
            (p for p in stage.rglob("*") if p.is_file() or p.is_symlink()),
            key=lambda p: (p.name in last, last.index(p.name) if p.name in last else 0, str(p)),
        )
        with StagedFiles() as staged:
            for path in files:
                target = root / path.relative_to(stage)
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = staged.path(target)
                os.replace(path, tmp)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
