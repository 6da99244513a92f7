"""docs/integrations.md's Python examples run as written: save / load, and QAT in a Hugging Face
``Trainer`` (``APSQTrainer``), which was a fragment with undefined names (``qmodel``, ``training_args``,
``train_set``, ``fp_model``) for a user bringing their own model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"


@pytest.mark.parametrize("index", [0, 1])
def test_integrations_doc_examples_run(index):
    pytest.importorskip("transformers")
    pytest.importorskip("datasets")
    block = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[index]
    scope: dict = {}
    exec(compile(block, str(DOC), "exec"), scope)
    if index == 1:
        assert scope["trainer"].state.global_step == 5
        flags = [bool(b) for n, b in scope["qmodel"].named_buffers() if n.endswith("initialized")]
        assert flags and all(flags)  # calibrated before the first step
