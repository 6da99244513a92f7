"""``apsq.device``: batches reach a model's device (and dtype) through one helper (issue 12 item 2)."""

from __future__ import annotations

from collections import OrderedDict, namedtuple
from collections.abc import Mapping

import pytest
import torch
from torch import nn

import apsq
from apsq.device import module_device, module_dtype, to_device
from apsq.integer import integer_forward

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
Pair = namedtuple("Pair", "x y")


class FrozenMapping(Mapping):
    """A mapping that cannot be rebuilt from a dict (like some tokenizer outputs)."""

    def __init__(self, data, *, key):
        self._d, self.key = dict(data), key

    def __getitem__(self, k):
        return self._d[k]

    def __iter__(self):
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)


def test_tensor_moves_and_casts_floats_only():
    x = torch.randn(3)
    assert to_device(x, "cpu") is x  # nothing to do: the same tensor
    y = to_device(x, "cpu", torch.float64)
    assert y.dtype == torch.float64 and torch.equal(y, x.double())
    ids = torch.arange(4)
    assert to_device(ids, "cpu", torch.bfloat16).dtype == torch.int64
    assert to_device(torch.ones(2, dtype=torch.bool), torch.device("cpu"), torch.float16).dtype == torch.bool


def test_nested_containers_keep_their_types():
    batch = {
        "input_ids": torch.arange(3),
        "pixels": torch.randn(1, 2),
        "pair": Pair(torch.zeros(1), [torch.ones(1), "text", 3]),
        "od": OrderedDict(a=torch.zeros(2)),
        "none": None,
    }
    out = to_device(batch, "cpu", torch.float64)
    assert type(out) is dict and list(out) == list(batch)
    assert out["input_ids"].dtype == torch.int64 and out["pixels"].dtype == torch.float64
    assert isinstance(out["pair"], Pair) and out["pair"].x.dtype == torch.float64
    assert out["pair"].y[1:] == ["text", 3] and isinstance(out["pair"].y, list)
    assert type(out["od"]) is OrderedDict and out["od"]["a"].dtype == torch.float64
    assert out["none"] is None
    t = to_device((torch.zeros(1), torch.zeros(1)), "cpu", torch.float16)
    assert isinstance(t, tuple) and t[0].dtype == torch.float16


def test_mapping_that_cannot_be_rebuilt_becomes_a_dict():
    out = to_device(FrozenMapping({"x": torch.zeros(1)}, key=1), "cpu", torch.float64)
    assert type(out) is dict and out["x"].dtype == torch.float64


def test_other_objects_pass_through():
    obj = object()
    assert to_device(obj, "cpu") is obj
    assert to_device("s", "cpu") == "s" and to_device(3, "cpu") == 3


def test_module_device_and_dtype():
    assert module_device(nn.ReLU()) == torch.device("cpu")
    assert module_dtype(nn.ReLU()) == torch.float32
    m = nn.Linear(2, 2).to(torch.bfloat16)
    assert module_dtype(m) == torch.bfloat16 and module_device(m) == torch.device("cpu")
    b = nn.BatchNorm1d(2)
    b.weight = None
    b.bias = None
    assert module_device(b) == torch.device("cpu")  # buffers only
    emb = nn.Sequential(nn.Embedding(4, 2).to(torch.float16))
    assert module_dtype(emb) == torch.float16
    with torch.device("meta"):
        meta = nn.Linear(2, 2)
    assert module_device(meta) == torch.device("meta")


def test_calibrate_sends_batches_through_to_device(monkeypatch):
    from apsq.nn import calibration

    seen = []
    real = calibration.to_device

    def spy(batch, device, dtype=None):
        seen.append((torch.device(device), dtype))
        return real(batch, device, dtype)

    monkeypatch.setattr(calibration, "to_device", spy)
    m = nn.Sequential(nn.Linear(8, 4)).double()
    apsq.quantize_(m)
    apsq.calibrate(m, [torch.randn(5, 8), {"input": torch.randn(3, 8)}], forward=lambda mod, b: mod(
        b["input"] if isinstance(b, dict) else b))
    assert seen == [(torch.device("cpu"), torch.float64)] * 2
    assert m[0].act_quant.log2_scale.dtype == torch.float32  # steps stay float32 (issue 25 item 1)


def test_integer_path_accepts_inputs_in_another_dtype():
    m = nn.Sequential(nn.Linear(8, 4))
    apsq.quantize_(m, apsq.APSQConfig(tile=4))
    x = torch.randn(6, 8)
    apsq.calibrate(m, [x])
    assert torch.equal(integer_forward(m[0], x.double()).code, integer_forward(m[0], x).code)


@CUDA
def test_cuda_calibrate_train_step_and_integer_path():
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4)).cuda()
    apsq.quantize_(m, apsq.APSQConfig(gs=2))
    x = torch.randn(16, 64)  # on the CPU: calibrate moves it
    apsq.calibrate(m, [x])
    xc = x.cuda()
    m.train()
    m(xc).pow(2).mean().backward()
    assert m[0].weight.grad.is_cuda
    m.eval()
    with torch.no_grad():
        y = m[0].accumulate(xc)
    r = integer_forward(m[0], x)
    assert torch.equal(y.double().cpu(), r.to_float())


@CUDA
def test_to_device_cuda_round_trip():
    batch = {"x": torch.randn(2), "ids": torch.arange(2)}
    out = to_device(batch, "cuda", torch.bfloat16)
    assert out["x"].is_cuda and out["x"].dtype == torch.bfloat16 and out["ids"].dtype == torch.int64
    back = to_device(out, "cpu")
    assert back["x"].device.type == "cpu"
