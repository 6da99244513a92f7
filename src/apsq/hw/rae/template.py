"""The simulator sources shipped as package data (``apsq/hw/rae/templates/``), filled in by name.

A template marks each value as ``@NAME@`` (upper case; Verilog's ``@(posedge clk)`` and ``always @*``
never match). :func:`render` replaces every one and refuses a missing or unused value, so a template
and its caller cannot drift apart silently.
"""

from __future__ import annotations

import re
from importlib import resources

from apsq.errors import APSQError

__all__ = ["render", "template_text"]

_FIELD = re.compile(r"@([A-Z][A-Z0-9_]*)@")


def template_text(name: str) -> str:
    """The raw text of ``templates/<name>`` (e.g. ``"rae_driver.cpp"``)."""
    path = resources.files("apsq.hw.rae").joinpath("templates", name)
    if not path.is_file():
        raise APSQError(f"RAE template {name!r} is missing from the package (apsq/hw/rae/templates/)")
    return path.read_text()


def render(name: str, **values: object) -> str:
    """``templates/<name>`` with every ``@KEY@`` replaced by ``str(values[KEY])``.

    Raises:
        APSQError: a placeholder without a value, or a value without a placeholder.
    """
    text = template_text(name)
    wanted = set(_FIELD.findall(text))
    if wanted != set(values):
        raise APSQError(f"template {name}: placeholders {sorted(wanted)}, values given {sorted(values)}")
    return _FIELD.sub(lambda m: str(values[m.group(1)]), text)
