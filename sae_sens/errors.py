"""Typed errors. Each carries a one-line message and a hint saying what to do.

The CLI maps every ``SaeSensError`` to a single line on stderr and a non-zero exit;
a traceback is shown only when ``SAE_SENS_DEBUG=1``.
"""

from __future__ import annotations


class SaeSensError(Exception):
    """Base class: ``message`` says what went wrong, ``hint`` what to do about it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message.rstrip(".")
        if self.hint:
            text += f". {self.hint.rstrip('.')}."
        return " ".join(text.split())


class UsageError(SaeSensError):
    exit_code = 2


class UnknownSaeError(UsageError):
    pass


class MissingTableError(SaeSensError):
    pass


class CorpusError(SaeSensError):
    pass


class ImportTableError(SaeSensError):
    pass


class ConfigError(UsageError):
    pass


class ModelError(SaeSensError):
    pass


class SaeLoadError(SaeSensError):
    pass


class GenerationError(SaeSensError):
    pass


class PermanentGenerationError(GenerationError):
    """An error that retrying cannot fix (bad key, unknown model, exhausted quota)."""


class ApiKeyError(PermanentGenerationError):
    pass


class BudgetExceededError(GenerationError):
    pass


class SqlError(SaeSensError):
    pass


class StoreError(SaeSensError):
    """The store cannot be read or written: a path that is a file, a damaged manifest or table, a
    read-only folder, a full disk. The message names the file."""


class LockedError(SaeSensError):
    """Another process holds the run × SAE (or cache) lock and ``--no-wait`` was given."""


class StoreWriteError(StoreError, OSError):
    """Writing the store failed (read-only, full disk, a file in the way): still an ``OSError`` for
    callers that catch those."""


class BatchPendingError(GenerationError):
    """Batches are submitted and not finished yet, and ``--no-wait`` was given: nothing is wrong, the
    work is at the server; rerunning the same command collects it (exit 75, EX_TEMPFAIL)."""

    exit_code = 75


class BatchError(GenerationError):
    """The Batch API refused or lost a whole batch (a rejected input file, a failed batch)."""
