"""Where apsq keeps what it builds or fetches: one root, ``$APSQ_CACHE`` or ``~/.cache/apsq``.

The only reader of ``APSQ_CACHE``. Data (:mod:`apsq.data`), compiled kernels (:mod:`apsq.kernels`)
and the RAE's Verilator builds live in sub-folders of this root. Folders that hold code apsq loads or
runs are private (:func:`private_dir`): owned by this user and writable by nobody else; when the root
cannot be written, a per-user fallback ``<tmp>/apsq-<uid>`` is created with mode 0700 (issue 16
item 11), and every folder or file is checked (:func:`check_private`) before anything in it is loaded.

The one hash-checked build cache (issue 27 item 3): a builder stores a file it made with
:func:`store_verified` (written atomically beside a ``<file>.sha256`` record of its content); before a
library is loaded (:mod:`apsq.kernels.build`) or an executable run (:mod:`apsq.hw.rae.verilator`),
:func:`verify_stored` checks owner, mode and hash, so a file planted or damaged by someone else is
rebuilt, never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from pathlib import Path

__all__ = ["CACHE_ENV", "CacheError", "cache_root", "check_private", "private_dir", "sha256_file",
           "write_atomic", "store_verified", "verify_stored"]

CACHE_ENV = "APSQ_CACHE"


def cache_root() -> Path:
    """``$APSQ_CACHE`` if set, else ``~/.cache/apsq`` (not created here)."""
    value = os.environ.get(CACHE_ENV)
    return Path(value).expanduser() if value else Path(os.path.expanduser("~")) / ".cache" / "apsq"


class CacheError(RuntimeError):
    """A cache folder or a file in it is not safe to load from (owner, mode, hash)."""


def _uid() -> int | None:
    return os.getuid() if hasattr(os, "getuid") else None


# ------------------------------------------------------------------------------------------------
# The cache folder and its checks.
# ------------------------------------------------------------------------------------------------
def check_private(path: Path, *, strict: bool = False) -> None:
    """Raise :class:`CacheError` unless ``path`` is owned by this user and writable by no one else.

    ``path`` may be a folder (not a symlink) or a regular file. ``strict``: no group/other access at
    all (mode ``0700`` / ``0600``), for the shared temp folder. On systems without uids only the
    symlink and type checks apply.
    """
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise CacheError(f"{path}: cannot stat: {exc}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise CacheError(f"{path} is a symbolic link; the cache refuses to follow it")
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise CacheError(f"{path} is neither a folder nor a regular file")
    uid = _uid()
    if uid is None:
        return
    if st.st_uid != uid:
        raise CacheError(f"{path} is owned by uid {st.st_uid}, not by this user ({uid}); not loading from it")
    mask = 0o077 if strict else 0o022
    if st.st_mode & mask:
        raise CacheError(f"{path} has mode {stat.S_IMODE(st.st_mode):o}: other users may "
                         f"{'access' if strict else 'write'} it; fix it with chmod {'700' if strict else 'go-w'}")


def _fallback_dir() -> Path:
    """``<tmp>/apsq-<uid>``: created with mode 0700, or refused if it exists and is not private."""
    path = Path(tempfile.gettempdir()) / f"apsq-{_uid() if _uid() is not None else 'user'}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise CacheError(f"cannot create the cache {path}: {exc}") from exc
    check_private(path, strict=True)
    return path


def private_dir(name: str) -> Path:
    """``<cache root>/<name>`` (created, checked private), else ``<tmp>/apsq-<uid>/<name>`` (mode 0700).

    Raises CacheError when neither is usable (e.g. someone else owns ``<tmp>/apsq-<uid>``).
    """
    path = cache_root() / name
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if os.access(path, os.W_OK):
            check_private(path)
            return path
    except (OSError, CacheError):
        pass
    path = _fallback_dir() / name
    try:
        path.mkdir(exist_ok=True, mode=0o700)
    except OSError as exc:
        raise CacheError(f"cannot create the cache folder {path}: {exc}") from exc
    check_private(path, strict=True)
    return path


# ------------------------------------------------------------------------------------------------
# Built files with a hash record: written atomically, verified before use.
# ------------------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's content (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_atomic(target: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``target`` through a temporary file in the same folder (fsync, chmod ``mode``,
    ``os.replace``): readers see the old file or the new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _record(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def store_verified(target: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Store a built file: ``target`` (mode ``mode``, e.g. ``0o700`` for an executable) and its
    ``<target>.sha256`` record, each written atomically (concurrent builders of one key agree)."""
    write_atomic(target, data, mode=mode)
    write_atomic(_record(target), hashlib.sha256(data).hexdigest().encode())


def verify_stored(target: Path) -> None:
    """Raise :class:`CacheError` unless ``target``'s folder, the file and its ``.sha256`` record are
    private (:func:`check_private`) and the file's SHA-256 equals the recorded one."""
    check_private(target.parent)
    check_private(target)
    record = _record(target)
    check_private(record)
    want = record.read_text().strip()
    got = sha256_file(target)
    if got != want:
        raise CacheError(f"{target}: content hash {got[:12]}… differs from the one recorded at build time "
                         f"({want[:12]}…); not using it")
