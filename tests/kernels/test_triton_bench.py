"""benchmarks/bench_gpu.py runs end to end: ``--smoke`` (tiny shapes, CPU, Triton interpreter) reaches
the Triton kernels from every quantized variant; without CUDA the plain run refuses with a message."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed (pip install -e '.[gpu]')")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_gpu", mod)  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_smoke_reaches_the_triton_kernels(bench, monkeypatch, tmp_path):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # restored after the test (main sets it too)
    out = tmp_path / "bench.json"
    assert bench.main(["--smoke", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    layers = res["layers"]
    names = ("linear_fp32", "linear_bf16", "w8a8", "psq", "apsq_gs1", "apsq_gs2", "apsq_gs3", "apsq_gs4",
             "apsq_gs2_bf16")
    assert set(layers) == set(names)
    for name in names:
        (entry,) = layers[name]["shapes"].values()
        assert entry["median_ms"] > 0, name
        quantized_psum = name.startswith(("psq", "apsq"))
        assert entry["triton_calls"] == (1 if quantized_psum else 0), name
        assert entry["triton_fallbacks"] == 0, name
    assert res["machine"]["TRITON_INTERPRET"] == "1"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the real run would start")
def test_without_cuda_it_exits_with_a_message(bench, capsys):
    assert bench.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err
