"""``apsq.train.demo_run``: the QAT demo behind ``apsq demo`` (tiny model, stand-in sentences)."""

from __future__ import annotations

from apsq.train import demo_run


def test_demo_run_reports_every_variant_and_caches_fp32(tmp_path, monkeypatch, standin):
    monkeypatch.setenv("APSQ_CACHE", str(tmp_path / "cache"))
    seen = []
    kw = dict(variants=[("w8a8", "none", 1), ("apsq_gs2", "apsq", 2)], finetune_steps=4, qat_steps=2, batch_size=8,
              max_len=16, eval_limit=None, model="bert-tiny", data_path=standin, progress=False, threads=1)
    first = demo_run(on_variant=lambda n, row: seen.append(n), **kw)
    assert seen == ["w8a8", "apsq_gs2"]
    assert set(first["variants"]) == {"w8a8", "apsq_gs2"}
    for row in first["variants"].values():
        assert 0.0 <= row["accuracy"] <= 1.0 and row["seconds"] > 0
    assert first["variants"]["apsq_gs2"]["gs"] == 2 and not first["settings"]["fp32_cached"]
    assert list((tmp_path / "cache" / "demo").glob("fp32-*.safetensors"))
    er = first["energy_reduction"]
    assert set(er["total"]) == {"is", "ws"} and set(er["total"]["is"]) == {"2"}  # the apsq variants' gs
    second = demo_run(**kw)  # reuses the cached fine-tuned model: same numbers
    assert second["settings"]["fp32_cached"]
    assert second["fp32"] == first["fp32"]
    assert {k: v["accuracy"] for k, v in second["variants"].items()} == {
        k: v["accuracy"] for k, v in first["variants"].items()}
