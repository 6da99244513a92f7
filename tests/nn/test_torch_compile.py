"""``torch.compile`` of a quantized model: it runs, and equals eager mode.

Before, ``torch.compile(model)`` of any apsq-quantized model failed at its first call (dynamo traced the
step-size tagging hook of :mod:`apsq.nn.optim_check` and raised ``InternalTorchDynamoError``). Now each
quantized layer and the step-size tagging hook run eagerly inside the compiled model
(``torch.compiler.disable``: a graph break around each), and the rest is compiled (the padding hooks'
``ContextVar`` makes dynamo break there by itself; the BERT test checks the mask still reaches the layers). With a backend that keeps torch's own kernels (``eager``, ``aot_eager``) values and
gradients are bit-identical to eager mode; inductor fuses the float operations between the layers and
rounds them differently, as it does for a float model (``docs/known-limits.md``).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import apsq
from apsq.nn.optim_check import StepSizeWarning


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 10))
    apsq.quantize_(model, apsq.APSQConfig(gs=2, tile=16))
    x = torch.randn(24, 64)
    apsq.calibrate(model, [x])
    return model, x


def _value_and_grads(model: nn.Module, call: nn.Module, *args: torch.Tensor, **kwargs: torch.Tensor):
    model.zero_grad(set_to_none=True)
    out = call(*args, **kwargs)
    out = out if isinstance(out, torch.Tensor) else out.last_hidden_state
    out.square().sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_mlp_is_bit_identical_forward_and_backward(backend: str) -> None:
    torch._dynamo.reset()
    model, x = _mlp()
    ref, g_ref = _value_and_grads(model, model, x)
    out, g = _value_and_grads(model, torch.compile(model, backend=backend), x)
    assert torch.equal(out, ref)
    assert g.keys() == g_ref.keys() and len(g) == 10  # per layer: weight, bias and the three kinds of step
    assert all(torch.equal(g[n], g_ref[n]) for n in g)


def test_compiled_mlp_with_inductor_runs_and_equals_eager() -> None:
    """The default backend (a C++ build of the float ops between the layers; here only GELU)."""
    torch._dynamo.reset()
    model, x = _mlp()
    ref, g_ref = _value_and_grads(model, model, x)
    out, g = _value_and_grads(model, torch.compile(model), x)
    assert torch.equal(out, ref)
    assert all(torch.equal(g[n], g_ref[n]) for n in g)


def test_compiled_bert_with_attention_matmuls_and_padding() -> None:
    """A Hugging Face BERT with quantized QK^T / AV and a padded row: the padding mask reaches the layers
    inside the compiled model (calibrated through it, the steps equal a calibration in eager mode)."""
    from transformers import BertConfig, BertModel

    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, attn_implementation="eager")
    base = BertModel(cfg).eval()
    ids = torch.randint(1, 50, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    qcfg = apsq.APSQConfig(gs=2, tile=8, attention_matmuls=True)
    eager = apsq.quantize_(copy.deepcopy(base), qcfg)
    apsq.calibrate(eager, [{"input_ids": ids, "attention_mask": mask}])
    model = apsq.quantize_(copy.deepcopy(base), qcfg)
    compiled = torch.compile(model, backend="aot_eager")
    apsq.calibrate(compiled, [{"input_ids": ids, "attention_mask": mask}])
    steps = {n: p for n, p in model.named_parameters() if "log2_scale" in n}
    assert steps and all(torch.equal(p, dict(eager.named_parameters())[n]) for n, p in steps.items())
    ref, g_ref = _value_and_grads(eager, eager, input_ids=ids, attention_mask=mask)
    out, g = _value_and_grads(model, compiled, input_ids=ids, attention_mask=mask)
    assert torch.equal(out, ref)
    assert g.keys() == g_ref.keys() and all(torch.equal(g[n], g_ref[n]) for n in g)


def test_compiled_model_still_warns_about_an_optimizer_that_cannot_learn_the_steps() -> None:
    torch._dynamo.reset()
    model, x = _mlp()
    compiled = torch.compile(model, backend="aot_eager")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)  # step sizes in the weights' group
    model.train()
    compiled(x).sum().backward()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step()
    assert any(issubclass(w.category, StepSizeWarning) for w in caught)


def test_fullgraph_compile_is_refused_by_dynamo() -> None:
    """docs/known-limits.md: ``fullgraph=True`` cannot hold the eager layers (a graph break is an error)."""
    torch._dynamo.reset()
    model, x = _mlp()
    with pytest.raises(torch._dynamo.exc.Unsupported):
        torch.compile(model, backend="eager", fullgraph=True)(x)
