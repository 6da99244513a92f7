"""Golden figures of the ZigZag agreement (results/energy_zigzag/agreement.json, zigzag-dse 3.9.1).

WS on ``zigzag-tpu-like`` (ZigZag's tpu_like), IS on its input-stationary twin ``zigzag-tpu-like-is``
(issue 23 item 5); IS on ``zigzag-tpu-like`` itself (a WS machine: no weight SRAM) is kept as the
``ws-machine`` record. Fixed IS/WS orders (untiled), INT32 -> INT8 stored PSUMs, gs = 1. The ZigZag
numbers below were measured by ``results/energy_zigzag/run_agreement.py``; apsq's model must stay
within ±5 pp of them under each spill rule on these layers, and within 1.5 pp (2.5 pp for the IS
machine's Segformer-B0 fuse layer) under ``spill="zigzag"`` (ZigZag's counting conventions; the rest is
ZigZag's 4 accumulator-register accesses per MAC against apsq's 2). Runs without ZigZag.
"""

import json
from pathlib import Path

import pytest

from apsq.hw.accelerator import load_accelerator
from apsq.hw.energy import compare
from apsq.hw.workloads import Layer, Workload

RESULTS = Path(__file__).resolve().parents[2] / "results" / "energy_zigzag" / "agreement.json"

# (accelerator, dataflow, m, k, n, count): ZigZag's total-energy reduction
ZIGZAG = {
    ("zigzag-tpu-like", "ws", 128, 768, 768, 1): 0.18511289870673375,  # BERT-Base query
    ("zigzag-tpu-like", "ws", 128, 64, 128, 12): 0.08272907650792338,  # BERT-Base QK^T
    ("zigzag-tpu-like-is", "is", 128, 768, 768, 1): 0.18413051391124746,
    ("zigzag-tpu-like-is", "is", 128, 64, 128, 12): 0.08272907650792338,
    ("zigzag-tpu-like", "ws", 16384, 1024, 256, 1): 0.8778236415353465,  # Segformer-B0 linear_fuse (INT32 spills)
    ("zigzag-tpu-like-is", "is", 16384, 1024, 256, 1): 0.2674720329316653,
    ("zigzag-tpu-like", "ws", 256, 256, 32, 8): 0.07024306341375108,  # Segformer-B0 stage-4 AV
    ("zigzag-tpu-like-is", "is", 256, 256, 32, 8): 0.07084546201706365,
    # IS on the WS machine (before issue 23): the weights re-read from DRAM per 32-token input tile
    ("zigzag-tpu-like", "is", 128, 768, 768, 1): 0.07733609700583499,
    ("zigzag-tpu-like", "is", 16384, 1024, 256, 1): 0.07334199912848438,
}


@pytest.mark.filterwarnings("ignore:accelerator 'zigzag-tpu-like' has no weight buffer")
@pytest.mark.parametrize("key", sorted(ZIGZAG))
def test_layer_agrees_with_zigzag(key):
    name, df, m, k, n, count = key
    acc = load_accelerator(name)
    w = Workload("l", (Layer("l", "linear", m, k, n, count),))
    for spill in ("fractional", "all-or-nothing"):
        assert abs(compare(w, df, 1, 8, acc, spill=spill).reduction - ZIGZAG[key]) <= 0.05, spill
    tol = 0.025 if (name, m) == ("zigzag-tpu-like-is", 16384) else 0.015
    assert compare(w, df, 1, 8, acc, spill="zigzag").reduction == pytest.approx(ZIGZAG[key], abs=tol)


def test_is_machine_changes_the_is_saving():
    """The IS figure on the WS machine was the DRAM re-reads of the weights, not APSQ (issue 23 item 5)."""
    assert ZIGZAG[("zigzag-tpu-like-is", "is", 128, 768, 768, 1)] > 2 * ZIGZAG[("zigzag-tpu-like", "is", 128, 768, 768, 1)]
    # on its own machine IS saves what WS saves on tpu_like (within 0.1 pp: the same machine, roles swapped)
    assert ZIGZAG[("zigzag-tpu-like-is", "is", 128, 768, 768, 1)] == pytest.approx(
        ZIGZAG[("zigzag-tpu-like", "ws", 128, 768, 768, 1)], abs=0.001)


def test_results_file_holds_the_agreement():
    res = json.loads(RESULTS.read_text())
    assert res["command"].endswith("results/energy_zigzag/run_agreement.py")
    nets = {(e["workload"], e["dataflow"], e["accelerator"]): e for e in res["networks"]}
    assert set(nets) == {(w, df, acc) for w in ("bert-base", "segformer-b0") for df, acc in
                         (("ws", "zigzag-tpu-like"), ("is", "zigzag-tpu-like-is"), ("is", "zigzag-tpu-like"))}
    for key, e in nets.items():
        z = e["apsq"]["zigzag"]  # ZigZag's semantics: every layer and the network within ±5 pp
        assert abs(z["difference_pp"]) <= 5 and z["layers_within_tolerance"] == z["layers"]
        # 4 vs 2 accumulator accesses per MAC: up to 2.2 pp on Segformer-B0's fuse layer on the IS machine
        assert z["worst_layer_difference_pp"] <= (2.5 if key == ("segformer-b0", "is", "zigzag-tpu-like-is") else 1.5)
    # apsq's own (fractional) spill rule: BERT-Base within ±5 pp everywhere; Segformer-B0 WS is not (the
    # partial-spill ramp), Segformer-B0 IS on its own machine nearly (3 layers by 0.2 pp: n vs n-1 accesses)
    for key in (("bert-base", "ws", "zigzag-tpu-like"), ("bert-base", "is", "zigzag-tpu-like-is")):
        assert nets[key]["apsq"]["fractional"]["worst_layer_difference_pp"] <= 5
    assert nets[("segformer-b0", "ws", "zigzag-tpu-like")]["apsq"]["fractional"]["worst_layer_difference_pp"] > 5
    seg_is = nets[("segformer-b0", "is", "zigzag-tpu-like-is")]["apsq"]["fractional"]
    assert abs(seg_is["difference_pp"]) <= 1 and seg_is["worst_layer_difference_pp"] <= 5.5
    # the network figure moved from the WS machine's to the IS machine's
    is_ws, is_own = nets[("bert-base", "is", "zigzag-tpu-like")], nets[("bert-base", "is", "zigzag-tpu-like-is")]
    assert is_own["zigzag_reduction"] > is_ws["zigzag_reduction"] + 0.02
