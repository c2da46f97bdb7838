"""``python -m ethnic_group_recognizer.cli``: the same as ``egr``."""

from ethnic_group_recognizer.cli import app

app(prog_name="egr")
