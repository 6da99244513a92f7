"""Workload files: a YAML list of GEMM layers (or convolutions), validated by pydantic.

Format (``apsq energy --workload FILE``)::

    name: my-net                       # optional (default: the file's stem)
    layers:
      - {name: fc1, m: 128, k: 768, n: 3072}            # Y[m, n] = X[m, k] · W[n, k]ᵀ
      - {name: qk, m: 128, k: 64, n: 128, count: 12, kind: matmul, w_is_weight: false}
      - name: stem                                       # a convolution, converted to its im2col GEMM
        conv: {in_channels: 3, out_channels: 32, kernel: 7, stride: 4, padding: 3, input: [512, 512]}

A GEMM layer has ``m``, ``k``, ``n`` (positive integers), optional ``count`` (independent GEMMs of
this shape, default 1), ``kind`` (``linear``, ``conv2d``, ``conv1d``, ``matmul``; default ``linear``,
``conv2d`` for conv fields) and ``w_is_weight`` (default true; false when the second operand is an
activation, e.g. attention). A conv layer gives ``conv`` instead of ``m/k/n``: ``in_channels``,
``out_channels``, ``kernel`` (int or [kh, kw]), ``input`` (int or [H, W]; one int with ``kernel`` an
int and ``dims: 1`` for a Conv1d), optional ``stride``, ``padding``, ``dilation`` (int or pair),
``groups`` and ``batch`` (default 1); it becomes ``M = batch·Ho·Wo``, ``K = in/groups·kh·kw``,
``N = out/groups``, ``count = groups`` (× the layer's ``count``), as :mod:`apsq.hw.workloads.trace`
records a traced ``nn.Conv2d``. Every error is an :class:`~apsq.errors.APSQError` naming the file,
the layer (index and name) and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, TypeAlias

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    model_validator,
)

from apsq.errors import APSQError, read_yaml
from apsq.hw.workloads.base import LAYER_KINDS, MAX_DIM, Layer, Workload

__all__ = ["load_workload_file", "workload_from_dict", "ConvSpec", "LayerSpec", "WorkloadSpec"]


Pair: TypeAlias = StrictInt | Annotated[list[StrictInt], Field(min_length=2, max_length=2)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _pair(v: Pair) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class ConvSpec(_Strict):
    """A Conv2d (or Conv1d with ``dims: 1``) layer, converted to its im2col GEMM."""

    in_channels: StrictInt = Field(ge=1, le=MAX_DIM)
    out_channels: StrictInt = Field(ge=1, le=MAX_DIM)
    kernel: Pair = Field(description="kernel size, int or [kh, kw]")
    input: Pair = Field(description="input spatial size, int or [H, W]")
    stride: Pair = 1
    padding: Pair = 0
    dilation: Pair = 1
    groups: StrictInt = Field(1, ge=1, le=MAX_DIM)
    batch: StrictInt = Field(1, ge=1, le=MAX_DIM)
    dims: Literal[1, 2] = 2

    @model_validator(mode="after")
    def _check(self) -> ConvSpec:
        for f in ("kernel", "input", "stride", "dilation"):
            if min(_pair(getattr(self, f))) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)!r}")
        if min(_pair(self.padding)) < 0:
            raise ValueError(f"padding must be >= 0, got {self.padding!r}")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"groups ({self.groups}) must divide in_channels ({self.in_channels}) and "
                             f"out_channels ({self.out_channels})")
        if min(self.output_size()) < 1:
            raise ValueError(f"kernel {self.kernel!r} (dilation {self.dilation!r}) is larger than the padded "
                             f"input {self.input!r} + 2 x {self.padding!r}: no output")
        return self

    def output_size(self) -> tuple[int, int]:
        """``floor((H + 2p - d(k - 1) - 1) / s) + 1`` per spatial dimension (PyTorch's Conv2d)."""
        dims = range(1) if self.dims == 1 else range(2)
        h, k, s, p, d = (_pair(getattr(self, f)) for f in ("input", "kernel", "stride", "padding", "dilation"))
        out = [(h[i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in dims]
        return (out[0], out[1]) if self.dims == 2 else (out[0], 1)

    def gemm(self) -> tuple[int, int, int, int]:
        """(M, K, N, count) of the im2col GEMM."""
        ho, wo = self.output_size()
        kh, kw = _pair(self.kernel)
        taps = kh * kw if self.dims == 2 else kh
        return self.batch * ho * wo, self.in_channels // self.groups * taps, self.out_channels // self.groups, self.groups


class LayerSpec(_Strict):
    """One layer: a GEMM (``m``, ``k``, ``n``) or a convolution (``conv``)."""

    name: str = Field(min_length=1)
    m: StrictInt | None = Field(None, ge=1, le=MAX_DIM)
    k: StrictInt | None = Field(None, ge=1, le=MAX_DIM)
    n: StrictInt | None = Field(None, ge=1, le=MAX_DIM)
    count: StrictInt = Field(1, ge=1, le=MAX_DIM)
    kind: Literal["linear", "conv2d", "conv1d", "matmul"] | None = None
    w_is_weight: StrictBool = True
    conv: ConvSpec | None = None

    @model_validator(mode="after")
    def _one_form(self) -> LayerSpec:
        gemm = [f for f in ("m", "k", "n") if getattr(self, f) is not None]
        if self.conv is None and len(gemm) != 3:
            missing = [f for f in ("m", "k", "n") if getattr(self, f) is None]
            raise ValueError(f"a GEMM layer needs m, k and n (missing {', '.join(missing)}), or conv fields instead")
        if self.conv is not None and gemm:
            raise ValueError(f"give either m/k/n or conv, not both (got conv and {', '.join(gemm)})")
        return self

    def to_layer(self) -> Layer:
        if self.conv is not None:
            m, k, n, groups = self.conv.gemm()
            kind = self.kind or ("conv1d" if self.conv.dims == 1 else "conv2d")
            return Layer(self.name, kind, m, k, n, groups * self.count, self.w_is_weight)
        assert self.m is not None and self.k is not None and self.n is not None  # the validator above
        return Layer(self.name, self.kind or "linear", self.m, self.k, self.n, self.count, self.w_is_weight)


class WorkloadSpec(_Strict):
    """The whole file."""

    name: str | None = None
    layers: list[LayerSpec] = Field(min_length=1)


assert set(LAYER_KINDS) == {"linear", "conv2d", "conv1d", "matmul"}  # keep the Literal above in step


def _describe(exc: ValidationError, data: dict) -> str:
    lines = []
    layers = data.get("layers") if isinstance(data, dict) else None
    for err in exc.errors():
        loc = list(err["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        if len(loc) >= 2 and loc[0] == "layers" and isinstance(loc[1], int) and isinstance(layers, list):
            entry = layers[loc[1]] if loc[1] < len(layers) else None
            lname = entry.get("name") if isinstance(entry, dict) else None
            rest = ".".join(str(p) for p in loc[2:]) or "(the layer)"
            where = f"layer {loc[1]}" + (f" ({lname!r})" if lname else "") + f", field '{rest}'"
        else:
            where = f"field '{where}'"
        lines.append(f"{where}: {err['msg']}")
    return "; ".join(lines)


def workload_from_dict(data: object, source: str = "workload") -> Workload:
    """Validate a mapping in the format above and build the :class:`Workload`."""
    if not isinstance(data, dict):
        raise APSQError(f"{source}: a workload must be a mapping with a 'layers' list, got {type(data).__name__}")
    try:
        spec = WorkloadSpec.model_validate(data)
    except ValidationError as exc:
        raise APSQError(f"{source}: invalid workload: {_describe(exc, data)}") from None
    names = [ly.name for ly in spec.layers]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise APSQError(f"{source}: layer names must be unique; repeated: {', '.join(map(repr, dup))}")
    return Workload(spec.name or "workload", tuple(ly.to_layer() for ly in spec.layers), {"source": source})


def load_workload_file(path: str | Path) -> Workload:
    """Read and validate a workload YAML file (see the module docstring)."""
    p = Path(path)
    data = read_yaml(p, "workload file")
    w = workload_from_dict(data, source=f"workload file {str(p)!r}")
    if not (isinstance(data, dict) and data.get("name")):
        w = Workload(p.stem, w.layers, w.options)
    return w
