"""Accounting of compute usage: what a job may cost before it runs (the ledger and quotas build on this)."""

from suanli.accounting.estimate import Estimate, worst_case

__all__ = ["Estimate", "worst_case"]
