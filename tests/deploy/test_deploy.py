"""Export -> golden program run == fake-quant PyTorch, layer by layer and at the output, bit for bit."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from apsq import deploy
from apsq.deploy.runner import outputs_of
from apsq.errors import APSQError
from deploy_models import conv_net, tiny_bert


@pytest.mark.parametrize("gs", [1, 2, 3, 4])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_conv_linear_golden_equals_fake_quant(gs, granularity):
    model, x = conv_net(gs=gs, psum_granularity=granularity, seed=gs)
    prog = deploy.export(model, x)
    assert [lay.op for lay in prog.layers] == ["conv2d", "linear"]
    assert [op.op for op in prog.manifest.host_ops] == ["relu"]  # the host's float op between the two
    rep = deploy.run(prog, x, model=model)
    assert rep.outputs_equal is True
    for r in rep.layers:
        assert r.calls == 1 and r.checked_outputs == r.outputs > 0
    assert torch.equal(outputs_of(rep.output), model(x))  # the engine's output is the model's, bit for bit
    lay = prog.layers[0]
    assert lay.s0 + 2 * lay.s1 == gs - 1 and lay.s2 == [int((i + 1) % gs == 0 or i == lay.n_steps - 1)
                                                        for i in range(lay.n_steps)]
    assert lay.per_lane  # per-channel weight steps: a shift per lane
    codes = prog.tensor(lay, "weight_codes")
    assert codes.dtype == torch.int8 and codes.shape == (8, 3, 3, 3)


def test_attention_layers_in_execution_order_and_host_ops():
    model, batch = tiny_bert(gs=3)
    prog = deploy.export(model, batch)
    ops = [lay.op for lay in prog.layers]
    assert ops[:6] == ["linear", "linear", "linear", "attention_qk", "attention_av", "linear"]
    host = [(op.before_layer, op.op) for op in prog.manifest.host_ops]
    for needed in [(0, "embedding"), (0, "layer_norm"), (4, "softmax"), (6, "add"), (6, "layer_norm"), (7, "gelu")]:
        assert needed in host
    rep = deploy.run(prog, batch, model=model)
    assert rep.outputs_equal is True
    assert all(r.checked_outputs == r.outputs > 0 for r in rep.layers)


def test_per_channel_av_and_longer_input():
    """Per-channel PSUM steps on AV (QK^T per tensor); a batch longer than the traced one (more AV steps)."""
    model, batch = tiny_bert(gs=2, psum_granularity="channel", overrides={"*.qk_matmul": {"psum_granularity": "tensor"}})
    prog = deploy.export(model, batch)
    av = next(lay for lay in prog.layers if lay.op == "attention_av")
    assert av.psum_granularity == "channel" and av.per_lane and av.n_steps == 8  # 64 keys / tile 8
    ids = torch.randint(0, 100, (3, 40))
    rep = deploy.run(prog, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, model=model)
    assert rep.outputs_equal is True


def test_export_never_calibrates_and_is_pure():
    model, x = conv_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = deploy.export(model, x)
    b = deploy.export(model, x)
    assert a.manifest == b.manifest
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_mismatch_stops_and_writes_the_evidence(tmp_path):
    model, x = conv_net(gs=2)
    prog = deploy.export(model, x)
    lay = prog.layers[1]
    bad = [[v + 1 for v in row] for row in lay.engine_exponents]  # the program disagrees with the trained layer
    prog.manifest.layers[1] = lay.model_copy(update={"engine_exponents": bad})
    with pytest.raises(deploy.DeployMismatch, match=r"layer 1 \(3, linear\).*differs") as err:
        deploy.run(prog, x, model=model, mismatch_dir=tmp_path)
    ev = np.load(err.value.path)
    assert set(ev.files) >= {"input0", "input0_codes", "tile_sums", "expected", "actual", "stages"}
    assert (ev["expected"] != ev["actual"]).any()


@pytest.mark.parametrize("backend", ["verilator", "amaranth"])
def test_rtl_backend_equals_golden(backend, tmp_path):
    if backend == "verilator" and shutil.which("verilator") is None:
        pytest.skip("verilator is not installed")
    pytest.importorskip("amaranth")
    model, x = conv_net(gs=3, psum_granularity="channel")
    x = x[:1, :, :4, :4] if backend == "amaranth" else x  # the Python simulator: ~10^3 cycles/s
    prog = deploy.export(model, None) if backend == "amaranth" else deploy.export(model, x)
    if backend == "amaranth":
        model = torch.nn.Sequential(model[0])  # the conv alone (the Linear expects 6x6 maps)
        prog.manifest.layers[:] = prog.manifest.layers[:1]
    rep = deploy.run(prog, x, backend, model=model, mismatch_dir=tmp_path)
    assert rep.outputs_equal is True
    first = rep.layers[0]
    assert first.rtl_beats_in > 0 and first.rtl_cycles >= first.rtl_beats_in and first.checked_outputs == first.outputs


def test_attention_on_verilator(tmp_path):
    if shutil.which("verilator") is None:
        pytest.skip("verilator is not installed")
    model, batch = tiny_bert(gs=4)
    prog = deploy.export(model, batch)
    rep = deploy.run(prog, batch, "verilator", model=model, mismatch_dir=tmp_path)
    assert rep.outputs_equal is True and all(r.rtl_beats_in > 0 for r in rep.layers)


def test_run_refuses_a_model_without_the_programs_layers():
    model, x = conv_net()
    prog = deploy.export(model, x)
    other, _ = tiny_bert()
    with pytest.raises(APSQError, match="no quantized layer '0'"):
        deploy.run(prog, x, model=other)
    with pytest.raises(APSQError, match="backend"):
        deploy.run(prog, x, "spice", model=model)
    with pytest.raises(APSQError, match="exported from a Python model"):
        deploy.run(prog, x)


def test_run_refuses_a_program_layer_without_its_weight_codes():
    """A conv / linear entry whose tensor map lost ``weight_codes`` (an edited manifest): an APSQError
    naming the layer before anything runs (it was an AttributeError inside the tile sums)."""
    model, x = conv_net()
    prog = deploy.export(model, x)
    prog.manifest.layers[0] = prog.layers[0].model_copy(update={"tensors": {}})
    with pytest.raises(APSQError, match="program layer '0' has no tensor 'weight_codes'"):
        deploy.run(prog, x, model=model)


class _LayoutProbe(torch.nn.Module):
    """Records the strides of what the previous layer handed on (the host sees them: reductions follow them)."""

    def __init__(self) -> None:
        super().__init__()
        self.strides: list[tuple[int, ...]] = []

    def forward(self, x):
        self.strides.append(tuple(s for s, n in zip(x.stride(), x.shape, strict=True) if n > 1))  # the layout
        return x


def test_rtl_backend_keeps_the_layers_output_layout(tmp_path):
    """A conv's RTL codes come back in the golden codes' memory layout (channels-last-like), not a fresh
    contiguous tensor: a trained digits CNN (conv -> BatchNorm -> pooling) on the RTL ended with logits
    5.96e-08 off the PyTorch model's ("every layer matched, but the model outputs differ") because the
    pooling summed in another order; golden was exact."""
    pytest.importorskip("amaranth")
    model, x = conv_net(gs=2)
    probe = _LayoutProbe()
    model = torch.nn.Sequential(model[0], probe, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    x = x[:1, :, :4, :4]  # the Python simulator: ~10^3 cycles/s
    prog = deploy.export(model, x)
    for backend in ("golden", "amaranth"):
        rep = deploy.run(prog, x, backend, model=model, mismatch_dir=tmp_path)
        assert rep.outputs_equal is True
    # engine (golden), reference, engine (RTL), reference: the same layout as the unchanged model's output
    assert len(set(probe.strides)) == 1, probe.strides
