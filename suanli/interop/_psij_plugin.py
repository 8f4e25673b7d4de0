"""What PSI/J's descriptor names. PSI/J loads a plugin by running its file as a fresh module (outside
``sys.modules``); this file only re-exports, so every ``get_instance("suanli")`` builds the one
:class:`suanli.interop.psij.SuanliJobExecutor` that ``import suanli.interop.psij`` gives."""

from __future__ import annotations

from suanli.interop.psij import SuanliJobExecutor as SuanliJobExecutor
