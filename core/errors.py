"""The typed errors of the library; ``xpkit.cli.errors`` turns them into messages and exit codes."""

from __future__ import annotations


class XpkitError(Exception):
    """Base of every error xpkit raises on purpose. ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(XpkitError):
    """A bad invocation: an unknown option value, a flag combination, a missing input file."""

    exit_code = 2


class InputError(XpkitError):
    """Input that cannot be read at all (as opposed to one bad record, which is quarantined)."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        super().__init__(message)
        self.file = file
        self.line = line
        self.field = field


class FormatDetectionError(UsageError):
    """``--format auto`` could not decide; the message names the close candidates and the flag."""


class StoreError(XpkitError):
    """The store could not be opened, migrated or written."""


class StoreLockedError(StoreError):
    """Another process holds the store's write lock."""


class StrictModeError(XpkitError):
    """``--strict`` was given and at least one record was rejected."""


class RecordError(Exception):
    """One record is unusable. Not an ``XpkitError``: it is caught and quarantined, never fatal.

    ``field`` names the offending field (dotted path) so the quarantine entry says what to fix.
    """

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


class ModelError(XpkitError):
    """A model could not be resolved, loaded or run (bad file, missing bundled model, ...)."""


class ModelServerError(ModelError):
    """An OpenAI-compatible model server could not be reached or stopped answering mid-run."""


class ContextOverflowError(ModelError):
    """A prompt plus its ``max_tokens`` does not fit the model's context window.

    Inside a batch this becomes a per-item rejection (the other items go on); it is raised only
    by single calls that were asked to raise.
    """

    def __init__(self, message: str, *, prompt_tokens: int | None = None,
                 n_ctx: int | None = None) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.n_ctx = n_ctx
