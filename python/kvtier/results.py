"""What lookup, save and load answer."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LookupResult", "SaveResult", "LoadResult", "SAVE_STATUSES"]

SAVE_STATUSES = ("stored", "present", "busy", "no-space", "io-error")


@dataclass(frozen=True)
class LookupResult:
    """``prefix``: how many leading keys are held; ``present``: one flag per key."""

    prefix: int
    present: list[bool]


@dataclass(frozen=True)
class SaveResult:
    """``status`` per key (one of SAVE_STATUSES) and the counts the server reported."""

    status: list[str]
    stored: int
    present: int
    rejected: int


@dataclass(frozen=True)
class LoadResult:
    """``loaded`` per key (only those blocks were written) and ``prefix``, the leading run loaded."""

    loaded: list[bool]
    prefix: int

    @staticmethod
    def none(n: int) -> "LoadResult":
        """The result an engine acts on when a load failed: no block loaded."""
        return LoadResult([False] * n, 0)
