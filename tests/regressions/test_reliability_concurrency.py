"""Issue 16 items 9-10 (and 7's data manifest): safe concurrent use of run folders and the data cache.

9  a training output folder is locked: a second run fails at once, naming the holder (pid, host);
10 several processes fetching into one cache: one fetches, the others wait; unique temp names;
7  the data manifest's SHA-256 is verified when a cached file is read.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest
from test_reliability_files import DIGITS, _train

from apsq.data import rt_sentences
from apsq.data.fileio import FolderLock
from apsq.errors import APSQError


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _fake_sdist(path: Path, n: int = 200) -> Path:
    """A source archive shaped like vaderSentiment 3.3.2's: the inner tar.gz with the four ground-truth files."""
    files = {}
    for i, fname in enumerate(rt_sentences.CORPORA.values()):
        rows = [f"{i}_{k}\t{(-1) ** k * (1 + k % 3) * 0.7:.2f}\tsentence {k} of {fname}" for k in range(1, n + 1)]
        files[f"hutto_ICWSM_2014/{fname}"] = ("\n".join(rows) + "\n").encode()
    inner = _tar_gz(files)
    path.write_bytes(_tar_gz({f"vaderSentiment-3.3.2/{rt_sentences._INNER}": inner}))
    return path


@pytest.fixture
def fake_pypi(tmp_path, monkeypatch):
    """``APSQ_CACHE`` in tmp_path and a ``pip download`` stand-in that is slow (0.3 s) and counts its calls."""
    sdist = _fake_sdist(tmp_path / "vaderSentiment-3.3.2.tar.gz")
    calls = tmp_path / "downloads.log"

    def download(dest: Path) -> Path:
        with open(calls, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.3)
        out = dest / sdist.name
        out.write_bytes(sdist.read_bytes())
        return out

    monkeypatch.setenv("APSQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(rt_sentences, "_download_sdist", download)
    return calls


def _fetch_many(force: bool, times: int, q) -> None:
    try:
        for _ in range(times):
            rt_sentences.fetch_rt_sentences(force=force)
            rows = rt_sentences.load_rt_sentences(None, fetch=False)
            assert len(rows) == 200
        q.put("ok")
    except BaseException as exc:  # noqa: BLE001 (reported to the parent)
        q.put(f"{type(exc).__name__}: {exc}")


def _run_procs(target, args, n: int) -> list[str]:
    ctx = mp.get_context("fork")  # children inherit the patched downloader and APSQ_CACHE
    q = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, q)) for _ in range(n)]
    for p in procs:
        p.start()
    out = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    return out


def test_concurrent_fetches_one_download(fake_pypi):
    results = _run_procs(_fetch_many, (False, 3), 4)
    assert results == ["ok"] * 4, results
    assert len(fake_pypi.read_text().splitlines()) == 1  # the others waited and found the files
    d = rt_sentences._dir()
    assert not [p.name for p in d.iterdir() if ".tmp" in p.name or p.name == ".apsq.lock"]


def test_concurrent_forced_fetches_never_collide(fake_pypi):
    results = _run_procs(_fetch_many, (True, 3), 4)  # 12 real fetches into one folder, serialised
    assert results == ["ok"] * 4, results
    assert len(fake_pypi.read_text().splitlines()) == 12
    for name in rt_sentences.CORPORA:
        rt_sentences.corpus_path(name, fetch=False)  # every file matches its manifest hash


def _extract(sdist: Path, out: Path, q) -> None:
    try:
        for _ in range(5):
            rt_sentences.extract_corpora(sdist, out)
        q.put("ok")
    except BaseException as exc:  # noqa: BLE001 (reported to the parent)
        q.put(f"{type(exc).__name__}: {exc}")


def test_unique_temp_names_without_the_lock(tmp_path):
    """Even unlocked writers into one folder never share a temporary name (the old fixed `.tmp` did)."""
    sdist = _fake_sdist(tmp_path / "s.tar.gz")
    results = _run_procs(_extract, (sdist, tmp_path / "out"), 4)
    assert results == ["ok"] * 4, results
    assert not [p for p in (tmp_path / "out").iterdir() if ".tmp" in p.name]


def test_manifest_hash_verified_on_load(fake_pypi):
    rt_sentences.fetch_rt_sentences()
    p = rt_sentences._dir() / rt_sentences.CORPORA["movies"]
    good = p.read_bytes()
    assert len(rt_sentences.load_rt_sentences("train", fetch=False)) > 0
    p.write_bytes(good.replace(b"sentence 7 ", b"sentence 8 ", 1))
    with pytest.raises(APSQError, match=r"cached data file .*movieReviewSnippets_GroundTruth\.txt is damaged.*"
                                        r"apsq data fetch rt-sentences --force"):
        rt_sentences.load_rt_sentences("train", fetch=False)
    rt_sentences.fetch_rt_sentences(force=True)
    assert p.read_bytes() == good


# --- 9: the output folder lock --------------------------------------------------------------------
_HOLD = textwrap.dedent("""
    import sys, time
    from apsq.data.fileio import FolderLock
    lock = FolderLock(sys.argv[1], "output folder").acquire()
    print("locked", flush=True)
    time.sleep(120)
""")


def test_second_run_fails_at_once_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        with pytest.raises(APSQError, match=rf"output folder .*run is in use by another apsq process: pid {holder.pid} "
                                            rf"on host {socket.gethostname()}"):
            _train(DIGITS, out)
        assert time.monotonic() - t0 < 10  # at once, not after training
        assert sorted(p.name for p in out.iterdir()) == [".apsq.lock"]  # the second run wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel released the killed holder's lock: the folder can be taken at once, and is left clean
    with FolderLock(out, "output folder"):
        assert f"pid {os.getpid()}" in (out / ".apsq.lock").read_text()
    assert not (out / ".apsq.lock").exists()


def test_lock_in_process_and_cli(tmp_path):
    out = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(DIGITS))
    with FolderLock(out, "output folder"):
        from typer.testing import CliRunner

        from apsq.cli import app

        r = CliRunner().invoke(app, ["train", "--config", str(cfg), "--output", str(out)])
        assert r.exit_code == 1
        assert f"is in use by another apsq process: pid {os.getpid()}" in r.output
        assert "results in" not in r.output
    assert not out.joinpath(".apsq.lock").exists()


def test_waiting_lock_times_out_with_holder(tmp_path):
    with FolderLock(tmp_path, "data cache folder"):
        seen = []
        with pytest.raises(APSQError, match=r"in use by another apsq process: pid \d+ .*waited 0 s"):
            FolderLock(tmp_path, "data cache folder", wait=True, timeout=0.2).acquire(on_wait=seen.append)
        assert seen and f"pid {os.getpid()}" in seen[0]


def test_lock_on_an_unusable_folder_is_an_apsq_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the folder should be: mkdir fails even for root
    with pytest.raises(APSQError, match="cannot lock output folder .*file"):
        FolderLock(blocker / "run", "output folder").acquire()
