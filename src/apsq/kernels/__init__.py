"""Private kernels: the same numbers as the reference loop, faster (C on the CPU, Triton on GPUs).

Nothing outside :mod:`apsq.psum` and :mod:`apsq.quant` imports this package. The layout:

* :mod:`~apsq.kernels.options` — the only reader of the environment (``APSQ_KERNELS``, ``APSQ_CACHE``)
  and the programmatic options of tests and benchmarks;
* :mod:`~apsq.kernels.dispatch` — picks the backend for a tensor's device and dtype;
* :mod:`~apsq.kernels.build` — compiles ``csrc/*.c`` with the system compiler into a private,
  hash-checked cache; :mod:`~apsq.kernels.cabi` — each C entry point declared once, typed;
* :mod:`~apsq.kernels.chunk` (C) / :mod:`~apsq.kernels.chunk_torch` (torch) — the PSUM recursion over
  given tile partial sums; :mod:`~apsq.kernels.int_gemm` — the recursion fused with an integer GEMM;
  :mod:`~apsq.kernels.lsq` — one-pass LSQ fake quantization; :mod:`~apsq.kernels.triton_psum` — GPUs;
* :mod:`~apsq.kernels.autograd` — first-order-only backward of every kernel Function (double backward
  refused with the workaround; ``torch.func`` transforms take the reference loop);
* :mod:`~apsq.kernels.plan` — the accumulation every backend receives; :mod:`~apsq.kernels.steps` —
  the step checks the kernels rely on.
"""
