"""Shared helpers of the adapter tests: a real `kvtier serve --engine-socket` sidecar, engine-owned
KV memory in a memfd (as vLLM or SGLang would allocate it), and the KV bytes a fake model computes.

KVTIER_CLI names the CLI to run (default: this repository's dist/apps/cli/main.js). The same
conventions as conftest.py's fixtures; kept here so the adapter tests do not depend on them.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "python") not in sys.path:
    sys.path.insert(0, str(REPO / "python"))

import kvtier  # noqa: E402

# When the client comes from another checkout (PYTHONPATH), the adapters of this one still load.
_here = str(REPO / "python" / "kvtier")
if _here not in [str(p) for p in kvtier.__path__]:
    kvtier.__path__.append(_here)

CLI = Path(os.environ.get("KVTIER_CLI") or REPO / "dist" / "apps" / "cli" / "main.js")

try:
    import torch
except ImportError:  # torch is optional: the numpy arm of each test still runs
    torch = None  # type: ignore[assignment]

ARRAY_KINDS = ["numpy"] + (["torch"] if torch is not None else [])


def until(what: str, check: Callable[[], bool], seconds: float = 20.0) -> None:
    """Polls ``check`` until it holds; fails naming ``what`` past the deadline. No fixed sleeps."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


class Sidecar:
    """A running `kvtier serve --engine-socket` (engines only, host tier)."""

    def __init__(self, directory: Path, block_bytes: int, host_bytes: str) -> None:
        if not CLI.exists():
            raise AssertionError(f"{CLI} is missing: build with `node scripts/build-ts.mjs` or set KVTIER_CLI")
        directory.mkdir(parents=True, exist_ok=True)
        self.socket = str(directory / "engine.sock")
        if os.path.exists(self.socket):
            os.unlink(self.socket)  # a killed sidecar leaves its socket file behind
        args = ["node", str(CLI), "serve", "--engine-socket", self.socket,
                "--block-bytes", str(block_bytes), "--host-bytes", host_bytes]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._pump_out, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr or []), daemon=True).start()

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"kvtier serve exited with {self.proc.returncode}: {''.join(self.stderr)}")
            return any(x.get("event") == "listening" for x in self.lines) and os.path.exists(self.socket)

        try:
            until("kvtier serve's listening line", ready, 60.0)
        except BaseException:
            self.kill()
            raise
        self.listening = next(x for x in self.lines if x.get("event") == "listening")

    def _pump_out(self) -> None:
        for raw in self.proc.stdout or []:
            try:
                self.lines.append(json.loads(raw))
            except ValueError:
                self.lines.append({"event": "text", "text": raw})

    @property
    def capacity_blocks(self) -> int:
        return sum(int(t["capacityBlocks"]) for t in self.listening["tiers"])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


class SharedMemory:
    """Engine-owned memory in a memfd mapped shared: what an engine (or its allocator) hands the
    adapters. The adapters find the descriptor themselves through /proc/self/maps."""

    def __init__(self, nbytes: int, name: str = "engine-kv") -> None:
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, nbytes)
        self.map = mmap.mmap(self.fd, nbytes, mmap.MAP_SHARED)
        self.bytes = np.frombuffer(self.map, dtype=np.uint8)
        # Garbage, not zeros: a load that wrote nothing must not pass for one that wrote zeros.
        self.bytes[:] = np.random.default_rng(12345).integers(0, 256, nbytes, dtype=np.uint8)

    def view(self, offset: int, shape: tuple[int, ...], kind: str) -> Any:
        """A bf16 array (numpy: its uint16 bits) or torch tensor over this memory."""
        count = int(np.prod(shape))
        arr = np.frombuffer(self.map, dtype=np.uint16, count=count, offset=offset).reshape(shape)
        if kind == "torch":
            assert torch is not None
            return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
        return arr


def bits(t: Any) -> np.ndarray:
    """The uint16 bits of a bf16 numpy array or torch tensor (a view)."""
    if isinstance(t, np.ndarray):
        return t
    return t.view(torch.int16).numpy().view(np.uint16)


def token_kv(tokens: list[int], position: int, rank: int, shape: tuple[int, ...]) -> np.ndarray:
    """What the fake model computes for one token: a function of the whole prefix up to it and of
    the rank's shard, as attention KV is. ``shape`` is (layers, 2, heads, dim)."""
    prefix = np.asarray(tokens[: position + 1], dtype="<u4").tobytes()
    seed = int.from_bytes(hashlib.sha256(prefix + bytes([rank])).digest()[:8], "little")
    return np.random.default_rng(seed).integers(0, 1 << 16, size=shape, dtype=np.uint16)
