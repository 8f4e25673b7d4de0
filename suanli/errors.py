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


def registry_error(path: object, exc: BaseException) -> SuanliError:
    """A one-line error for an SQLite fault in the job registry, with the exit code that says what to do:
    4 when trying again may help (locked, I/O error), 2 when the file or SUANLI_HOME must be fixed."""
    text = str(exc) or type(exc).__name__
    low = text.lower()
    if "locked" in low or "busy" in low:
        return BackendError(f"{path}: the job registry is busy ({text}); another suanli process holds it, "
                            "try again")
    if "readonly" in low or "read-only" in low:
        return UsageError(f"{path}: read-only file system: the job registry cannot be written ({text}); "
                          "set SUANLI_HOME to a writable folder")
    if "malformed" in low or "not a database" in low or "corrupt" in low:
        return UsageError(f"{path}: the job registry is damaged ({text}); move it aside (mv {path} "
                          f"{path}.broken) and suanli starts an empty one: jobs keep running but are no longer "
                          "listed, their folders stay under SUANLI_HOME/jobs")
    if "disk i/o" in low or "full" in low:
        return BackendError(f"{path}: the job registry could not be read or written ({text}); check the disk")
    return BackendError(f"{path}: job registry error: {text}")
