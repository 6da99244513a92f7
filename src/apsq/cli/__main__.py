"""``python -m apsq.cli``: the same as the ``apsq`` command."""

from apsq.cli import app

app()
