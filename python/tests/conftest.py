"""Fixtures shared by the Python tests: a real `kvtier serve --engine-socket` process.

KVTIER_CLI names the CLI to run (default: this repository's dist/apps/cli/main.js, built by `npm test`'s
pretest step).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python"))  # the package under test, not an installed copy

CLI = Path(os.environ.get("KVTIER_CLI") or REPO / "dist" / "apps" / "cli" / "main.js")


def until(what: str, check: Callable[[], bool], seconds: float = 20.0) -> None:
    """Polls ``check`` until it holds; fails naming ``what`` past the deadline. No fixed sleeps."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


@dataclass
class Sidecar:
    """A running `kvtier serve` with an engine socket."""

    proc: subprocess.Popen[str]
    socket: str
    block_bytes: int
    listening: dict[str, Any]
    lines: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in list(self.lines) if line.get("event") == name]


def start_sidecar(directory: Path, block_bytes: int, host_bytes: str = "16MiB", *extra: str) -> Sidecar:
    """Starts `kvtier serve` with a temp socket and waits for its `listening` line."""
    if not CLI.exists():
        raise AssertionError(f"{CLI} is missing: build with `node scripts/build-ts.mjs` or set KVTIER_CLI")
    token = directory / "token"
    token.write_text("python-tests-secret-0123456789\n")
    sock = str(directory / "engine.sock")
    args = [
        "node", str(CLI), "serve",
        "--listen", "127.0.0.1:0",
        "--token-file", str(token),
        "--engine-socket", sock,
        "--block-bytes", str(block_bytes),
        "--host-bytes", host_bytes,
        *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[dict[str, Any]] = []
    stderr: list[str] = []

    def pump_stdout() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            try:
                lines.append(json.loads(raw))
            except ValueError:
                lines.append({"event": "text", "text": raw})

    def pump_stderr() -> None:
        assert proc.stderr is not None
        stderr.extend(proc.stderr)

    threading.Thread(target=pump_stdout, daemon=True).start()
    threading.Thread(target=pump_stderr, daemon=True).start()

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"kvtier serve exited with {proc.returncode}: {''.join(stderr)}")
        return any(line.get("event") == "listening" for line in lines) and os.path.exists(sock)

    try:
        until("kvtier serve's listening line", ready, 60.0)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    listening = next(line for line in lines if line.get("event") == "listening")
    return Sidecar(proc, sock, block_bytes, listening, lines)


@pytest.fixture
def sidecars(tmp_path: Path) -> Iterator[Callable[..., Sidecar]]:
    """A factory of sidecars in this test's temp dir; every one is killed at the end."""
    started: list[Sidecar] = []

    def start(block_bytes: int, host_bytes: str = "16MiB", *extra: str) -> Sidecar:
        directory = tmp_path / f"sidecar{len(started)}"
        directory.mkdir()
        sidecar = start_sidecar(directory, block_bytes, host_bytes, *extra)
        started.append(sidecar)
        return sidecar

    yield start
    for sidecar in started:
        if sidecar.alive():
            try:
                os.kill(sidecar.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        sidecar.kill()
