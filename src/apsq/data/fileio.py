"""Crash-safe files: atomic writes with fsync, unique temporary names, folder locks, orphan clean-up.

Used by the data cache (concurrent fetches) and by training runs (checkpoints, metrics, the output
folder lock). POSIX only (``fcntl.flock``), like the rest of the run tooling.

* :func:`atomic_write_bytes` writes to a unique temporary file in the target's folder
  (``.<name>.tmp-<pid>-<random>``), fsyncs it, renames it over the target with
  :func:`os.replace` (atomic) and fsyncs the folder, so after a crash or power loss the target
  is either the old or the new content, never a mix; a failed write (disk full) removes its
  temporary file and raises :class:`~apsq.errors.APSQError` saying the previous file is intact.
* :class:`FolderLock` is an exclusive ``flock`` on ``<folder>/.apsq.lock`` holding the owner's pid and
  host; a second holder fails at once (or waits, for the data cache) and is told who holds it.
  The kernel drops the lock when its process dies, so a killed run never leaves a stale lock.
* :func:`remove_orphan_temps` deletes the temporary files of killed writers; call it while holding
  the folder's lock (then no live writer can own them). :func:`atomic_write_bytes` itself removes
  the temporary files of its target whose writer process is gone (the pid is in the name), so
  killed runs leave no orphans behind even without a lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from apsq.errors import APSQError

LOCK_NAME = ".apsq.lock"
TMP_INFIX = ".tmp-"
"""Temporary files are named ``.<target name>.tmp-<pid>-<random hex>``."""


_TMP_PID = re.compile(r"\.tmp-?(\d+)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_dead_temps(path: Path) -> list[Path]:
    """Delete ``path``'s temporary files (``.<name>.tmp-<pid>-*``, and ``.<name>.tmp<pid>`` of earlier
    versions) whose writer process no longer exists; returns what was removed."""
    removed: list[Path] = []
    prefix = f".{path.name}.tmp"
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return removed
    for p in siblings:
        if not p.name.startswith(prefix):
            continue
        m = _TMP_PID.match(p.name[len(path.name) + 1:])
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            _remove(p)
            removed.append(p)
    return removed


def temp_name(path: Path) -> Path:
    """A unique temporary path next to ``path`` (same folder, so the final rename is atomic)."""
    return path.with_name(f".{path.name}{TMP_INFIX}{os.getpid()}-{secrets.token_hex(4)}")


def fsync_dir(folder: Path) -> None:
    """``fsync`` a folder so that a rename inside it survives a power loss (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_with(path: str | Path, writer: Callable[[Path], None], *, what: str = "file",
                      errors: tuple[type[BaseException], ...] = ()) -> None:
    """Replace ``path`` atomically and durably by what ``writer(tmp)`` writes to a temporary path next to it.

    The temporary file (unique name) is fsynced, renamed over ``path`` and the folder is
    fsynced. An :class:`OSError` (or one of ``errors``, e.g. a serialiser's own I/O error) while
    writing raises :class:`APSQError` naming ``what`` and ``path`` (disk full, quota, size limit
    named); the temporary file is removed and the previous content of ``path``, if any, is intact.
    """
    path = Path(path)
    existed = path.exists()
    # a private temporary folder: writers that make their own temporary files (safetensors does)
    # make them in there, so a killed writer's debris is one pid-named folder, removed later
    tmp_dir = temp_name(path)
    tmp = tmp_dir / path.name
    caught: tuple[type[BaseException], ...] = (OSError, *errors)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir.mkdir()
        writer(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except caught as exc:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        kept = f"the previous {path.name} is intact" if existed else "nothing was written"
        code = getattr(exc, "errno", None) or next((c for c, word in _ERRNO_WORDS if word in str(exc)), 0)
        hint = {errno.ENOSPC: " (disk full: free space and rerun)", errno.EDQUOT: " (disk quota exceeded)",
                errno.EFBIG: " (over the file size limit)"}.get(code, "")
        raise APSQError(f"could not write {what} {path}: {getattr(exc, 'strerror', None) or exc}{hint}; {kept}"
                        ) from exc
    fsync_dir(path.parent)
    shutil.rmtree(tmp_dir, ignore_errors=True)
    remove_dead_temps(path)


_ERRNO_WORDS = ((errno.ENOSPC, "os error 28"), (errno.EDQUOT, "os error 122"), (errno.EFBIG, "os error 27"))
"""Linux error numbers as Rust libraries (safetensors) print them inside their own exceptions."""


def atomic_write_bytes(path: str | Path, data: bytes | bytearray | memoryview, *, what: str = "file",
                       mode: int = 0o644) -> None:
    """Replace ``path`` by ``data`` atomically and durably (see :func:`atomic_write_with`)."""

    def write(tmp: Path) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        finally:
            os.close(fd)

    atomic_write_with(path, write, what=what)


def atomic_write_text(path: str | Path, text: str, *, what: str = "file") -> None:
    """:func:`atomic_write_bytes` of UTF-8 ``text``."""
    atomic_write_bytes(path, text.encode("utf-8"), what=what)


def remove_orphan_temps(folder: str | Path) -> list[Path]:
    """Delete temporary files and folders (``.*.tmp-*``, ``.*.tmp<pid>`` of earlier versions, and the
    ``.tmpXXXXXX`` files safetensors itself writes) left in ``folder`` by killed writers; returns what
    was removed. Hold the folder's lock while calling it."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        name = p.name
        if name.startswith(".") and ".tmp" in name:
            _remove(p)
            removed.append(p)
    return removed


def _remove(p: Path) -> None:
    """Remove a temporary file or folder (gone already is fine)."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 512).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "an unknown process"


class FolderLock:
    """An exclusive lock on ``folder`` (``flock`` on ``folder/.apsq.lock``), released on exit or death.

    ``wait=False`` (a training output folder): a second holder raises :class:`APSQError` at once,
    naming ``folder`` and the holder (``pid N on host H since T``). ``wait=True`` (a cache folder):
    block until the holder is done, up to ``timeout`` seconds.
    """

    def __init__(self, folder: str | Path, what: str = "folder", *, wait: bool = False, timeout: float = 900.0,
                 hint: str = "") -> None:
        self.folder, self.what, self.wait, self.timeout, self.hint = Path(folder), what, wait, timeout, hint
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def acquire(self, on_wait: Callable[[str], None] | None = None) -> FolderLock:
        """Take the lock (see the class); writes ``pid <pid> on host <host> since <UTC time>`` into it."""
        if self._fd is not None:
            return self
        deadline = time.monotonic() + self.timeout
        told = False
        while True:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:  # a read-only or foreign folder
                raise APSQError(f"cannot lock {self.what} {self.folder}: {exc.strerror or exc} "
                                f"({self.path} must be creatable)") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                try:
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)  # the holder removed the file after we opened it: lock the new one
                continue
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise APSQError(f"cannot lock {self.what} {self.folder}: {exc.strerror or exc}") from exc
                holder = _holder(fd)
                if not self.wait or time.monotonic() > deadline:
                    os.close(fd)
                    waited = f" (waited {self.timeout:.0f} s)" if self.wait else ""
                    raise APSQError(f"{self.what} {self.folder} is in use by another apsq process: {holder}{waited}; "
                                    + (self.hint or "wait for it to finish")) from None
                os.close(fd)
                if on_wait is not None and not told:
                    on_wait(holder)
                    told = True
                time.sleep(0.05)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {stamp}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock and remove the lock file (idempotent). Safe against waiters: :meth:`acquire`
        re-checks after locking that the file it locked is still the one at :attr:`path`."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                self.path.unlink()
            except OSError:
                pass
            os.close(fd)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
