"""EngineClient: one connection to ``kvtier serve --engine-socket`` (docs/engine-channel.md).

Requests are pipelined: any thread may send, and one reader thread completes each request's
future by id. When the connection drops, every waiting future fails at once with
KVTIER_CLOSED and later calls raise it too, so the engine recomputes instead of hanging.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import BAD_ARGUMENT, CLOSED, PROTOCOL, TIMEOUT, KvtierError
from .frames import encode_frame, read_frame
from .pools import CudaPool, HostPool, Pool
from .results import LoadResult, LookupResult, SaveResult

if TYPE_CHECKING:
    import torch

__all__ = ["EngineClient"]

Answer = tuple[dict[str, Any], bytes]
T = TypeVar("T")


def _keys_payload(keys: Sequence[bytes]) -> tuple[int, bytes]:
    """The keys back to back, and their common size (the server checks the size's range)."""
    blobs = []
    for i, k in enumerate(keys):
        if not isinstance(k, (bytes, bytearray, memoryview)):
            raise KvtierError(BAD_ARGUMENT, f"key {i} is {type(k).__name__}, not bytes")
        blobs.append(bytes(k))
    size = len(blobs[0])
    if any(len(b) != size for b in blobs):
        raise KvtierError(BAD_ARGUMENT, "all keys of one request must have the same size")
    return size, b"".join(blobs)


def _block_ids(block_ids: Sequence[int]) -> list[int]:
    out = []
    for b in block_ids:
        if isinstance(b, bool) or not hasattr(b, "__index__"):
            raise KvtierError(BAD_ARGUMENT, f"block id {b!r} is not an integer")
        out.append(b.__index__())
    return out


HINTS = ("soon", "closed")
_MAX_ID = 256
_MAX_SAFE = 2**53 - 1


def _call_fields(session: str | int | None, hint: str | None, request: str | int | None) -> dict[str, Any]:
    """The header fields telling the server's eviction policy about this request, checked here with
    the server's rules (docs/policies.md, "Hints through the API"): ids are strings of 1 to 256
    characters (UTF-16 code units, as the server counts them) or integers within +-(2^53 - 1)."""
    out: dict[str, Any] = {}
    for name, value in (("session", session), ("request", request)):
        if value is None:
            continue
        if isinstance(value, str):
            try:
                units = len(value.encode("utf-16-le")) // 2
            except UnicodeEncodeError:  # a lone surrogate: no JSON text can carry it
                units = 0
            ok = 1 <= units <= _MAX_ID
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and abs(value) <= _MAX_SAFE
        if not ok:
            raise KvtierError(BAD_ARGUMENT, f"{name} must be a string of 1 to {_MAX_ID} characters or an integer")
        out[name] = value
    if hint is not None:
        if hint not in HINTS:
            raise KvtierError(BAD_ARGUMENT, f"hint must be 'soon' or 'closed', not {hint!r}")
        out["hint"] = hint
    return out


def _combine(parts: list[Future[T]], merge: Callable[[list[T]], T]) -> Future[T]:
    """One future for several chunk requests: the first failure, or the merged results."""
    if len(parts) == 1:
        return parts[0]
    out: Future[T] = Future()
    remaining = [len(parts)]
    lock = threading.Lock()

    def done(_: Future[T]) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0] or out.done():
                return
        failed = next((p.exception() for p in parts if p.exception() is not None), None)
        if failed is not None:
            out.set_exception(failed)
        else:
            out.set_result(merge([p.result() for p in parts]))

    for p in parts:
        p.add_done_callback(done)
    return out


def _leading(flags: list[bool]) -> int:
    n = 0
    while n < len(flags) and flags[n]:
        n += 1
    return n


class EngineClient:
    """A connection to the engine channel. Thread-safe; also a context manager."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self._sock = sock
        self._timeout = timeout
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pending: dict[int, Future[Answer]] = {}
        self._next_id = 1
        # Names this client's own request ids apart from every other client's.
        self._call_prefix = os.urandom(8).hex()
        self._call_serial = 0
        self._closed: KvtierError | None = None
        self._pools: dict[str, Pool] = {}
        self.block_bytes = 0
        self.max_batch = 0
        self.server_pid = 0
        self.tiers: list[Any] = []
        self._reader = threading.Thread(target=self._read_loop, name="kvtier-engine-reader", daemon=True)
        self._reader.start()

    @classmethod
    def connect(cls, path: str, name: str = "", timeout: float = 30.0) -> "EngineClient":
        """Connects and says hello; ``timeout`` bounds the connect and every later call's wait."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.settimeout(None)
        except OSError as e:
            sock.close()
            raise KvtierError(CLOSED, f"cannot connect to the engine socket {path}: {e}") from None
        client = cls(sock, timeout)
        try:
            hello, _ = client._call({"op": "hello", "version": 1, "name": name})
        except BaseException:
            client.close()
            raise
        if hello.get("version") != 1:
            client.close()
            raise KvtierError(PROTOCOL, f"the server speaks engine channel version {hello.get('version')}")
        client.block_bytes = int(hello["blockBytes"])
        client.max_batch = int(hello["maxBatch"])
        client.server_pid = int(hello["pid"])
        client.tiers = list(hello.get("tiers") or [])
        return client

    # --- connection -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def _read_exactly(self, n: int) -> bytes | None:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self._sock.recv_into(view[got:])
            if k == 0:
                if got == 0:
                    return None
                raise KvtierError(PROTOCOL, "the connection ended inside a frame")
            got += k
        return bytes(buf)

    def _read_loop(self) -> None:
        reason = "the server closed the connection"
        try:
            while True:
                frame = read_frame(self._read_exactly)
                if frame is None:
                    break
                header, payload = frame
                rid = header.get("id")
                if rid == 0:
                    reason = f"the server refused a frame: {header.get('code')}: {header.get('message')}"
                    break
                with self._lock:
                    fut = self._pending.pop(rid, None) if isinstance(rid, int) else None
                if fut is None:
                    reason = f"an answer to no request in flight (id {rid!r})"
                    break
                if header.get("ok") is True:
                    fut.set_result((header, payload))
                else:
                    fut.set_exception(
                        KvtierError(str(header.get("code", PROTOCOL)), str(header.get("message", "")))
                    )
        except KvtierError as e:
            reason = e.message
        except OSError as e:
            reason = f"the connection failed: {e}"
        self._fail_all(reason)

    def _fail_all(self, reason: str) -> None:
        with self._lock:
            if self._closed is None:
                self._closed = KvtierError(CLOSED, reason)
            pending, self._pending = self._pending, {}
            error = self._closed
        for fut in pending.values():
            fut.set_exception(KvtierError(CLOSED, error.message))
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        """Closes the connection; the server drops this connection's registrations."""
        self._fail_all("the client closed the connection")
        if threading.current_thread() is not self._reader:
            self._reader.join()
        self._sock.close()

    def __enter__(self) -> "EngineClient":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- requests ---------------------------------------------------------------------------

    def _request(self, header: dict[str, Any], payload: bytes = b"") -> Future[Answer]:
        fut: Future[Answer] = Future()
        with self._lock:
            if self._closed is not None:
                raise KvtierError(CLOSED, self._closed.message)
            rid = self._next_id
            self._next_id += 1
            self._pending[rid] = fut
        frame = encode_frame({**header, "id": rid}, payload)
        try:
            with self._send_lock:
                self._sock.sendall(frame)
        except OSError as e:
            self._fail_all(f"the connection failed: {e}")
        return fut

    def _wait(self, fut: Future[T]) -> T:
        try:
            return fut.result(self._timeout)
        except FutureTimeout:
            # A sidecar silent this long is treated as gone: later calls fail fast.
            self._fail_all(f"no answer within {self._timeout} s")
            raise KvtierError(TIMEOUT, f"no answer within {self._timeout} s") from None

    def _call(self, header: dict[str, Any], payload: bytes = b"") -> Answer:
        return self._wait(self._request(header, payload))

    # --- pools ------------------------------------------------------------------------------

    def register_pool(self, pool: Pool) -> Pool:
        """Registers a pool built elsewhere (an engine's own shared memory, see the adapters)."""
        self._register(pool)
        return pool

    def _register(self, pool: Pool) -> None:
        answer, _ = self._call(
            {"op": "register", "pool": pool.name, "memory": pool.memory(), "layout": pool.wire_layout()}
        )
        pool.num_blocks = int(answer["numBlocks"])
        pool.block_bytes = int(answer["blockBytes"])
        pool.registered = True
        with self._lock:
            self._pools[pool.name] = pool

    def register_host_pool(self, layout: dict[str, Any], name: str = "kv") -> HostPool:
        """Allocates a memfd of the layout's extent, maps it and registers it."""
        pool = HostPool(layout, name)
        try:
            self._register(pool)
        except BaseException:
            pool.close()
            raise
        return pool

    def register_cuda_pool(self, tensors: list["torch.Tensor"], layout: dict[str, Any], name: str = "kv") -> CudaPool:
        """Registers CUDA tensors (in the layout form's tensor order) by their IPC handles."""
        pool = CudaPool(tensors, layout, name)
        self._register(pool)
        return pool

    def release(self, pool: Pool) -> None:
        """Unregisters the pool (the server unmaps it once operations on it end)."""
        self._call({"op": "release", "pool": pool.name})
        pool.registered = False
        with self._lock:
            self._pools.pop(pool.name, None)

    # --- blocks -----------------------------------------------------------------------------

    def _spans(self, keys: list[bytes], blocks: list[int] | None = None) -> list[slice]:
        """The requests a call becomes: maxBatch keys each. Lists of unequal length go whole, so
        the server judges them (KVTIER_BAD_ARGUMENT) as one request."""
        n = len(keys)
        if blocks is not None and len(blocks) != n:
            return [slice(0, max(n, len(blocks)))]
        step = self.max_batch if self.max_batch > 0 else max(n, 1)
        return [slice(i, i + step) for i in range(0, n, step)]

    def _call_of(self, session: str | int | None, hint: str | None, request: str | int | None) -> dict[str, Any]:
        """A call's checked fields. One that names a session or hint but no request gets a request
        id of its own, so that its requests (one per maxBatch keys) are one request to the policy."""
        fields = _call_fields(session, hint, request)
        if fields and "request" not in fields:
            with self._lock:
                self._call_serial += 1
                fields["request"] = f"\u0001py-{self._call_prefix}-{self._call_serial}"
        return fields

    def lookup_async(
        self,
        keys: Sequence[bytes],
        *,
        session: str | int | None = None,
        hint: str | None = None,
        request: str | int | None = None,
    ) -> Future[LookupResult]:
        keys = list(keys)
        call = _call_fields(session, hint, request)
        parts: list[Future[LookupResult]] = []
        for s in self._spans(keys):
            size, payload = _keys_payload(keys[s])
            header = {"op": "lookup", "keyBytes": size, "n": len(keys[s]), **call}
            parts.append(self._map(self._request(header, payload), _lookup_result))
        if not parts:
            return _resolved(LookupResult(0, []))

        def merge(rs: list[LookupResult]) -> LookupResult:
            present = [p for r in rs for p in r.present]
            return LookupResult(_leading(present), present)

        return _combine(parts, merge)

    def lookup(
        self,
        keys: Sequence[bytes],
        *,
        session: str | int | None = None,
        hint: str | None = None,
        request: str | int | None = None,
    ) -> LookupResult:
        """How many leading keys are held, and which. ``session``, ``hint`` and ``request`` are checked
        like a save's; a lookup changes nothing, so they go no further."""
        return self._wait(self.lookup_async(keys, session=session, hint=hint, request=request))

    def _block_requests(
        self, op: str, pool: Pool, keys: Sequence[bytes], block_ids: Sequence[int], extra: dict[str, Any]
    ) -> list[Future[Answer]]:
        keys, blocks = list(keys), _block_ids(block_ids)
        parts = []
        for s in self._spans(keys, blocks):
            size, payload = _keys_payload(keys[s]) if keys[s] else (32, b"")
            header = {"op": op, "pool": pool.name, "blocks": blocks[s], "keyBytes": size, **extra}
            parts.append(self._request(header, payload))
        return parts

    def save_async(
        self,
        pool: Pool,
        keys: Sequence[bytes],
        block_ids: Sequence[int],
        priority: int | None = None,
        *,
        session: str | int | None = None,
        hint: str | None = None,
        request: str | int | None = None,
    ) -> Future[SaveResult]:
        extra = {**({} if priority is None else {"priority": priority}), **self._call_of(session, hint, request)}
        answers = self._block_requests("save", pool, keys, block_ids, extra)
        if not answers:
            return _resolved(SaveResult([], 0, 0, 0))

        def merge(rs: list[SaveResult]) -> SaveResult:
            status = [x for r in rs for x in r.status]
            return SaveResult(
                status, sum(r.stored for r in rs), sum(r.present for r in rs), sum(r.rejected for r in rs)
            )

        return _combine([self._map(a, _save_result) for a in answers], merge)

    def save(
        self,
        pool: Pool,
        keys: Sequence[bytes],
        block_ids: Sequence[int],
        priority: int | None = None,
        *,
        session: str | int | None = None,
        hint: str | None = None,
        request: str | int | None = None,
    ) -> SaveResult:
        """Gathers each listed block out of the pool and stores it under its key.

        A call longer than maxBatch goes as several requests; a bad one among them fails the call
        though the others may have stored their blocks. ``session`` (the engine's conversation id),
        ``hint`` ('soon': waiting for a tool; 'closed': the conversation is over) and ``request``
        (the engine's request id: a load and a save naming the same one are one request) tell the
        server's eviction policy what the engine knows (docs/policies.md, "Hints through the API").
        """
        return self._wait(
            self.save_async(pool, keys, block_ids, priority, session=session, hint=hint, request=request)
        )

    def load_async(
        self,
        pool: Pool,
        keys: Sequence[bytes],
        block_ids: Sequence[int],
        *,
        session: str | int | None = None,
        hint: str | None = None,
        request: str | int | None = None,
    ) -> Future[LoadResult]:
        answers = self._block_requests("load", pool, keys, block_ids, self._call_of(session, hint, request))
        if not answers:
            return _resolved(LoadResult([], 0))

        def merge(rs: list[LoadResult]) -> LoadResult:
            loaded = [x for r in rs for x in r.loaded]
            return LoadResult(loaded, _leading(loaded))

        return _combine([self._map(a, _load_result) for a in answers], merge)

    def load(
        self,
        pool: Pool,
        keys: Sequence[bytes],
        block_ids: Sequence[int],
        *,
        session: str | int | None = None,
        hint: str | None = None,
        request: str | int | None = None,
    ) -> LoadResult:
        """Scatters each found, verified block into its listed engine block.

        Raises KvtierError if the request fails (KVTIER_CLOSED when the sidecar went away): then no
        block counts as loaded, whatever the pool holds (``LoadResult.none(n)``). ``session``,
        ``hint`` and ``request`` as for save.
        """
        return self._wait(self.load_async(pool, keys, block_ids, session=session, hint=hint, request=request))

    def pin(self, keys: Sequence[bytes], ttl_ms: int | None = None) -> int:
        """Keeps the keys' blocks from eviction; returns the lease id for unpin."""
        size, payload = _keys_payload(list(keys)) if keys else (32, b"")
        header: dict[str, Any] = {"op": "pin", "keyBytes": size, "n": len(keys)}
        if ttl_ms is not None:
            header["ttlMs"] = ttl_ms
        answer, _ = self._call(header, payload)
        return int(answer["lease"])

    def unpin(self, lease: int) -> None:
        self._call({"op": "unpin", "lease": lease})

    def stats(self) -> dict[str, Any]:
        """The server's Warehouse ``stats`` and this channel's ``engine`` counters."""
        answer, _ = self._call({"op": "stats"})
        return {k: v for k, v in answer.items() if k not in ("id", "ok")}

    @staticmethod
    def _map(fut: Future[Answer], convert: Callable[[dict[str, Any]], T]) -> Future[T]:
        out: Future[T] = Future()

        def done(f: Future[Answer]) -> None:
            error = f.exception()
            if error is not None:
                out.set_exception(error)
                return
            try:
                out.set_result(convert(f.result()[0]))
            except (KeyError, TypeError, ValueError) as e:
                out.set_exception(KvtierError(PROTOCOL, f"malformed answer: {e!r}"))

        fut.add_done_callback(done)
        return out


def _lookup_result(h: dict[str, Any]) -> LookupResult:
    return LookupResult(int(h["prefix"]), [bool(p) for p in h["present"]])


def _save_result(h: dict[str, Any]) -> SaveResult:
    return SaveResult([str(x) for x in h["status"]], int(h["stored"]), int(h["present"]), int(h["rejected"]))


def _load_result(h: dict[str, Any]) -> LoadResult:
    return LoadResult([bool(x) for x in h["loaded"]], int(h["prefix"]))


def _resolved(value: T) -> Future[T]:
    fut: Future[T] = Future()
    fut.set_result(value)
    return fut
