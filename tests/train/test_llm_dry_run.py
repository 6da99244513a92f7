"""Issue 22 item 2: ``apsq llm dry-run`` -- LLaMA-2-7B quantized on the meta device, memory per GPU for
FSDP2 over 1/2/4/8 GPUs, and the energy model's IS/WS report of the same architecture."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from apsq.cli import app


def test_llama2_7b_dry_run_lists_layers_memory_and_energy(tmp_path):
    out = tmp_path / "dry.json"
    r = CliRunner().invoke(app, ["llm", "dry-run", "--gpus", "1,2,4,8", "--json", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["quantized_layers"] == 32 * 9  # q k v o gate up down + QK^T + AV per decoder layer
    assert res["layer_kinds"]["down_proj"] == {"kind": "linear", "k": 11008, "n_out": 4096, "tiles": 344,
                                               "k_tokens": False, "count": 32}
    # QK^T reduces over the head dimension into one column per key; AV over the keys (at most the 4,096
    # positions) into the head dimension (the table said K 4096, N "seq": N was the keys' axis)
    assert res["layer_kinds"]["apsq_qk"] == {"kind": "matmul", "k": 128, "n_out": None, "tiles": 4,
                                             "k_tokens": False, "count": 32}
    assert res["layer_kinds"]["apsq_av"] == {"kind": "matmul", "k": 4096, "n_out": 128, "tiles": 128,
                                             "k_tokens": True, "count": 32}
    assert "keys <= 4096" in r.output
    assert res["skipped"] == ["lm_head"]
    mem = res["memory"]
    assert 6.7e9 < mem["weights"] < 6.8e9  # LLaMA-2-7B: 6.74 B parameters
    assert mem["step_parameters"] > 0
    rows = {r["gpus"]: r for r in mem["per_gpu"]}
    for g in (2, 4, 8):  # every sharded term shrinks as 1/N; the transient unit does not
        assert rows[g]["optimizer_gib"] == pytest.approx(rows[1]["optimizer_gib"] / g, abs=2e-3)
        assert rows[g]["fsdp_transient_gib"] == rows[2]["fsdp_transient_gib"] > 0
    assert rows[1]["total_gib"] > rows[2]["total_gib"] > rows[4]["total_gib"] > rows[8]["total_gib"]
    # bf16: 2 B weights + 2 B grads + 4 B AdamW + 2 B teacher = 10 B per weight on one GPU
    assert rows[1]["total_gib"] == pytest.approx((10 * mem["weights"] + 16 * mem["step_parameters"]) / 2**30, abs=0.01)
    e = res["energy"]["dataflows"]
    assert set(e) == {"is", "ws"} and e["is"]["reduction"] > e["ws"]["reduction"] > 0
    assert "memory per GPU" in r.output and "IS" in r.output
    # the figures are untiled (IS: INT32 PSUMs spill): said so, with the command of the tiled ones
    assert "untiled (the fixed loop orders)" in r.output and "--schedule tiled" in " ".join(r.output.split())


def test_dry_run_bad_input_is_one_line():
    r = CliRunner().invoke(app, ["llm", "dry-run", "--gpus", "0,2", "--no-energy"])
    assert r.exit_code == 2 and "GPU count" in r.output
    r = CliRunner().invoke(app, ["llm", "dry-run", "--dtype", "int8", "--no-energy"])
    assert r.exit_code == 2 and "dtype" in r.output
