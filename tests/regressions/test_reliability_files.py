"""Issue 16 items 7-8: checkpoints that cannot be silently damaged, crash-safe writes.

7 every checkpoint file carries a SHA-256 of its tensors and state, verified on load and resume; a
  damaged file is refused by name;
8 atomic writes fsync the file and its folder; killed writers leave no temporary files behind; a full
  disk is a clear APSQError saying the previous checkpoint is intact; a run killed in QAT before its
  first checkpoint writes no metrics line twice.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from apsq.data import fileio
from apsq.errors import APSQError
from apsq.train.checkpoint import atomic_save_tensors, read_tensors

DIGITS = {
    "seed": 0,
    "model": {"name": "digits-cnn", "num_labels": 10},
    "data": {"name": "digits", "train_limit": 64, "eval_limit": 32},
    "finetune": {"steps": 2, "batch_size": 16, "lr": 1e-3},
    "apsq": {"mode": "apsq", "gs": 2, "tile": 8, "exclude": ["classifier"]},
    "qat": {"steps": 3, "batch_size": 16, "lr": 1e-4, "calib_batches": 1},
    "eval": {"batch_size": 32},
    "save_every": 2,
    "threads": 1,
}


def _small_ckpt(path: Path) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    t = {"model/w": torch.randn(4, 3, generator=g), "model/b": torch.randn(3, generator=g),
         "optim/0/step": torch.tensor(3.0), "model/flag": torch.tensor([True, False])}
    atomic_save_tensors(path, t, {"step": 3, "stage": "qat"})
    return t


def _data_offset(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


# --- 7: checksums -------------------------------------------------------------------------------
def test_every_single_byte_flip_is_refused_by_name(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    tensors = _small_ckpt(path)
    got, meta = read_tensors(path)
    assert meta["step"] == 3 and all(torch.equal(got[k], tensors[k]) for k in tensors)
    good = path.read_bytes()
    accepted = []
    for i in range(len(good)):
        for mask in (0x01, 0x80):
            bad = bytearray(good)
            bad[i] ^= mask
            path.write_bytes(bytes(bad))
            try:
                read_tensors(path)
            except APSQError as exc:
                assert str(path) in str(exc)
                continue
            accepted.append((i, mask))
    assert not accepted, f"flips accepted at {accepted[:5]} (data starts at {_data_offset(path)})"


def test_data_flip_message_says_damaged(tmp_path):
    path = tmp_path / "fp32.safetensors"
    _small_ckpt(path)
    raw = bytearray(path.read_bytes())
    raw[_data_offset(path) + 5] ^= 0x40  # a byte inside a float: still a valid file, different number
    path.write_bytes(bytes(raw))
    with pytest.raises(APSQError, match=r"checkpoint .*fp32\.safetensors is damaged.*SHA-256"):
        read_tensors(path)


def test_state_edit_is_refused(tmp_path):
    """A changed step in the JSON state (same length, valid JSON) is caught by the checksum too."""
    path = tmp_path / "checkpoint.safetensors"
    _small_ckpt(path)
    raw = path.read_bytes()
    edited = raw.replace(b'\\"step\\": 3', b'\\"step\\": 9')
    assert edited != raw
    path.write_bytes(edited)
    with pytest.raises(APSQError, match="is damaged"):
        read_tensors(path)


def _train(cfg: dict, out: Path, **kw):
    from apsq.train.config import parse_config
    from apsq.train.loop import train

    return train(parse_config(cfg), out, progress=False, **kw)


class Crash(RuntimeError):
    pass


def _crash_at(stage: str, step: int):
    def hook(s, k):
        if (s, k) == (stage, step):
            raise Crash(f"after {s} step {k}")
    return hook


def _metrics(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k != "sec"} for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def digits_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    res = _train(DIGITS, out)
    return out, res


@pytest.mark.parametrize("name", ["checkpoint.safetensors", "fp32.safetensors"])
def test_resume_refuses_a_damaged_checkpoint_by_name(tmp_path, name):
    with pytest.raises(Crash):
        _train(DIGITS, tmp_path, on_step=_crash_at("qat", 2))  # checkpoint at qat step 2 exists
    path = tmp_path / name
    raw = bytearray(path.read_bytes())
    raw[_data_offset(path) + 17] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(APSQError, match=f"{name} is damaged"):
        _train(DIGITS, tmp_path, resume=True)
    assert path.read_bytes() == bytes(raw)  # nothing rewritten over the evidence


# --- 8: atomic writes, orphans, full disk, metrics ---------------------------------------------
def test_atomic_write_fsyncs_file_and_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(fileio.os, "fsync", spy)
    target = tmp_path / "checkpoint.safetensors"
    _small_ckpt(target)
    assert len(synced) == 2
    assert Path(synced[0]).parent.name.startswith(".checkpoint.safetensors.tmp-")  # the data, before the rename
    assert Path(synced[1]) == tmp_path  # the folder, after it
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.safetensors"]


def test_disk_full_keeps_previous_and_says_so(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    from apsq.train import checkpoint

    path = tmp_path / "checkpoint.safetensors"
    _small_ckpt(path)
    before = path.read_bytes()

    def full(tensors, filename, metadata=None):  # what safetensors raises when the disk fills up
        Path(filename).write_bytes(b"partial")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(APSQError, match=r"could not write checkpoint .*No space left on device.*\(disk full: free space "
                                        r"and rerun\); the previous checkpoint\.safetensors is intact"):
        atomic_save_tensors(path, {"model/w": torch.zeros(1000)}, {"step": 4})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.safetensors"]
    # the same through the plain byte writer (os.write fails)
    real = os.write

    def enospc(fd, data):
        real(fd, bytes(data[:7]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.os, "write", enospc)
    with pytest.raises(APSQError, match=r"disk full.*the previous metrics\.jsonl is intact"):
        (tmp_path / "metrics.jsonl").write_text("{}\n")
        fileio.atomic_write_text(tmp_path / "metrics.jsonl", "x" * 100)
    monkeypatch.undo()
    assert (tmp_path / "metrics.jsonl").read_text() == "{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors", "metrics.jsonl"]


def test_file_size_limit_in_a_real_process(tmp_path):
    """A real failed write (RLIMIT_FSIZE: the kernel refuses to grow the file) through the public API."""
    script = textwrap.dedent(f"""
        import resource, signal, torch
        from apsq.errors import APSQError
        from apsq.train.checkpoint import atomic_save_tensors, read_tensors
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        p = {str(tmp_path / 'checkpoint.safetensors')!r}
        atomic_save_tensors(p, {{"model/w": torch.ones(100)}}, {{"step": 1}})
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        try:
            atomic_save_tensors(p, {{"model/w": torch.ones(100_000)}}, {{"step": 2}})
        except APSQError as exc:
            print("APSQError:", exc)
        print("step", read_tensors(p)[1]["step"])
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert "APSQError: could not write checkpoint" in r.stdout and "previous checkpoint.safetensors is intact" in r.stdout
    assert "step 1" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors"]


def test_killed_writers_leave_no_orphans(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    script = textwrap.dedent(f"""
        import torch
        from apsq.train.checkpoint import atomic_save_tensors
        t = {{"model/w": torch.randn(2_000_000)}}
        i = 0
        while True:
            atomic_save_tensors({str(path)!r}, t, {{"step": i}})
            i += 1
    """)
    orphans = 0
    for k in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script])
        deadline = time.time() + 60
        while not path.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3 + 0.1 * k)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        orphans += len([p for p in tmp_path.iterdir() if ".tmp" in p.name])
    # the next writer removes every temp file of a dead writer; the checkpoint itself is whole
    _, meta = read_tensors(path)
    assert isinstance(meta["step"], int)
    _small_ckpt(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors"], orphans
    # the old naming (.name.tmp<pid>) of earlier versions too
    (tmp_path / f".checkpoint.safetensors.tmp{proc.pid}").write_bytes(b"x")
    assert fileio.remove_dead_temps(path) == [tmp_path / f".checkpoint.safetensors.tmp{proc.pid}"]


def test_remove_orphan_temps_under_lock(tmp_path):
    (tmp_path / ".a.txt.tmp-1-ab").write_bytes(b"x")
    (tmp_path / ".manifest.json.tmp").write_bytes(b"x")
    (tmp_path / "keep.txt").write_bytes(b"x")
    with fileio.FolderLock(tmp_path, "cache folder"):
        removed = fileio.remove_orphan_temps(tmp_path)
    assert sorted(p.name for p in removed) == [".a.txt.tmp-1-ab", ".manifest.json.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("crash", [("qat", 1), ("finetune", 1)])
def test_kill_before_first_checkpoint_no_duplicate_metrics(tmp_path, digits_reference, crash):
    ref_out, ref = digits_reference
    with pytest.raises(Crash):
        _train(DIGITS, tmp_path, on_step=_crash_at(*crash))
    if crash[0] == "finetune":  # nothing saved yet: a fresh start, not a resume
        assert not (tmp_path / "checkpoint.safetensors").exists()
        (tmp_path / "metrics.jsonl").unlink()
        res = _train(DIGITS, tmp_path)
    else:
        res = _train(DIGITS, tmp_path, resume=True)
    got = _metrics(tmp_path / "metrics.jsonl")
    keys = [(r["stage"], r["step"], "accuracy" in r) for r in got]
    assert len(keys) == len(set(keys)), [k for k in keys if keys.count(k) > 1]
    assert got == _metrics(ref_out / "metrics.jsonl")
    assert res["accuracy"] == ref["accuracy"]
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name or p.name == ".apsq.lock"]
