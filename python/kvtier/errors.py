"""The one error type of the kvtier client, with the same stable codes as the Node library."""

from __future__ import annotations

__all__ = ["KvtierError", "BAD_ARGUMENT", "CLOSED", "PROTOCOL", "TIMEOUT"]

BAD_ARGUMENT = "KVTIER_BAD_ARGUMENT"
CLOSED = "KVTIER_CLOSED"
PROTOCOL = "KVTIER_PROTOCOL"
TIMEOUT = "KVTIER_TIMEOUT"


class KvtierError(Exception):
    """An error with a stable ``code`` (safe to branch on) and a ``message`` for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type["KvtierError"], tuple[str, str]]:
        # Keeps the code when an error crosses a process boundary (multiprocessing pickles it).
        return (KvtierError, (self.code, self.message))
