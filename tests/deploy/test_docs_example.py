"""The Python example of docs/deploy.md (a model of one's own, exported and run bit-exactly) runs as
written; it was a fragment with undefined names (``model``, ``example_batch``, ``batch``)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"


def test_the_deploy_doc_example_runs_as_written():
    block = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[0]
    if shutil.which("verilator") is None:  # the same example on the integer model
        block = block.replace('backend="verilator"', 'backend="golden"')
    scope: dict = {}
    exec(compile(block, str(DOC), "exec"), scope)
    assert scope["report"].outputs_equal and len(scope["program"].manifest.layers) == 2
