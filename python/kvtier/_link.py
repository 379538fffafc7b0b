"""A connection to the sidecar that comes back after the sidecar does.

Engines must never stop serving because kvtier went away: while the sidecar is down every call
here yields no client (the adapters then report misses, and failed loads), and a later call
reconnects, re-registering what the adapter had registered, at most once per ``retry_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .client import EngineClient
from .errors import KvtierError

__all__ = ["Link"]

log = logging.getLogger("kvtier")


class Link:
    def __init__(
        self,
        path: str,
        name: str,
        timeout: float = 30.0,
        retry_s: float = 1.0,
        on_connect: Callable[[EngineClient], None] | None = None,
    ) -> None:
        self.path = path
        self.name = name
        self.timeout = timeout
        self.retry_s = retry_s
        self.on_connect = on_connect
        self.connects = 0  # successful connections, for logs and tests
        self._client: EngineClient | None = None
        self._next_try = 0.0
        self._lock = threading.Lock()

    def get(self) -> EngineClient | None:
        """A live client, or None while the sidecar cannot be reached."""
        with self._lock:
            client = self._client
            if client is not None and not client.closed:
                return client
            if client is not None:
                self._client = None
                log.warning("kvtier: lost the sidecar at %s; engines recompute until it is back", self.path)
                try:
                    client.close()
                except (KvtierError, OSError):
                    pass
            now = time.monotonic()
            if now < self._next_try:
                return None
            try:
                client = EngineClient.connect(self.path, name=self.name, timeout=self.timeout)
            except (KvtierError, OSError) as e:
                self._next_try = now + self.retry_s
                log.warning("kvtier: cannot reach the sidecar at %s: %s", self.path, e)
                return None
            try:
                if self.on_connect is not None:
                    self.on_connect(client)
            except (KvtierError, OSError) as e:
                self._next_try = now + self.retry_s
                log.warning("kvtier: the sidecar at %s refused this engine's pool: %s", self.path, e)
                client.close()
                return None
            self._client = client
            self.connects += 1
            return client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
