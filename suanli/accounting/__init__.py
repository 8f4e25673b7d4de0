"""Accounting of compute usage: worst-case estimates, the usage ledger (SQLite or PostgreSQL), quotas and
admission, and the sacct parser that feeds the ledger. Nothing here runs a scheduler command: the caller
(``suanli.accounts``) does, and hands the text in."""

from suanli.accounting.estimate import Estimate, worst_case

__all__ = ["Estimate", "worst_case"]
