"""Crash-safe files: atomic writes with fsync, unique temporary names, folder locks, orphan clean-up.

Used by the data cache (concurrent fetches) and by training runs (checkpoints, metrics, the output
folder lock). POSIX only (``fcntl.flock``), like the rest of the run tooling.

* :func:`atomic_write_bytes` writes to a unique temporary file in the target's folder
  (``.<name>.tmp-<pid>-<random>``), ``fsync``\\ s it, renames it over the target with
  :func:`os.replace` (atomic) and ``fsync``\\ s the folder, so after a crash or power loss the target
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
    removed = []
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
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
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


def atomic_write_bytes(path: str | Path, data: bytes | bytearray | memoryview, *, what: str = "file",
                       mode: int = 0o644) -> None:
    """Replace ``path`` by ``data`` atomically and durably (temp file, fsync, rename, fsync folder).

    Raises :class:`APSQError` naming ``what`` and ``path`` when the write fails (e.g. ``ENOSPC``, disk
    full); the temporary file is removed and the previous content of ``path``, if any, is intact.
    """
    path = Path(path)
    existed = path.exists()
    tmp = temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        kept = f"the previous {path.name} is intact" if existed else "nothing was written"
        hint = {errno.ENOSPC: " (disk full: free space and rerun)", errno.EDQUOT: " (disk quota exceeded)",
                errno.EFBIG: " (over the file size limit)"}.get(exc.errno or 0, "")
        raise APSQError(f"could not write {what} {path}: {exc.strerror or exc}{hint}; {kept}") from exc
    fsync_dir(path.parent)
    remove_dead_temps(path)


def atomic_write_text(path: str | Path, text: str, *, what: str = "file") -> None:
    """:func:`atomic_write_bytes` of UTF-8 ``text``."""
    atomic_write_bytes(path, text.encode("utf-8"), what=what)


def remove_orphan_temps(folder: str | Path) -> list[Path]:
    """Delete temporary files (``.*.tmp-*``, and the ``.*.tmp<pid>`` names of earlier versions) left in
    ``folder`` by killed writers; returns what was removed. Hold the folder's lock while calling it."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        name = p.name
        if name.startswith(".") and (TMP_INFIX in name or ".tmp" in name) and p.is_file():
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


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
        self.folder.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.timeout
        told = False
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
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
