"""Every error the registry raises, in one hierarchy.

Each class carries the exit code the CLI uses (docs/design.md: 2 usage, 1 failure, 3 blocked
by gates) and a hint that names the next thing to do. The CLI turns any RegistryError into
one line at a single place (`cli.app.main`).
"""

from __future__ import annotations


class RegistryError(Exception):
    """Root of every error the registry raises on purpose."""

    exit_code = 1
    hint = ""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def one_line(self) -> str:
        """The message and the hint as the single line the CLI prints."""
        text = str(self).rstrip(".")
        return f"{text}. {self.hint}" if self.hint else f"{text}."


# --- usage errors (exit 2): the input is wrong, nothing was changed --------------------


class UsageError(RegistryError):
    """Arguments or input files are wrong; nothing was changed."""

    exit_code = 2


class RegistryNotFoundError(UsageError):
    hint = "Run `registry init PATH`, or pass --registry PATH / set REGISTRY_HOME."


class InvalidReferenceError(UsageError):
    hint = (
        "References look like name:v3, name:production, name:remote/production,"
        " name@sha256:<8+ hex> or sha256:<hex>."
    )


class ReferenceNotFoundError(UsageError):
    hint = "Run `registry ls` to see what the registry holds."


class AmbiguousReferenceError(UsageError):
    hint = "Give more hex digits of the digest."


class InvalidInputError(UsageError):
    """An input file or directory is malformed or unsafe (bad JSON, bad header, pickle...)."""


class UnsafePathError(InvalidInputError):
    hint = "Paths must be relative, normalized and stay inside their directory."


class PickleRefusedError(InvalidInputError):
    hint = "Convert the weights to safetensors, or pass --allow-pickle if you trust the file."


class PolicyError(UsageError):
    hint = "Run `registry policy check FILE` to see what is wrong with the policy."


# --- failures (exit 1): the operation could not be done ---------------------------------


class IntegrityError(RegistryError):
    """Stored data does not match its digest, or is missing."""

    hint = "Run `registry verify --all`; restore the blobs with `registry pull` from a remote."


class ConflictError(RegistryError):
    """A compare-and-swap lost: somebody else moved the thing first."""

    hint = "Run `registry history` to see the newer move, then decide again."


class SchemaError(RegistryError):
    hint = "Run `registry init PATH` on this registry to apply the database migrations."


class RemoteError(RegistryError):
    """A remote (S3, Hugging Face Hub) refused or failed a request."""


class GateError(RegistryError):
    """A gate could not run (missing dependency, unreadable eval set)."""


# --- blocked (exit 3): the release process said no --------------------------------------


class BlockedError(RegistryError):
    """Gates or policy do not allow the move."""

    exit_code = 3
