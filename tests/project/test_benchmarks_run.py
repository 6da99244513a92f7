"""The layer benchmark runs end to end (tiny shapes; no timing is asserted — ratios live in benchmarks/)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_layer", ROOT / "benchmarks" / "bench_layer.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_layer", mod)  # dataclasses look their module up
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "SHAPES", [(64, 48)])
    monkeypatch.setattr(mod, "M_TOKENS", 16)
    return mod


def test_layer_benchmark_reports_every_variant(bench):
    vs, _ = bench.variants(reference=True, ablation=True, fallback=True)
    bench.bench_layers(vs, reps=1)
    res = bench.layer_results(vs)
    for name in ("fp32", "w8a8", "psq", "apsq_gs1", "apsq_gs2", "apsq_gs3", "apsq_gs4", "apsq_gs2_channel",
                 "apsq_gs2_reference",
                 "apsq_gs2_bmm_tiles", "apsq_gs2_autograd_lsq", "apsq_gs2_torch_kernels", "w8a8_torch_kernels"):
        entry = res[name]
        assert entry["ratio_vs_fp32"] > 0 and entry["peak_mem_ratio_vs_w8a8"] > 0
        assert set(entry["shapes"]) == {"M16_K64_N48"}
    assert res["fp32"]["ratio_vs_fp32"] == 1.0 and res["w8a8"]["peak_mem_ratio_vs_w8a8"] == 1.0


def test_baseline_variant_runs_the_kernel_of_a_git_revision(bench, monkeypatch):
    """``--baseline REV``: apsq gs=2 through REV's integer kernel module (here HEAD's), not the current one."""
    from apsq.kernels import int_gemm

    vs, _ = bench.variants(reference=False, baseline="HEAD")
    base = next(v for v in vs if v.name == "apsq_gs2_baseline")
    module = base.opts["gemm_module"]
    assert module is not int_gemm and module.available()
    calls = []
    real = module.forward
    monkeypatch.setattr(module, "forward", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    bench.bench_layers([v for v in vs if v.name in ("fp32", "w8a8", "apsq_gs2_baseline")], reps=1)
    assert calls


def test_ablation_variants_switch_the_kernel_options(bench):
    """The ablations run with the previous paths (kernel options, not environment variables)."""
    from apsq.kernels import options

    vs, _ = bench.variants(reference=False, ablation=True)
    by = {v.name: v for v in vs}
    with bench._opts(by["apsq_gs2_bmm_tiles"].opts):
        assert not options.current().int_gemm and not options.current().fused_lsq
    with bench._opts(by["apsq_gs2_autograd_lsq"].opts):
        assert options.current().int_gemm and not options.current().fused_lsq
    assert options.current() == options.Options()


def test_profile_pieces_time_every_piece_and_restore_the_functions(monkeypatch):
    """``profile_layer.py --pieces``: every piece of an APSQ step is timed (the wrapped kernel functions ran) and
    the wrappers are removed afterwards."""
    from apsq.kernels import int_gemm, int_gemm_fn, lsq

    spec = importlib.util.spec_from_file_location("profile_layer", ROOT / "benchmarks" / "profile_layer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "M_TOKENS", 16)
    before = (int_gemm.forward, int_gemm.backward, int_gemm.int_operands, vars(lsq._LSQFakeQuant)["forward"],
              int_gemm_fn.torch)
    res = mod.pieces(64, 48, "apsq", 2, "tensor", reps=1)
    for label in ("PSUM kernel forward", "PSUM kernel backward", "operand-gradient sgemms (2)", "operand codes (x, W)",
                  "LSQ fake-quant forward (x, W)", "LSQ fake-quant backward (x, W)"):
        assert res[label] > 0, label
    assert res["step"] >= sum(v for k, v in res.items() if k not in ("step", "fp32 nn.Linear step")) - 1e-9
    assert (int_gemm.forward, int_gemm.backward, int_gemm.int_operands, vars(lsq._LSQFakeQuant)["forward"],
            int_gemm_fn.torch) == before
