"""quantize_ on a plain MLP, a small CNN, and the real MiniLM; config validation; statistics."""

import pytest
import torch
from torch import nn

import apsq
from apsq.errors import APSQError, NonFiniteInputError
from apsq.nn import QuantConv2d, QuantLinear
from apsq.quant import is_power_of_two


def mlp():
    return nn.Sequential(nn.Linear(100, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5))


def cnn():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


def test_mlp_swap_calibrate_train_step():
    torch.manual_seed(0)
    model = mlp()
    ref = mlp()
    ref.load_state_dict(model.state_dict())
    apsq.quantize_(model, apsq.APSQConfig(gs=2, tile=16))
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 3
    x = torch.randn(64, 100)
    apsq.calibrate(model, [x[:32], x[32:]])
    for _, layer in apsq.quant_layers(model):
        assert bool(is_power_of_two(layer.psum.scales(layer.psum.log2_scales.numel())).all())
    with torch.no_grad():
        rel = (model(x) - ref(x)).norm() / ref(x).norm()
    assert rel < 0.1
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    loss = model(x).pow(2).mean()
    loss.backward()
    assert model[0].psum.log2_scales.grad is not None and model[0].weight.grad is not None
    opt.step()


def test_small_cnn_all_modes_close_to_float():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 16, 16)
    errors = {}
    for mode, gs in [("none", 1), ("psq", 1), ("apsq", 1), ("apsq", 4)]:
        torch.manual_seed(0)
        model, ref = cnn(), cnn()
        ref.load_state_dict(model.state_dict())
        apsq.quantize_(model, apsq.APSQConfig(mode=mode, gs=gs, tile=16))
        assert sum(isinstance(m, QuantConv2d) for m in model.modules()) == 3
        apsq.calibrate(model, [x])
        with torch.no_grad():
            errors[(mode, gs)] = float((model(x) - ref(x)).norm() / ref(x).norm())
    assert errors[("none", 1)] < 0.05
    assert all(e < 0.3 for e in errors.values()), errors


def test_overrides_and_exclude():
    model = mlp()
    cfg = apsq.APSQConfig(gs=2, exclude=("4",), overrides={"2": {"gs": 4, "mode": "psq"}})
    apsq.quantize_(model, cfg)
    assert isinstance(model[0], QuantLinear) and model[0].qcfg.gs == 2
    assert model[2].qcfg.gs == 4 and model[2].qcfg.mode == "psq"
    assert type(model[4]) is nn.Linear


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(gs=0), "gs"),
        (dict(tile=0), "tile"),
        (dict(psum_bits=1), "psum_bits"),
        (dict(act_bits=17), "act_bits"),
        (dict(weight_bits=40), "weight_bits"),
        (dict(mode="int4"), "mode"),
        (dict(layer_types=("lstm",)), "layer_types"),
        (dict(overrides={"x": {"gz": 2}}), "unknown keys"),
        (dict(overrides={"x": {"gs": 0}}), "gs"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(APSQError, match=match):
        apsq.APSQConfig(**kwargs)


def test_an_unknown_keyword_names_the_setting_and_the_allowed_ones():
    """Was Python's bare TypeError ("unexpected keyword argument"), not an APSQError with the allowed values."""
    from apsq.nn.config import LayerQuantConfig

    with pytest.raises(APSQError, match=r"APSQConfig: unknown setting\(s\) 'group_size'; allowed: tile, mode, gs"):
        apsq.APSQConfig(group_size=2)
    with pytest.raises(APSQError, match=r"'psumbits' \(did you mean 'psum_bits'\?\)"):
        apsq.APSQConfig().replace(psumbits=4)
    with pytest.raises(APSQError, match=r"LayerQuantConfig: unknown setting\(s\) 'exclude'"):
        LayerQuantConfig(exclude=("x",))
    assert apsq.APSQConfig(gs=3).replace(gs=4) == apsq.APSQConfig(gs=4)


def test_config_from_dict_and_yaml(tmp_path):
    with pytest.raises(APSQError, match="unknown APSQ config keys"):
        apsq.APSQConfig.from_dict({"gs": 2, "group_size": 3})
    p = tmp_path / "c.yaml"
    p.write_text("gs: 3\nmode: apsq\noverrides:\n  'classifier': {enabled: false}\n")
    cfg = apsq.APSQConfig.from_yaml(p)
    assert cfg.gs == 3 and not cfg.for_module("classifier").enabled
    assert apsq.APSQConfig.from_dict(cfg.to_dict()) == cfg
    p.write_text("gs: [1, 2\n")
    with pytest.raises(APSQError, match="not valid YAML"):
        apsq.APSQConfig.from_yaml(p)


def test_nan_input_is_a_clear_error():
    model = apsq.quantize_(mlp())
    x = torch.randn(4, 100)
    apsq.calibrate(model, [x])
    x[0, 3] = float("inf")
    with pytest.raises(NonFiniteInputError, match="layer 0"):
        model(x)


def test_stats_report_tiles_saturation_and_error():
    torch.manual_seed(0)
    model = apsq.quantize_(mlp(), apsq.APSQConfig(gs=1, tile=16))
    x = torch.randn(32, 100)
    apsq.calibrate(model, [x])
    with apsq.track_stats(model) as stats:
        model(x)
    assert [s.n_tiles for s in stats] == [7, 4, 4]
    assert all(0 <= s.saturation_rate < 0.05 for s in stats)
    assert all(0 < s.rel_error < 0.2 for s in stats)
    # a step forced far too small saturates almost everything
    model[0].psum.log2_scales.data.fill_(-20)
    with apsq.track_stats(model) as stats:
        model(x)
    assert stats[0].saturation_rate > 0.5


def test_calibrate_needs_batches_and_quantized_layers():
    with pytest.raises(APSQError, match="no quantized layers"):
        apsq.calibrate(mlp(), [torch.randn(2, 100)])
    with pytest.raises(APSQError, match="empty"):
        apsq.calibrate(apsq.quantize_(mlp()), [])
