"""Errors with the CLI exit code each one maps to (0 ok, 1 job did not complete, 2 usage, 3 quota, 4 backend)."""

from __future__ import annotations


class SuanliError(Exception):
    """Base of every error suanli raises on purpose; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class UsageError(SuanliError, ValueError):
    """Bad input: nothing reached a backend."""

    exit_code = 2


class ConfigError(UsageError):
    """A cluster config, settings or job spec file is invalid."""


class QuotaExceeded(SuanliError):
    """A quota refused the submission before it reached the scheduler."""

    exit_code = 3


class BackendError(SuanliError):
    """The backend refused the request or could not be reached; carries the backend's own message."""

    exit_code = 4


class JobFailedError(SuanliError):
    """A job ended without completing, so it has no result."""

    exit_code = 1


class RemoteTraceback(Exception):
    """Carries a traceback formatted in the job's process; chained as ``__cause__`` of the re-raised error."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return "\n\nremote traceback:\n" + self.tb
