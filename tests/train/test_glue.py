"""GLUE complete: every task trains (STS-B as a regression), each with its official metric."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from glue_fixtures import write_glue

from apsq.errors import APSQError
from apsq.train.glue import GLUE_METRICS, glue_average, glue_metrics


def test_metrics_by_hand():
    y = [1, 1, 1, 0, 0, 0, 1, 0]
    p = [1, 1, 0, 0, 0, 1, 1, 0]  # tp 3, fn 1, fp 1, tn 3
    m = glue_metrics("mrpc", p, y)
    assert m["accuracy"] == 0.75 and m["f1"] == pytest.approx(0.75) and m["score"] == pytest.approx(0.75)
    mcc = (3 * 3 - 1 * 1) / math.sqrt(4 * 4 * 4 * 4)  # (tp tn - fp fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn))
    assert glue_metrics("cola", p, y) == {"matthews": pytest.approx(mcc), "score": pytest.approx(mcc)}
    s = glue_metrics("stsb", [0.5, 1.0, 3.0, 2.0], [1.0, 2.0, 3.0, 3.5])
    assert s["spearman"] == pytest.approx(0.8)  # ranks 1,2,4,3 vs 1,2,3,4: 1 - 6 * 2 / (4 * 15)
    x, t = np.array([0.5, 1.0, 3.0, 2.0]), np.array([1.0, 2.0, 3.0, 3.5])
    r = ((x - x.mean()) * (t - t.mean())).sum() / math.sqrt(((x - x.mean()) ** 2).sum() * ((t - t.mean()) ** 2).sum())
    assert s["pearson"] == pytest.approx(r) and s["score"] == pytest.approx((r + 0.8) / 2)
    assert glue_metrics("stsb", [2.0] * 4, [1.0, 2.0, 4.0, 3.5])["pearson"] == 0.0  # constant: no correlation
    assert glue_average({"cola": 0.2, "stsb": 0.8}) == pytest.approx(0.5)
    assert set(GLUE_METRICS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    with pytest.raises(APSQError, match="task must be one of"):
        glue_metrics("sst3", [1], [1])
    with pytest.raises(APSQError, match="as many predictions as labels"):
        glue_metrics("sst2", [1, 0], [1])


def test_every_glue_task_is_a_config_and_stsb_needs_one_output():
    from apsq.data.registry import dataset_names
    from apsq.train.config import parse_config

    assert {f"glue-{t}" for t in GLUE_METRICS} <= set(dataset_names())
    parse_config({"model": {"name": "minilm", "num_labels": 1}, "data": {"name": "glue-stsb"}})
    with pytest.raises(APSQError, match=r"'glue-stsb' is a regression \(one output\); set model.num_labels: 1"):
        parse_config({"model": {"name": "minilm", "num_labels": 2}, "data": {"name": "glue-stsb"}})


def _cfg(task, train, val, labels, **over):
    cfg = {"seed": 0, "model": {"name": "minilm", "num_labels": labels, "max_len": 24},
           "data": {"name": f"glue-{task}", "path": str(train), "eval_path": str(val), "eval_split": "validation"},
           "finetune": {"steps": 6, "batch_size": 8, "lr": 1e-4},
           "apsq": {"mode": "apsq", "gs": 2, "tile": 32}, "qat": {"steps": 2, "batch_size": 8, "calib_batches": 1},
           "save_every": 100, "threads": 1}
    cfg.update(over)
    return cfg


def test_gs_is_chosen_on_rows_held_out_of_glue_train(tmp_path):
    """data.validation_from_train: the hash split's validation bucket of GLUE train, never trained on, is the
    selection split; GLUE's validation set stays the reported one (issue 24 item 5a)."""
    from apsq.data.hub import load_glue
    from apsq.data.splits import split_of
    from apsq.data.text import TokenizedText
    from apsq.train.config import parse_config
    from apsq.train.models import load_tokenizer
    from apsq.train.tasks import build_task

    tr, va = write_glue(tmp_path, "rte", n_train=100, n_val=20)
    cfg = parse_config(_cfg("rte", tr, va, 2, data={"name": "glue-rte", "path": str(tr), "eval_path": str(va),
                                                    "eval_split": "validation", "validation_from_train": True},
                            eval={"selection_split": "validation"}))
    tok = load_tokenizer(cfg)
    task = build_task(cfg, tok)
    rows = load_glue("rte", "train", data_files=str(tr))
    held = [ex for ex in rows if split_of("glue-rte", ex.id) == "validation"]
    kept = [ex for ex in rows if split_of("glue-rte", ex.id) != "validation"]
    assert 5 <= len(held) <= 20  # about 10 % of 100
    # the held-out rows are the selection split, in order; training has exactly the others
    assert task.select.input_ids == TokenizedText(held, tok, cfg.model.max_len).input_ids
    assert task.train.input_ids == TokenizedText(kept, tok, cfg.model.max_len).input_ids
    assert len(task.eval) == 20  # GLUE's validation set, reported once
    # without the hold-out, training keeps every row; choosing on "test" reproduces a choice on the reported split
    plain = build_task(parse_config(_cfg("rte", tr, va, 2, eval={"selection_split": "test"})), load_tokenizer(cfg))
    assert len(plain.train) == len(rows) and plain.select is plain.eval
    with pytest.raises(APSQError, match=r"selection_split: validation with data 'glue-rte' needs "
                                        r"data.validation_from_train: true"):
        parse_config(_cfg("rte", tr, va, 2, eval={"selection_split": "validation"}))
    with pytest.raises(APSQError, match=r"data.validation_from_train is for glue-<task> data"):
        parse_config({"model": {"name": "minilm"}, "data": {"name": "rt-sentences", "validation_from_train": True}})
    few, _ = write_glue(tmp_path / "few", "rte", n_train=4, n_val=4)  # idx 0-3: none in the held-out bucket
    small = parse_config(_cfg("rte", few, va, 2, data={"name": "glue-rte", "path": str(few), "eval_path": str(va),
                                                       "validation_from_train": True},
                              eval={"selection_split": "validation"}))
    with pytest.raises(APSQError, match=r"none of the 4 training rows of 'glue-rte' falls in the held-out 10 %"):
        build_task(small, load_tokenizer(cfg))


@pytest.mark.slow
def test_stsb_regression_trains_and_reports_pearson_spearman(tmp_path):
    from apsq.data.hub import load_glue
    from apsq.train.config import parse_config
    from apsq.train.loop import train

    train_f, val_f = write_glue(tmp_path / "data", "stsb")
    assert isinstance(load_glue("stsb", "train", data_files=str(train_f))[0].label, float)
    res = train(parse_config(_cfg("stsb", train_f, val_f, 1)), tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["glue_task"] == "stsb" and set(saved["glue"]) == {"pearson", "spearman", "score"}
    assert saved["accuracy"] == pytest.approx(saved["glue"]["score"])  # the score stands in the accuracy field
    assert saved["fp32_accuracy"] == pytest.approx(saved["fp32_glue"]["score"])
    assert -1 <= saved["glue"]["pearson"] <= 1 and saved["eval_examples"] == 24
    assert res["model"].classifier.out_features == 1
    losses = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in losses if "loss" in r)
    # the logged FP32 evaluation carries the metrics the result reports
    fp = next(r for r in losses if r.get("stage") == "finetune" and "glue" in r)
    assert fp["glue"] == saved["fp32_glue"]


@pytest.mark.slow
def test_mrpc_reports_f1_and_accuracy_and_qat_reuses_the_fp32_metrics(tmp_path):
    from apsq.train.config import parse_config
    from apsq.train.loop import train

    for task, keys in (("mrpc", {"f1", "accuracy", "score"}),):
        train_f, val_f = write_glue(tmp_path / "data", task)
        out = tmp_path / task
        cfg = _cfg(task, train_f, val_f, 2, apsq=None)
        train(parse_config(cfg), out / "fp32", progress=False)
        fp = json.loads((out / "fp32" / "result.json").read_text())
        assert set(fp["fp32_glue"]) == keys and "glue" not in fp
        q = _cfg(task, train_f, val_f, 2, finetune={"steps": 0, "init": str(out / "fp32" / "fp32.safetensors")})
        res = json.loads(json.dumps({k: v for k, v in train(parse_config(q), out / "q", progress=False).items()
                                     if k != "model"}))
        assert res["fp32_glue"] == fp["fp32_glue"]  # read from the FP32 checkpoint, not re-evaluated
        assert set(res["glue"]) == keys and res["accuracy"] == pytest.approx(res["glue"]["score"])


@pytest.mark.slow
def test_glue_study_runs_every_variant_and_averages(tmp_path):
    import yaml

    from apsq.cli import app
    from typer.testing import CliRunner

    files = {}
    for t in ("stsb", "rte"):
        tr, va = write_glue(tmp_path / "data", t, n_train=40, n_val=8)  # 4-5 of the 40 held out (by idx)
        files[t] = {"train": str(tr), "validation": str(va)}
    base = {k: v for k, v in _cfg("rte", "x", "y", 2).items() if k != "data"}
    base.update(data={"validation_from_train": True}, eval={"selection_split": "validation"})
    base.update(finetune={"steps": 2, "batch_size": 8, "lr": 1e-4}, qat={"steps": 1, "batch_size": 8, "calib_batches": 1})
    base["model"] = {"name": "minilm", "max_len": 16}
    study = {"base": base, "tasks": ["stsb", "rte"], "data_files": files, "gs": [2], "output": str(tmp_path / "g")}
    (tmp_path / "glue.yaml").write_text(yaml.safe_dump(study))
    r = CliRunner().invoke(app, ["paper", "glue", "--config", str(tmp_path / "glue.yaml")])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "g" / "glue.json").read_text())
    assert res["missing"] == [] and set(res["per_task"]) == {"stsb", "rte"}
    assert set(res["per_task"]["stsb"]) == {"fp32", "w8a8", "psq", "apsq_gs2"}
    for v, a in res["glue_average"].items():
        scores = [res["per_task"][t][v]["score"] for t in ("stsb", "rte")]
        assert a["average"] == pytest.approx(sum(scores) / 2)
        if v != "fp32":
            assert a["drop_pp"] == pytest.approx(100 * (res["glue_average"]["fp32"]["average"] - a["average"]))
    assert set(res["per_task"]["stsb"]["apsq_gs2"]) == {"pearson", "spearman", "score"}
    md = (tmp_path / "g" / "glue.md").read_text()
    assert "GLUE avg" in md and res["best_gs"] == 2
    # gs chosen on the rows held out of GLUE train, which apsq paper table1 reads
    assert res["selected_gs"] == 2 and res["gs_selected_on"] == "held-out train rows" and "held-out train rows" in md
    for v in ("w8a8", "psq", "apsq_gs2"):
        held = [json.loads((tmp_path / "g" / t / v / "result.json").read_text())["selection_accuracy"]
                for t in ("stsb", "rte")]
        assert res["selection_average"][v] == pytest.approx(sum(held) / 2)
    # the task's sweep.json prices the traced MiniLM beside its scores
    assert "total" in json.loads((tmp_path / "g" / "rte" / "sweep.json").read_text())["energy_reduction"]


def test_glue_study_config_refused_with_the_key(tmp_path):
    from apsq.eval.glue_study import load_glue_study

    (tmp_path / "a.yaml").write_text("base: {model: {name: minilm}}\ntasks: [cola, sts]\n")
    with pytest.raises(APSQError, match=r"tasks: tasks must be GLUE tasks"):
        load_glue_study(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("base: {model: {name: minilm}}\ntasks: [cola]\nper_task: {rte: {}}\n")
    with pytest.raises(APSQError, match=r"per_task / data_files name tasks not in tasks: \['rte'\]"):
        load_glue_study(tmp_path / "b.yaml")
    s = load_glue_study("configs/paper/bert_base_glue.yaml")
    from apsq.eval.glue_study import task_configs

    c = task_configs(s)
    assert c["stsb"].model.num_labels == 1 and c["mnli"].model.num_labels == 3 and c["qqp"].finetune.steps == 34111


def test_one_glue_file_without_eval_path_is_refused_before_training(tmp_path):
    """data.path alone used to serve GLUE's training rows and its reported validation split alike (the score
    was on the rows it trained on); it is refused before anything is written, naming data.eval_path, and
    data.eval_split: train still scores the training rows when asked for."""
    from apsq.train.config import parse_config
    from apsq.train.loop import train
    from apsq.train.tasks import build_task

    tr, _ = write_glue(tmp_path / "data", "rte", n_train=8, n_val=4)
    cfg = _cfg("rte", tr, tr, 2)
    cfg["data"] = {"name": "glue-rte", "path": str(tr)}
    with pytest.raises(APSQError, match="without data.eval_path.*data.eval_split: train"):
        train(parse_config(cfg), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()
    cfg["data"]["eval_split"] = "train"
    from apsq.train.models import load_tokenizer

    task = build_task(parse_config(cfg), load_tokenizer(parse_config(cfg)))
    assert len(task.eval) == 8
