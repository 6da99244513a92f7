"""Input validation with messages that name the parameter and what is allowed."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a tensor is checked, so that `apsq --help` starts fast
    import torch

import yaml

BITS_MIN, BITS_MAX = 2, 16
PSUM_MODES = ("none", "psq", "apsq")


class APSQError(ValueError):
    """A parameter, file or tensor that apsq cannot accept; the message says what is allowed."""


class NonFiniteInputError(APSQError):
    """NaN or Inf reached a quantized layer."""


def check_int(name: str, value: object, *, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` must be an int (not bool) within ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise APSQError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        if hi is None:
            allowed = f"≥ {lo}"
        elif lo is None:
            allowed = f"≤ {hi}"
        else:
            allowed = f"in [{lo}, {hi}]"
        raise APSQError(f"{name} must be {allowed}, got {value}")
    return value


def check_bits(name: str, bits: object, lo: int = BITS_MIN, hi: int = BITS_MAX) -> int:
    """Bit widths are integers in ``[2, 16]`` unless a caller narrows the range."""
    return check_int(name, bits, lo=lo, hi=hi)


def check_bool(name: str, value: object, *, where: str = "") -> bool:
    """``value`` must be a real ``bool``: the strings ``"false"`` / ``"no"`` and the ints 0 / 1 are refused
    (a non-empty string would otherwise read as true). ``where`` names the layer or file for the message."""
    if not isinstance(value, bool):
        at = f" ({where})" if where else ""
        raise APSQError(f"{name}{at} must be true or false (a YAML boolean, unquoted), got {value!r} "
                        f"({type(value).__name__})")
    return value


def check_str_list(name: str, value: object, *, where: str = "", allowed: Iterable[str] | None = None
                   ) -> tuple[str, ...]:
    """A list of strings (patterns, names) as a tuple; a single string is ONE element, never its letters.

    ``exclude: classifier`` therefore means ``("classifier",)``. Anything else that is not a list / tuple
    of strings (a mapping, a number, a list holding a number) raises :class:`APSQError` naming ``name``
    (and ``where``: the layer or file); with ``allowed`` every element must be one of those values.
    """
    at = f" ({where})" if where else ""
    if isinstance(value, str):
        items: tuple[object, ...] = (value,)
    elif isinstance(value, (list, tuple)):
        items = tuple(value)
    else:
        raise APSQError(f"{name}{at} must be a list of strings, got {value!r} ({type(value).__name__})")
    bad = [v for v in items if not isinstance(v, str)]
    if bad:
        raise APSQError(f"{name}{at} must be a list of strings; {bad[0]!r} ({type(bad[0]).__name__}) is not one")
    if allowed is not None:
        allowed = tuple(allowed)
        for v in items:
            if v not in allowed:
                raise APSQError(f"{name}{at} entries must be among {', '.join(map(repr, allowed))}; got {v!r}")
    return items  # type: ignore[return-value]


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """``value`` must be one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise APSQError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value  # `value in choices` narrowed it to str


EXPORT_REFUSED = ("torch.export of an apsq-quantized model is not supported: the fused kernels are not "
                  "torch.library custom ops and the layers branch on data (finite checks, step initialisation); "
                  "export the float model, or run the quantized model eagerly (docs/known-limits.md)")


def refuse_export(where: str) -> None:
    """Raise APSQError (:data:`EXPORT_REFUSED`, naming ``where``) while ``torch.export`` traces: at the start
    of a quantized layer's forward, before any data-dependent branch gives a raw guard error (issue 25
    item 9)."""
    import torch

    if torch.compiler.is_exporting():
        raise APSQError(f"{where}: {EXPORT_REFUSED}")


def check_finite(name: str, x: torch.Tensor) -> torch.Tensor:
    """Raise :class:`NonFiniteInputError` if ``x`` holds NaN or Inf. Skipped (``x`` returned) while a
    ``torch.func`` transform runs: ``vmap`` cannot branch on a batched tensor's values (issue 25 item 8)."""
    import torch

    if torch._C._functorch.peek_interpreter_stack() is not None:
        return x

    # The sum is finite only if every element is (a NaN or an Inf propagates into it), and one
    # reduction is ~5x cheaper than an elementwise mask; a finite tensor whose sum overflows falls
    # through to the exact test.
    if x.numel() and bool(torch.isfinite(x.sum())):
        return x
    if not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise NonFiniteInputError(
            f"{name} contains non-finite values ({n_nan} NaN, {n_inf} Inf of {x.numel()}); "
            "quantized layers accept finite inputs only"
        )
    return x


def require(module: str, *, extra: str, what: str) -> Any:
    """Import the optional ``module`` or raise :class:`APSQError` saying which extra of apsq brings it.

    ``what`` names the feature (``"apsq demo's MiniLM"``). The import error itself is kept as the cause,
    so a package that is installed but fails to import (a missing dependency of its own) shows why.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module
        raise APSQError(f"{what} needs the optional package {module!r} (import failed: {exc}; missing: "
                        f"{missing}); install it with: pip install 'apsq[{extra}]'") from exc


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping.

    PyYAML keeps the last value of a repeated key without a word, so a pasted or mistyped line
    (``cols: 16`` ... ``cols: 8``) silently changed what a config file meant."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own error below names it
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found the key {key!r} twice (first {first}); give each key once", key_node.start_mark)
            seen[key] = f"on line {key_node.start_mark.line + 1}"
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path, what: str) -> Any:
    """Parse the YAML file ``path``; a missing file, bad YAML or a key given twice in one mapping raises
    :class:`APSQError` naming ``what`` (and the key and its lines)."""
    p = Path(path)
    if not p.is_file():
        raise APSQError(f"{what} {str(p)!r} does not exist" + (" (it is a folder)" if p.is_dir() else ""))
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise APSQError(f"{what} {str(p)!r} cannot be read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise APSQError(f"{what} {str(p)!r} is not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r}); "
                        "save it as UTF-8 YAML") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise APSQError(f"{what} {str(p)!r} is not valid YAML: {exc}") from None


def literal(text: object) -> str:
    """``text`` escaped for rich markup (:func:`rich.markup.escape`), so user-supplied names, paths and
    shapes such as ``[n, L]`` or ``[bold]x`` are printed as written instead of being read as style tags.

    Exact for text without backslashes; a message that may hold anything is printed with
    :func:`print_error` (a :class:`rich.text.Text`, never parsed)."""
    from rich.markup import escape

    return escape(str(text))


def print_error(exc: BaseException | str, *, console: Any = None, prefix: str = "error:",
                file: IO[str] | None = None) -> None:
    """Print ``prefix`` in red and the message of ``exc`` literally (never as markup) to ``console``
    (a :class:`rich.console.Console`; default: a new one on stderr). The one way CLI commands report
    an :class:`APSQError`."""
    from rich.console import Console
    from rich.text import Text

    if console is None:
        console = Console(stderr=file is None, file=file)
    line = Text()
    if prefix:
        line.append(prefix, style="red")
        line.append(" ")
    line.append(str(exc))
    console.print(line, soft_wrap=True)  # no line breaks inserted into file names when piped
