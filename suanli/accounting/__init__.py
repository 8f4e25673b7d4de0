"""Accounting of compute usage: worst-case estimates, the usage ledger (SQLite or PostgreSQL), quotas and
admission. Nothing here runs a scheduler command or reads its output: the accounting service
(``suanli.accounts``) does, through the backends, and hands the records in."""

from suanli.accounting.estimate import Estimate, worst_case

__all__ = ["Estimate", "worst_case"]
