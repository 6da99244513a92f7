"""Data loaders: the rt-sentences parser, fetch path and split; digits; GLUE / ADE20K stand-ins."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from collections import Counter

import pytest

from apsq.data import rt_sentences as rt
from apsq.data.digits import load_digits_split
from apsq.data.splits import SPLITS, split_of
from apsq.errors import APSQError


def test_split_is_fixed_and_80_10_10():
    # golden values: the split must never change between versions
    assert [split_of("rt-sentences", str(i)) for i in range(1, 13)] == [
        "validation", "train", "train", "train", "train", "train", "train", "test", "train", "train", "train",
        "validation"]
    counts = Counter(split_of("rt-sentences", str(i)) for i in range(20000))
    assert abs(counts["train"] / 20000 - 0.8) < 0.01
    assert abs(counts["validation"] / 20000 - 0.1) < 0.01
    assert abs(counts["test"] / 20000 - 0.1) < 0.01
    # depends on the dataset name too
    assert [split_of("a", str(i)) for i in range(50)] != [split_of("b", str(i)) for i in range(50)]


def test_parse_sign_labels_and_drop_zero(standin):
    rows = rt.parse_ground_truth(standin)
    raw = [line.split("\t") for line in standin.read_text().splitlines()]
    nonzero = [r for r in raw if float(r[1]) != 0.0]
    assert len(rows) == len(nonzero) < len(raw)
    for e, r in zip(rows, nonzero):
        assert e.id == r[0] and e.label == int(float(r[1]) > 0) and e.text == r[2].strip()


def test_load_splits_partition(standin):
    parts = {s: rt.load_rt_sentences(s, path=standin) for s in SPLITS}
    ids = [e.id for s in SPLITS for e in parts[s]]
    assert sorted(ids) == sorted(e.id for e in rt.load_rt_sentences(None, path=standin))
    assert len(set(ids)) == len(ids)
    for s in SPLITS:
        assert all(split_of("rt-sentences", e.id) == s for e in parts[s])


def test_bad_line_and_split_errors(tmp_path, standin):
    bad = tmp_path / "bad.txt"
    bad.write_text("1\tnot-a-number\thello\n")
    with pytest.raises(APSQError, match="not a number"):
        rt.parse_ground_truth(bad)
    with pytest.raises(APSQError, match="split"):
        rt.load_rt_sentences("dev", path=standin)


def _fake_sdist(path, movies: bytes):
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as t:
        for fname in rt.CORPORA.values():
            data = movies if fname.startswith("movie") else b"1\t1.0\tok\n"
            info = tarfile.TarInfo(f"hutto_ICWSM_2014/{fname}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    blob = inner.getvalue()
    with tarfile.open(path, "w:gz") as t:
        info = tarfile.TarInfo(f"vaderSentiment-3.3.2/{rt._INNER}")
        info.size = len(blob)
        t.addfile(info, io.BytesIO(blob))


def test_fetch_extracts_into_cache(tmp_path, monkeypatch, standin):
    monkeypatch.setenv("APSQ_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        _fake_sdist(f"{dest}/vaderSentiment-3.3.2.tar.gz", standin.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(rt.subprocess, "run", fake_run)
    rows = rt.load_rt_sentences("train")  # fetched automatically
    assert calls and calls[0][1:4] == ["-m", "pip", "download"] and rt.RT_SOURCE in calls[0]
    assert "--no-binary" in calls[0]
    assert rows == rt.load_rt_sentences("train", path=standin)
    manifest = json.loads((tmp_path / "cache" / "vader-3.3.2" / "manifest.json").read_text())
    assert manifest["source"] == rt.RT_SOURCE and len(manifest["files"]) == 4
    rt.load_rt_sentences("test")
    assert len(calls) == 1  # cached: no second download


def test_no_cache_no_network_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("APSQ_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(rt.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution"))
    with pytest.raises(APSQError, match="apsq data fetch rt-sentences"):
        rt.load_rt_sentences("train")
    with pytest.raises(APSQError, match="apsq data fetch rt-sentences"):
        rt.load_rt_sentences("train", fetch=False)


def test_digits_split():
    sizes = {s: load_digits_split(s)[0].shape[0] for s in SPLITS}
    assert sum(sizes.values()) == 1797 and sizes["train"] > 8 * sizes["test"] / 2
    x, y = load_digits_split("test")
    assert x.shape[1:] == (1, 8, 8) and float(x.min()) >= 0 and float(x.max()) <= 1 and set(y.tolist()) <= set(range(10))


def test_glue_and_ade20k_standins(tmp_path):
    pytest.importorskip("datasets")
    from apsq.data.hub import load_ade20k, load_glue

    f = tmp_path / "mrpc.jsonl"
    f.write_text("\n".join(json.dumps({"sentence1": f"a{i}", "sentence2": f"b{i}", "label": i % 2, "idx": i})
                           for i in range(5)))
    rows = load_glue("mrpc", "train", data_files=str(f))
    assert [(r.text, r.text_b, r.label, r.id) for r in rows[:2]] == [("a0", "b0", 0, "0"), ("a1", "b1", 1, "1")]
    with pytest.raises(APSQError, match="task"):
        load_glue("sst3", "train", data_files=str(f))
    with pytest.raises(APSQError, match="sentence"):
        load_glue("sst2", "train", data_files=str(f))
    g = tmp_path / "ade.jsonl"
    img = [[[i, j, 0] for j in range(4)] for i in range(3)]
    ann = [[(i + j) % 151 for j in range(4)] for i in range(3)]
    g.write_text(json.dumps({"image": img, "annotation": ann}))
    (row,) = load_ade20k("validation", data_files=str(g))
    assert row["image"].shape == (3, 4, 3) and row["annotation"].tolist() == ann


def test_fetch_cli(tmp_path, monkeypatch, standin):
    from typer.testing import CliRunner

    from apsq.cli import app

    monkeypatch.setenv("APSQ_CACHE", str(tmp_path / "c"))
    r = CliRunner().invoke(app, ["data", "fetch", "imagenet"])
    assert r.exit_code == 2 and "rt-sentences" in r.output
    monkeypatch.setattr(rt.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "ERROR: network is unreachable"))
    r = CliRunner().invoke(app, ["data", "fetch", "rt-sentences"])
    assert r.exit_code == 1 and "network is unreachable" in r.output

    def fake_run(cmd, **kw):
        _fake_sdist(f"{cmd[cmd.index('-d') + 1]}/vaderSentiment-3.3.2.tar.gz", standin.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(rt.subprocess, "run", fake_run)
    r = CliRunner().invoke(app, ["data", "fetch", "rt-sentences"])
    assert r.exit_code == 0 and "train" in r.output
