"""The Python example of docs/fsdp.md runs as written (docs/integrations.md's, complete since 8aa8edc:
tests/integrations/test_docs_examples.py).

docs/fsdp.md's "own loop" used `apsq.train.loop` after a bare `import apsq` (AttributeError: module 'apsq'
has no attribute 'train') and an undefined schedule; the recipes named `ScheduleConfig(...)`, whose step-size
rate (1e-3) cannot move an exponent. Fragments get only the names they leave to the reader (the model, the
data, the Trainer's arguments), defined here; the rest is the doc's text.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[2] / "docs"
transformers = pytest.importorskip("transformers")


def _snippets(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), flags=re.S)


def _llama():
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                                   attn_implementation="eager")
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg)


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed gloo")
def test_fsdp_own_loop_snippet_runs(tmp_path):
    import torch.distributed as dist

    (loop,) = _snippets("fsdp.md")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0, world_size=1)
    try:
        scope = {"__name__": "doc", "model": _llama(),
                 "calib_batches": [torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))]}
        exec(compile(loop, "docs/fsdp.md", "exec"), scope)
        groups = {g["name"]: g for g in scope["opt"].param_groups}
        assert groups["step_sizes"]["lr"] == 0.2  # the QAT recipe's rate, not ScheduleConfig's 1e-3
    finally:
        dist.destroy_process_group()
