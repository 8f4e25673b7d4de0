"""Backends (one folder each), the backend contract, cluster configuration and the job registry.

Nothing is imported here: each module is loaded when used, so job-side entry points start fast.
"""
