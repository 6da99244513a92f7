"""apsq inside other people's tools: Hugging Face ``from_pretrained`` / ``save_pretrained`` and ``Trainer``
(:mod:`apsq.integrations.transformers`), PEFT LoRA (:mod:`apsq.integrations.peft`).

Importing a submodule registers what it integrates (e.g. the ``"apsq"`` quantization method with
transformers); ``import apsq`` alone imports none of them.
"""
