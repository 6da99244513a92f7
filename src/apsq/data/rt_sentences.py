"""Rotten Tomatoes movie-review sentences (SST-2-like binary sentiment), offline from PyPI.

Source: the *source* distribution of ``vaderSentiment==3.3.2`` (MIT, Hutto & Gilbert, ICWSM 2014)
ships ``additional_resources/hutto_ICWSM_2014.tar.gz`` with
``movieReviewSnippets_GroundTruth.txt``: ``id <TAB> mean rating (-4..4) <TAB> sentence``, 10,605
sentences from the Pang & Lee corpus that SST was built from. Label = sign of the rating
(1 positive, 0 negative); the 37 sentences rated exactly 0 are dropped (10,568 remain).
The same archive's tweet, NYT-editorial and Amazon-review files are kept as a small English corpus.

Split: :func:`apsq.data.splits.split_of` on ``"rt-sentences:<id>"`` (80 / 10 / 10).

Cache safety: a fetch holds a lock on the cache folder (other processes fetching at the same time
wait, then find the files), every file is written atomically under a unique temporary name, and
``manifest.json`` records each file's SHA-256, which :func:`corpus_path` verifies before a file is
read (a damaged file is refused by name, with the command that fetches it again).
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from apsq.data.cache import cache_dir
from apsq.data.fileio import (
    FolderLock,
    atomic_write_bytes,
    atomic_write_text,
    remove_orphan_temps,
)
from apsq.data.splits import check_split, split_of
from apsq.data.text import TextExample
from apsq.errors import APSQError

RT_SOURCE = "vaderSentiment==3.3.2"
FETCH_COMMAND = "apsq data fetch rt-sentences"
_INNER = "additional_resources/hutto_ICWSM_2014.tar.gz"
CORPORA = {
    "movies": "movieReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
}
DATASET = "rt-sentences"


def _dir() -> Path:
    return cache_dir() / "vader-3.3.2"


def _download_sdist(dest: Path) -> Path:
    """``pip download`` the vaderSentiment source distribution into ``dest``; its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check",
           "-q", "-d", str(dest), RT_SOURCE]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise APSQError(f"could not run pip to fetch {RT_SOURCE}: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise APSQError(
            f"fetching the Rotten Tomatoes sentences failed (pip download {RT_SOURCE}: {' | '.join(tail)}). "
            f"They are not cached in {_dir()}; run `{FETCH_COMMAND}` on a machine that reaches PyPI "
            f"(or set APSQ_CACHE to a directory that holds them)."
        )
    found = sorted(dest.glob("vaderSentiment-3.3.2*.tar.gz"))
    if not found:
        raise APSQError(f"pip download {RT_SOURCE} produced no source archive in {dest}")
    return found[0]


def extract_corpora(sdist: Path, out: Path) -> dict[str, str]:
    """Unpack the four ground-truth files from the sdist into ``out``; ``{file: sha256}``."""
    out.mkdir(parents=True, exist_ok=True)
    hashes: dict[str, str] = {}
    with tarfile.open(sdist, "r:gz") as outer:
        member = next((m for m in outer.getmembers() if m.name.endswith(_INNER)), None)
        if member is None:
            raise APSQError(f"{sdist.name} does not contain {_INNER}")
        f = outer.extractfile(member)
        if f is None:
            raise APSQError(f"{_INNER} in {sdist.name} is not a regular file")
        inner_bytes = f.read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        for fname in CORPORA.values():
            m = next((m for m in inner.getmembers() if m.name.endswith("/" + fname)), None)
            if m is None:
                raise APSQError(f"{_INNER} does not contain {fname}")
            f = inner.extractfile(m)
            if f is None:
                raise APSQError(f"{fname} in {_INNER} is not a regular file")
            data = f.read()
            # unique temporary name + rename: a reader sees the whole file or none, writers never collide
            atomic_write_bytes(out / fname, data, what="cached corpus file")
            hashes[fname] = hashlib.sha256(data).hexdigest()
    return hashes


def _complete(d: Path) -> bool:
    return (d / "manifest.json").exists() and all((d / f).exists() for f in CORPORA.values())


def fetch_rt_sentences(force: bool = False) -> Path:
    """Fetch the sentences once into the cache (``pip download`` of the sdist); the cache folder.

    Concurrent calls (threads or processes sharing ``$APSQ_CACHE``) are serialised by a lock on the
    cache folder: the first fetches, the others wait and then return the cached files (``force``
    fetches again once the lock is held).
    """
    d = _dir()
    if _complete(d) and not force:
        return d
    with FolderLock(d, "data cache folder", wait=True, timeout=600.0):
        if _complete(d) and not force:  # another process fetched it while we waited
            return d
        remove_orphan_temps(d)  # of fetches that were killed (no live writer: we hold the lock)
        with tempfile.TemporaryDirectory(prefix="apsq-fetch-") as tmp:
            sdist = _download_sdist(Path(tmp))
            hashes = extract_corpora(sdist, d)
        atomic_write_text(d / "manifest.json", json.dumps({"source": RT_SOURCE, "files": hashes}, indent=1),
                          what="data manifest")
    return d


def verify_cached(path: Path) -> Path:
    """Check a cached file against the SHA-256 in its folder's ``manifest.json``; a mismatch raises
    :class:`APSQError` naming the file. Files without a manifest entry are returned unchecked."""
    manifest = path.parent / "manifest.json"
    try:
        entry = json.loads(manifest.read_text()).get("files", {}).get(path.name)
    except (OSError, ValueError, AttributeError) as exc:
        raise APSQError(f"data manifest {manifest} is unreadable or damaged ({exc}); run "
                        f"`{FETCH_COMMAND} --force`") from exc
    if entry is None:
        return path
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != entry:
        raise APSQError(f"cached data file {path} is damaged: its SHA-256 {digest[:16]}... does not match "
                        f"{entry[:16]}... in {manifest}; run `{FETCH_COMMAND} --force` to fetch it again")
    return path


def parse_ground_truth(path: Path, dataset: str = DATASET) -> list[TextExample]:
    """Parse ``id <TAB> rating <TAB> sentence`` lines; label = rating > 0, zero ratings dropped."""
    out: list[TextExample] = []
    text = Path(path).read_bytes().decode("utf-8", errors="replace")
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise APSQError(f"{path}:{lineno}: expected 'id<TAB>rating<TAB>sentence', got {line[:60]!r}")
        try:
            rating = float(parts[1])
        except ValueError as exc:
            raise APSQError(f"{path}:{lineno}: rating {parts[1]!r} is not a number") from exc
        if rating == 0.0:
            continue
        out.append(TextExample(id=parts[0].strip(), text=parts[2].strip(), label=int(rating > 0)))
    return out


def corpus_path(name: str = "movies", fetch: bool = True) -> Path:
    """Path of one cached ground-truth file (``movies``, ``tweets``, ``nyt``, ``amazon``)."""
    if name not in CORPORA:
        raise APSQError(f"corpus must be one of {', '.join(CORPORA)}; got {name!r}")
    p = _dir() / CORPORA[name]
    if not _complete(_dir()):
        if not fetch:
            raise APSQError(f"{p} is missing; run `{FETCH_COMMAND}` first")
        fetch_rt_sentences()
    return verify_cached(p)


def load_rt_sentences(split: str | None = "train", *, path: str | Path | None = None,
                      fetch: bool = True) -> list[TextExample]:
    """Rotten Tomatoes sentences of one split (``None``: all), fetched into the cache if missing.

    ``path`` reads a file in the same format instead (a local stand-in).
    """
    if split is not None:
        check_split(split)
    p = Path(path) if path is not None else corpus_path("movies", fetch=fetch)
    rows = parse_ground_truth(p)
    if split is None:
        return rows
    return [e for e in rows if split_of(DATASET, e.id) == split]
