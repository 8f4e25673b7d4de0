"""``python -m suanli`` is the CLI."""

from suanli.cli.entry import run

run()
