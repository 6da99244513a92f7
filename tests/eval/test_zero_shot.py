"""``apsq eval zero-shot``: the paper's seven tasks through lm-eval on local files in each task's format,
the calibration set, the summary arithmetic and the refusals."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner
from zero_shot_fixtures import save_tiny_llama, task_rows, write_task_files

from apsq.errors import APSQError
from apsq.eval.zero_shot_tasks import PAPER_TASKS, TASK_FIELDS, write_local_tasks


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("lm") / "tiny")


def test_fixture_rows_carry_each_tasks_hub_fields():
    for t in PAPER_TASKS:
        for row in task_rows(t, 3):
            assert set(TASK_FIELDS[t].fields) <= set(row)


def test_local_task_yaml_keeps_lm_evals_definition(tmp_path):
    pytest.importorskip("lm_eval")
    write_task_files(tmp_path / "data", PAPER_TASKS, n=4)
    rows = write_local_tasks(tmp_path / "data", tmp_path / "tasks", PAPER_TASKS)
    assert rows == dict.fromkeys(PAPER_TASKS, 4)
    text = (tmp_path / "tasks" / "arc_challenge.yaml").read_text()
    assert "arc/arc_challenge.yaml" in text and "test_split: test" in text and "training_split: null" in text
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(tmp_path / "tasks" / "hellaswag.yaml", resolve_func=True)  # lm-eval's prompt, our data
    assert cfg["dataset_path"] == "json" and cfg["doc_to_text"] == "{{query}}" and callable(cfg["process_docs"])


def test_local_task_files_refused_before_anything_is_written(tmp_path):
    pytest.importorskip("lm_eval")
    data = write_task_files(tmp_path / "data", ["piqa"], n=2)
    row = task_rows("piqa", 1)[0]
    del row["sol2"]
    (data / "piqa.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(APSQError, match=r"piqa row needs the fields .*missing \['sol2'\]"):
        write_local_tasks(data, tmp_path / "tasks", ["piqa"])
    with pytest.raises(APSQError, match="boolq.jsonl does not exist"):
        write_local_tasks(data, tmp_path / "tasks", ["boolq"])
    with pytest.raises(APSQError, match="local task files are supported for boolq, piqa"):
        write_local_tasks(data, tmp_path / "tasks", ["mmlu"])
    assert not (tmp_path / "tasks").exists()


def test_calibration_windows_are_seeded_bos_first_and_from_the_source(tiny_llama, tmp_path):
    from transformers import AutoTokenizer

    from apsq.eval.calibration import CalibrationSet, calibration_batches

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    text = tmp_path / "calib.txt"
    text.write_text(" ".join(f"river stone {w}" for w in ("bird", "sun", "moon", "tree") * 40))
    spec = CalibrationSet(source=str(text), samples=5, seq_len=20, seed=3)
    a, b = calibration_batches(tok, spec, 16), calibration_batches(tok, spec, 16)
    assert len(a) == 5 and all(x["input_ids"].shape == (1, 16) for x in a)  # capped at the model's positions
    assert all(x["input_ids"][0, 0] == tok.bos_token_id for x in a)
    assert all((x["input_ids"] == y["input_ids"]).all() for x, y in zip(a, b))
    other = calibration_batches(tok, CalibrationSet(source=str(text), samples=5, seq_len=20, seed=4), 16)
    assert any((x["input_ids"] != y["input_ids"]).any() for x, y in zip(a, other))
    ids = tok(text.read_text(), add_special_tokens=False)["input_ids"]
    w = a[0]["input_ids"][0, 1:].tolist()
    assert any(ids[i:i + len(w)] == w for i in range(len(ids)))  # a window of the source's tokens
    with pytest.raises(APSQError, match="calibration.source must be wikitext2, corpus or an existing text file"):
        CalibrationSet(source="no-such-file.txt")


def test_summary_average_drop_and_stderr_by_hand():
    from apsq.eval.zero_shot import summarize

    def v(a, b):
        return {"tasks": {"t1": {"metric": "acc", "acc": a, "acc_stderr": 0.03},
                          "t2": {"metric": "acc_norm", "acc_norm": b, "acc_norm_stderr": 0.04}}}

    s = summarize({"fp": v(0.70, 0.50), "apsq_gs1": v(0.66, 0.50), "apsq_gs2": v(0.70, 0.48)}, ["t1", "t2"])
    pv = s["per_variant"]
    assert pv["fp"]["average"] == pytest.approx(0.60)
    assert pv["fp"]["average_stderr"] == pytest.approx(0.025)  # sqrt(0.03^2 + 0.04^2) / 2
    assert pv["apsq_gs1"]["drop_pp"] == pytest.approx(2.0) and pv["apsq_gs2"]["drop_pp"] == pytest.approx(1.0)
    assert pv["apsq_gs2"]["drop_stderr_pp"] == pytest.approx(100 * math.sqrt(2) * 0.025)
    assert s["best_gs"] == 2 and "selected_gs" not in s  # no selection scores: the best on the evaluated splits
    # scored on the tasks' training splits too: the gs is chosen there, whatever the evaluated splits say
    runs = {"fp": v(0.70, 0.50), "apsq_gs1": v(0.66, 0.50), "apsq_gs2": v(0.70, 0.48), "apsq_gs3": v(0.60, 0.40)}
    for name, (a, b) in {"apsq_gs1": (0.62, 0.60), "apsq_gs2": (0.60, 0.58), "apsq_gs3": (0.64, 0.58)}.items():
        runs[name]["selection"] = v(a, b)["tasks"]
    s = summarize(runs, ["t1", "t2"])
    assert s["per_variant"]["apsq_gs3"]["selection_average"] == pytest.approx(0.61)
    assert s["selected_gs"] == s["best_gs"] == 1 and s["gs_selected_on"] == "train split"  # 0.61 tie: smaller gs
    assert s["best_gs_on_reported"] == 2


def test_selection_tasks_score_each_tasks_training_split(tmp_path):
    pytest.importorskip("lm_eval")
    from apsq.eval.zero_shot_tasks import selection_task, write_selection_tasks

    assert write_selection_tasks(tmp_path / "hub", ["piqa", "arc_challenge"]) == {"piqa": None, "arc_challenge": None}
    text = (tmp_path / "hub" / "arc_challenge_selection.yaml").read_text()
    assert "arc/arc_challenge.yaml" in text and "task: arc_challenge_selection" in text
    assert "test_split: train" in text and "validation_split: null" in text and "dataset_path" not in text
    data = write_task_files(tmp_path / "data", ["piqa"], n=3)
    (data / "piqa.selection.jsonl").write_text("".join(json.dumps(r) + "\n" for r in task_rows("piqa", 5, seed=7)))
    assert write_selection_tasks(tmp_path / "local", ["piqa"], data) == {"piqa": 5}
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(tmp_path / "local" / f"{selection_task('piqa')}.yaml", resolve_func=True)
    assert cfg["dataset_path"] == "json" and cfg["test_split"] == "train" and cfg["task"] == "piqa_selection"
    assert cfg["dataset_kwargs"]["data_files"]["train"].endswith("piqa.selection.jsonl")
    with pytest.raises(APSQError, match=r"winogrande.selection.jsonl does not exist .*--selection-items 0"):
        write_selection_tasks(tmp_path / "x", ["winogrande"], data)
    with pytest.raises(APSQError, match="a selection split is defined for boolq, piqa"):
        write_selection_tasks(tmp_path / "x", ["mmlu"])
    assert not (tmp_path / "x").exists()


def test_bad_zero_shot_config_names_the_key(tmp_path):
    from apsq.eval.zero_shot import load_zero_shot_config

    with pytest.raises(APSQError, match=r"variants must be a non-empty list of fp, w8a8, psq, apsq"):
        load_zero_shot_config(None, {"model": "x", "variants": ["fp", "int4"]})
    with pytest.raises(APSQError, match=r"apsq: \['gs'\] are set per variant"):
        load_zero_shot_config(None, {"model": "x", "apsq": {"gs": 2}})
    with pytest.raises(APSQError, match=r"apsq: psum_bits must be in \[2, 16\], got 40"):  # a training config's rule
        load_zero_shot_config(None, {"model": "x", "apsq": {"psum_bits": 40}})
    with pytest.raises(APSQError, match="unknown key 'taks'"):
        load_zero_shot_config(None, {"model": "x", "taks": ["piqa"]})
    cfg = load_zero_shot_config("configs/paper/llama2_7b_zero_shot.yaml", {"calibration": {"samples": 4}})
    assert cfg.tasks == PAPER_TASKS and cfg.calibration.samples == 4 and cfg.calibration.seq_len == 512
    assert list(cfg.variant_configs()) == ["fp", "w8a8", "psq", "apsq_gs1", "apsq_gs2", "apsq_gs3", "apsq_gs4"]


@pytest.mark.slow
def test_zero_shot_command_on_local_tasks_with_the_small_llama(tiny_llama, tmp_path):
    pytest.importorskip("lm_eval")
    from apsq.cli import app

    n = 6
    data = write_task_files(tmp_path / "data", PAPER_TASKS, n=n)
    for t in PAPER_TASKS:  # the training-split items the gs is chosen on (3 of them are scored)
        (data / f"{t}.selection.jsonl").write_text("".join(json.dumps(r) + "\n" for r in task_rows(t, 5, seed=3)))
    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(" ".join(task_rows("piqa", 40, seed=9)[i]["goal"] for i in range(40)) for _ in range(3)))
    out = tmp_path / "zs"
    r = CliRunner().invoke(app, ["eval", "zero-shot", "--model", str(tiny_llama), "--local-data", str(data),
                                 "--variants", "fp,w8a8,apsq", "--gs", "2", "--calibration", str(calib),
                                 "--selection-items", "3",
                                 "--calib-samples", "4", "--calib-seq-len", "32", "--device", "cpu", "--output", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "zero_shot.json").read_text())
    assert list(res["variants"]) == ["fp", "w8a8", "apsq_gs2"]
    assert res["tasks"] == list(PAPER_TASKS) and res["dtype"] == "float32" and res["calibration"]["samples"] == 4
    for name, v in res["variants"].items():
        vals = []
        for t in PAPER_TASKS:
            s = v["tasks"][t]
            p = s[s["metric"]]
            assert s["n"] == n and abs(p * n - round(p * n)) < 1e-9  # a fraction of the n items
            assert s[f"{s['metric']}_stderr"] == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)))
            vals.append(p)
        assert v["average"] == pytest.approx(sum(vals) / len(vals))
        if name != "fp":
            assert v["drop_pp"] == pytest.approx(100 * (res["variants"]["fp"]["average"] - v["average"]))
            assert v["config"]["mode"] == ("none" if name == "w8a8" else "apsq")
    assert res["metrics"]["hellaswag"] == "acc_norm" and res["metrics"]["boolq"] == "acc"
    er = res["energy_reduction"]
    assert set(er["total"]) == {"is", "ws"} and set(er["total"]["is"]) == {"2"}
    assert res["best_gs"] == 2 and "best gs = 2 (chosen on its training splits)" in r.output
    assert res["selected_gs"] == 2 and res["gs_selected_on"] == "train split" and res["selection_items"] == 3
    for v in res["variants"].values():  # every variant scored on 3 training items of each task too
        assert all(v["selection"][t]["n"] == 3 for t in PAPER_TASKS)
        sel = [v["selection"][t][v["selection"][t]["metric"]] for t in PAPER_TASKS]
        assert v["selection_average"] == pytest.approx(sum(sel) / len(sel))
    table = (out / "zero_shot.md").read_text()
    assert "**APSQ INT8 gs=2**" in table and "FP32" in table and "train-split avg" in table and (out / "zero_shot.png").stat().st_size > 10_000


def test_zero_shot_refuses_missing_local_files_before_loading(tmp_path):
    pytest.importorskip("lm_eval")
    from apsq.cli import app

    r = CliRunner().invoke(app, ["eval", "zero-shot", "--model", str(tmp_path / "nothing"), "--local-data",
                                 str(tmp_path), "--tasks", "piqa", "--output", str(tmp_path / "o")])
    assert r.exit_code == 1 and "piqa.jsonl does not exist" in r.output


def test_sentence_standin_rows_are_in_each_tasks_format_and_hold_the_truth():
    from apsq.eval.zero_shot_tasks import STANDIN_TASKS, sentence_task_rows

    sents = [f"the {a} film about a {b} was {c} and {d} to the very end" for a in ("new", "old", "long", "short")
             for b in ("river", "stone", "forest") for c in ("moving", "boring", "clever") for d in ("funny", "tense")]
    for t in STANDIN_TASKS:
        rows = sentence_task_rows(sents, t, 10, seed=1)
        assert len(rows) == 10 and all(set(TASK_FIELDS[t].fields) <= set(r) for r in rows)
        assert rows == sentence_task_rows(sents, t, 10, seed=1)  # seeded
    for r in sentence_task_rows(sents, "piqa", 10):
        truth = (r["sol1"], r["sol2"])[r["label"]]
        assert f"{r['goal']} {truth}" in sents
    for r in sentence_task_rows(sents, "winogrande", 10):
        truth = r["option1"] if r["answer"] == "1" else r["option2"]
        assert r["sentence"].replace("_", truth) in sents and len(r["sentence"].split("_")[1].split()) >= 2
    for r in sentence_task_rows(sents, "arc_easy", 10):
        truth = r["choices"]["text"][r["choices"]["label"].index(r["answerKey"])]
        assert f"{r['question']} {truth}" in sents
    with pytest.raises(APSQError, match="task must be one of hellaswag, piqa, winogrande, arc_easy"):
        sentence_task_rows(sents, "boolq", 2)


@pytest.mark.slow
def test_a_quantized_checkpoint_is_evaluated_as_loaded_never_requantized(tiny_llama, tmp_path):
    pytest.importorskip("lm_eval")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import apsq
    import apsq.integrations.transformers  # noqa: F401
    from apsq.eval.lm_eval_adapter import quantized_causal_lm
    from apsq.eval.zero_shot import load_zero_shot_config, run_zero_shot

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    apsq.quantize_(model, apsq.APSQConfig(mode="apsq", gs=2, tile=32, exclude=("lm_head",)))
    apsq.calibrate(model, [dict(tok("the cat sat under the big tree", return_tensors="pt"))])
    model.save_pretrained(tmp_path / "qat")
    tok.save_pretrained(tmp_path / "qat")
    with pytest.raises(APSQError, match="already APSQ-quantized"):
        quantized_causal_lm(str(tmp_path / "qat"), apsq.APSQConfig(mode="apsq", gs=2, tile=32), device="cpu")
    data = write_task_files(tmp_path / "data", ["piqa", "winogrande"], n=4)
    cfg = load_zero_shot_config(None, {"model": str(tmp_path / "qat"), "tasks": ["piqa", "winogrande"],
                                       "local_data": str(data), "device": "cpu", "gs": [2]})
    res = run_zero_shot(cfg, tmp_path / "out", progress=False)
    assert list(res["variants"]) == ["loaded"] and res["calibration"] is None
    loaded, _ = quantized_causal_lm(str(tmp_path / "qat"), None, device="cpu")
    ids = tok("the dog ran over the red house", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(loaded(**ids).logits, model(**ids).logits)  # the trained steps, bit for bit
