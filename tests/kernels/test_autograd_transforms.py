"""Issue 25 item 8 (public reports: PyTorch's "autograd.Function ... must override the setup_context
staticmethod" under ``torch.func``; "trying to differentiate twice a function that was marked with
@once_differentiable" under ``create_graph=True``): ``torch.func.grad`` / ``vmap`` work on the default
kernels (they take the reference loop while a transform runs) and double backward is refused with an
APSQError naming the workaround, for every hand-written autograd Function of the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import apsq
from apsq.errors import APSQError
from apsq.kernels import lsq as c_lsq
from apsq.kernels import options
from apsq.nn.config import LayerQuantConfig
from apsq.nn.layers import QuantLinear

SRC = Path(apsq.__file__).parent


def _function_classes() -> list[tuple[str, ast.ClassDef]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(ast.unparse(b).endswith("Function") for b in node.bases):
                out.append((f"{path.relative_to(SRC)}:{node.name}", node))
    return out


def test_every_kernel_function_is_first_order_only():
    """The kind: each autograd.Function subclass in apsq decorates its backward with first_order_only
    (no once_differentiable, whose error names no workaround)."""
    found = _function_classes()
    assert len(found) >= 5  # fused accumulate / linear, integer GEMM, LSQ, Triton
    for name, cls in found:
        back = [f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "backward"]
        assert back, name
        decorators = {ast.unparse(d) for d in back[0].decorator_list}
        assert "first_order_only" in decorators and "once_differentiable" not in decorators, (name, decorators)


def _layer(mode: str = "apsq", granularity: str = "tensor") -> QuantLinear:
    torch.manual_seed(0)
    layer = QuantLinear(48, 20, qcfg=LayerQuantConfig(tile=8, mode=mode, gs=2, psum_granularity=granularity))
    layer(torch.randn(6, 48))  # lazy step initialisation (calibrated from here on)
    return layer


@pytest.mark.parametrize("mode,granularity", [("apsq", "tensor"), ("psq", "channel"), ("none", "tensor")])
def test_func_grad_and_vmap_equal_the_reference(mode, granularity):
    layer = _layer(mode, granularity)
    assert c_lsq.applicable(torch.randn(4, 48), torch.tensor(0.5), None)  # the default kernels are in use here
    x = torch.randn(3, 5, 48, generator=torch.Generator().manual_seed(1))
    with options.override(backend="reference"):
        xr = x[0].clone().requires_grad_()
        layer(xr).square().sum().backward()
        ref_loop = torch.stack([layer(xi) for xi in x])
    got = torch.func.grad(lambda v: layer(v).square().sum())(x[0])
    assert torch.equal(got, xr.grad)
    assert torch.equal(torch.func.vmap(layer)(x), ref_loop)
    params = dict(layer.named_parameters())
    grads = torch.func.grad(lambda p: torch.func.functional_call(layer, p, (x[0],)).sum())(params)
    assert set(grads) == set(params) and all(torch.isfinite(g).all() for g in grads.values())


def test_double_backward_is_refused_with_the_workaround():
    layer = _layer()
    x = torch.randn(5, 48, requires_grad=True)
    with pytest.raises(APSQError, match="create_graph=True.*APSQ_KERNELS=reference"):
        torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    with options.override(backend="reference"):  # the named workaround works: a gradient penalty
        (gx,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
        gx.square().sum().backward()
    assert layer.weight.grad is not None


def test_export_of_a_calibrated_model_is_refused_up_front():
    """Issue 25 item 9 (public reports: torch.export's "Could not guard on data-dependent expression" on
    quantized models, torchao / ModelOpt): export of a calibrated apsq model raises an APSQError naming
    the layer and the way out, not a raw guard error; the float model exports."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(48, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    x = torch.randn(6, 48)
    torch.export.export(model, (x,))  # the float model exports
    apsq.quantize_(model, apsq.APSQConfig(mode="apsq", gs=2))
    apsq.calibrate(model, [x])
    model.eval()
    with pytest.raises(APSQError, match="linear layer 0: torch.export of an apsq-quantized model is not supported"):
        torch.export.export(model, (x,))
    assert torch.isfinite(model(x)).all()  # eager use is untouched
