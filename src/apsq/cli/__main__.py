"""``python -m apsq.cli``: the ``apsq`` command line."""

from apsq.cli import app

app(prog_name="apsq")
