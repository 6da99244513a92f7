"""Private kernels: same numbers as the reference, faster (C on the CPU, Triton on GPUs).

Nothing outside :mod:`apsq.psum` and :mod:`apsq.quant` imports this package."""
