"""Errors of the storage client, each saying what happened and what to do."""

from __future__ import annotations


class StorageError(Exception):
    """Base class for storage client errors."""


class FencedError(StorageError):
    """A newer volume epoch exists: this writer was fenced and must not write again."""


class CommitTimeoutError(StorageError):
    """A commit did not reach a write quorum in time; its outcome is unknown until the quorum returns."""


class ReadUnavailableError(StorageError):
    """No member could serve the page at the read point."""


class RecoveryError(StorageError):
    """Recovery could not reach the quorums it needs."""


class LeaseLostError(CommitTimeoutError):
    """Global database: the primary writer holds no lease from every secondary region (one may be
    promoting itself): the commit is not acknowledged; its outcome is unknown."""
