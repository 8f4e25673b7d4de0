"""Bridges from other job APIs onto suanli's public API (same layer as the CLI: they import ``suanli.api``, and
nothing in suanli imports them). ``suanli.interop.psij`` is suanli as a PSI/J executor."""
