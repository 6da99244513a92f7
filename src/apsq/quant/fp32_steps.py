"""Step-size parameters that stay float32 through every dtype cast of their module.

A quantizer learns a continuous ``log2`` step and rounds it half up, ``e = floor(x + 1/2)``. Cast to
bfloat16 (8 significant bits) or float16, ``x`` moves by up to ``2^-9 |x|`` and can cross the ``.5``
boundary: ``model.to(torch.bfloat16)`` after QAT would silently move learned exponents to their
neighbour (issue 25 item 1, the kind reported for torchao's fake quantizers, which keep their scales in
float32). :class:`Float32Steps` makes the rule structural: whatever ``Module._apply`` does (``.to(dtype)``,
``.half()``, ``.bfloat16()``, ``.double()``, ``.to(device)``, ``.to_empty()``), the named parameters and
buffers keep ``torch.float32`` and their exact values, and only follow the device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

STEP_DTYPE = torch.float32
"""The dtype of every learned step (``log2``) parameter, whatever its module's dtype."""


class Float32Steps(nn.Module):
    """A module whose tensors named in ``_float32_steps`` (parameters or buffers) stay float32.

    Subclasses list the attribute names; everything else in the module converts as usual. Gradients
    of those parameters are float32 too (autograd casts them to the parameter's dtype), so optimizers
    update them in float32 while the rest of a bf16 / fp16 model trains in its own dtype.
    """

    _float32_steps: tuple[str, ...] = ()

    def _step_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for name in self._float32_steps:
            t = self._parameters.get(name, self._buffers.get(name))
            if t is not None:
                out[name] = t
        return out

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True):
        before = {n: t.detach().clone() for n, t in self._step_tensors().items() if t.dtype == STEP_DTYPE}
        out = super()._apply(fn, recurse)
        for name, t in self._step_tensors().items():
            if t.dtype == STEP_DTYPE or not t.is_floating_point():
                continue
            old = before.get(name)
            if old is None or old.is_meta or t.is_meta:  # nothing exact to restore (e.g. meta, to_empty)
                fixed = t.detach().to(STEP_DTYPE)
            else:  # the float32 values from before the cast, on the new device
                fixed = old.to(t.device)
            with torch.no_grad():
                t.data = fixed
                if isinstance(t, nn.Parameter) and t.grad is not None:
                    t.grad.data = t.grad.detach().to(STEP_DTYPE)
        return out
