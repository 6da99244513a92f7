"""Studies beyond the paper: baseline PSUM precision, sub-8-bit W/A/PSUM, an A2Q baseline.

Shared model / data plumbing for them and for ``apsq tune-gs`` lives in :mod:`apsq.eval.setup`.
"""
