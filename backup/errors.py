"""Error classes. The docstring of each class is its message template, filled with the
exception's arguments, so every message a user sees is written down in one place.

Messages never carry secrets: identities, passphrases and file keys are never arguments.
"""

from __future__ import annotations

__all__ = [
    "ArchiveCorrupt",
    "ArchiveError",
    "ArchiveNotFound",
    "ConfigError",
    "Error",
    "FileIndexCorrupt",
    "IdentityError",
    "NoArchiveAt",
    "NotifyTargetError",
    "ObjectNotFound",
    "OptionError",
    "PolicyError",
    "RestoreDestinationNotEmpty",
    "RestoreError",
    "SnapshotError",
    "SourceError",
    "TargetError",
    "UnknownTargetScheme",
    "UnsafeArchiveEntry",
]


class Error(Exception):
    """{}"""

    #: process exit code the CLI uses for this error
    exit_code = 1

    def get_message(self) -> str:
        doc = type(self).__doc__ or "{}"
        template = doc.strip().split("\n\n")[0]
        try:
            return template.format(*self.args)
        except (IndexError, KeyError):
            return template + (": " + ", ".join(map(str, self.args)) if self.args else "")

    def __str__(self) -> str:
        return self.get_message()


class ConfigError(Error):
    """{}"""


class OptionError(Error):
    """{}: {}"""


class NotifyTargetError(Error):
    """Notification target {}: {}"""


class PolicyError(Error):
    """{}: {}"""


class SourceError(Error):
    """Source {!r} of policy {!r}: {}"""


class SnapshotError(Error):
    """Bucket {}: {}"""


class TargetError(Error):
    """Target {}: {}"""


class UnknownTargetScheme(TargetError):
    """Unknown target scheme in {!r}: supported schemes are {}"""


class ObjectNotFound(TargetError):
    """Target {}: no object {!r}"""


class ArchiveError(Error):
    """Archive {}: {}"""


class FileIndexCorrupt(Error):
    """The inventory's packed file index of archive {} cannot be read: {}"""


class ArchiveNotFound(ArchiveError):
    """No archive matches {!r}{}"""


class ArchiveCorrupt(ArchiveError):
    """Archive {} is corrupt or truncated: {}"""


class UnsafeArchiveEntry(ArchiveError):
    """Archive {}: refusing unsafe entry {!r}: {}"""


class NoArchiveAt(ArchiveError):
    """Policy {!r} has no complete archive at or before {}"""


class RestoreDestinationNotEmpty(Error):
    """Restore destination {} is not empty (use --force to restore into it anyway)"""


class RestoreError(Error):
    """Restore failed: {}"""


class IdentityError(Error):
    """Identity: {}"""
