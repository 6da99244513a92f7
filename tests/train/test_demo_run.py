"""``apsq.eval.demo.demo_run``: the QAT demo behind ``apsq demo`` (tiny model, stand-in sentences)."""

from __future__ import annotations

import json

from apsq.eval.demo import demo_run
from apsq.eval.demo import interval95


def test_demo_run_reports_every_variant_and_caches_fp32(tmp_path, monkeypatch, standin):
    monkeypatch.setenv("APSQ_CACHE", str(tmp_path / "cache"))
    seen, logs = [], []
    kw = dict(variants=[("w8a8", "none", 1), ("apsq_gs2", "apsq", 2)], finetune_steps=4, qat_steps=2, batch_size=8,
              max_len=16, model="bert-tiny", data_path=standin, progress=False, threads=1, workers=1)
    first = demo_run(on_variant=lambda n, row: seen.append(n), log=logs.append, output=tmp_path / "runs", **kw)
    assert seen == ["w8a8", "apsq_gs2"]
    assert any(m.startswith("first run: fine-tuning bert-tiny") for m in logs)
    assert [m.split(":")[0] for m in logs if m.startswith("variant")] == ["variant 1/2", "variant 2/2"]
    assert set(first["variants"]) == {"w8a8", "apsq_gs2"}
    n = first["eval_examples"]
    assert n > 0 and first["settings"]["eval_limit"] is None  # the whole test split by default
    for row in first["variants"].values():
        assert 0.0 <= row["accuracy"] <= 1.0 and row["seconds"] > 0
        assert row["interval95"] == round(interval95(row["accuracy"], n), 4)
        assert 0.0 <= row["selection_accuracy"] <= 1.0  # the validation split, where gs is chosen
    assert first["selected_gs"] == 2 and first["gs_selected_on"] == "validation"  # the only APSQ variant
    assert first["variants"]["apsq_gs2"]["gs"] == 2 and not first["settings"]["fp32_cached"]
    # the FP32 model is evaluated once (in its fine-tune), not again in each variant's run
    for name in seen:
        recs = [json.loads(line) for line in (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        assert [r.get("source") is not None for r in recs if r["stage"] == "finetune"] == [True]
    assert list((tmp_path / "cache" / "demo").glob("fp32-*.safetensors"))
    er = first["energy_reduction"]
    assert set(er["total"]) == {"is", "ws"} and set(er["total"]["is"]) == {"2"}  # the apsq variants' gs
    # where it ran and the settings that decide float rounding, with the variant processes' threads
    assert first["environment"]["threads"] == 1 and first["environment"]["torch"]
    assert first["machine"]["cpus"] and "ATEN_CPU_CAPABILITY" in first["environment"]
    logs.clear()
    # reuses the cached fine-tuned model; the variants in two processes at once give the same numbers
    second = demo_run(log=logs.append, **{**kw, "workers": 2})
    assert second["settings"]["fp32_cached"] and not any("first run" in m for m in logs)
    assert second["settings"]["workers"] == 2 and any("2 at a time in separate processes" in m for m in logs)
    done = [m for m in logs if m.startswith("variant")]
    assert [m.split(" done: ")[0] for m in done] == ["variant 1/2", "variant 2/2"]
    assert {m.split(" done: ")[1] for m in done} == {"w8a8", "apsq_gs2"}
    assert list(second["variants"]) == ["w8a8", "apsq_gs2"]  # the table keeps the variants' order
    assert second["fp32"] == first["fp32"]
    assert {k: v["accuracy"] for k, v in second["variants"].items()} == {
        k: v["accuracy"] for k, v in first["variants"].items()}
    # another evaluation subset keeps the cached fine-tune; its FP32 accuracy is measured once, then stored
    logs.clear()
    third = demo_run(log=logs.append, **{**kw, "eval_limit": 10})
    assert third["settings"]["fp32_cached"] and third["eval_examples"] == 10
    assert sum("evaluating the FP32 model once" in m for m in logs) == 1
    logs.clear()
    demo_run(log=logs.append, **{**kw, "eval_limit": 10, "variants": [("w8a8", "none", 1)]})
    assert not any("evaluating the FP32 model" in m for m in logs)


def test_plan_workers():
    from apsq.errors import APSQError
    from apsq.eval.demo import plan_workers

    assert plan_workers(6, 2, None)[0] == 2 and plan_workers(6, 2, 3) == (2, 3)
    assert plan_workers(1, 4, 1) == (1, 1)  # never more processes than variants
    w, t = plan_workers(6)
    assert 1 <= w <= 6 and t >= 1
    for bad in ({"workers": 0}, {"threads": 0}):
        try:
            plan_workers(3, **bad)
        except APSQError as e:
            assert next(iter(bad)) in str(e)
        else:
            raise AssertionError(bad)


def test_best_apsq_is_chosen_on_validation_and_says_so():
    from apsq.eval.demo_report import best_apsq

    rows = {"w8a8": {"mode": "none", "gs": 1, "accuracy": 0.99, "selection_accuracy": 0.99},
            "apsq_gs1": {"mode": "apsq", "gs": 1, "accuracy": 0.80, "selection_accuracy": 0.85},
            "apsq_gs2": {"mode": "apsq", "gs": 2, "accuracy": 0.90, "selection_accuracy": 0.84},
            "apsq_gs3": {"mode": "apsq", "gs": 3, "accuracy": 0.70, "selection_accuracy": 0.85}}
    # the best validation accuracy, ties to the smaller gs; never the best test accuracy (gs = 2)
    assert best_apsq({"variants": rows})[::2] == ("apsq_gs1", "validation")
    rows["apsq_gs3"]["selection_accuracy"] = None  # a row without validation: fall back, and say so
    assert best_apsq({"variants": rows})[::2] == ("apsq_gs2", "test")
    assert best_apsq({"variants": {"w8a8": rows["w8a8"]}}) is None
