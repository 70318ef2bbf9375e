"""The strict, schema-validating OCPP 1.6J central system (npm ``ocpp-rpc`` 2.2.1, ``strictMode: true``).

``StrictCentralSystem`` runs ``node tests/csms/strict/server.js`` as a subprocess and reads its JSON-line log:
every websocket frame (in and out) with the strict-mode validation errors tied to it. ``violations`` holds the
frames that carry errors; a conforming charger produces none. See ``server.js`` for the line formats.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

STRICT_DIR = Path(__file__).parent / "strict"
SERVER_JS = STRICT_DIR / "server.js"


class StrictCallError(Exception):
    """A CSMS-initiated call failed: CALLERROR from the charger, invalid result, timeout, not connected."""

    def __init__(self, message: str, code: str | None = None, schema_errors: list[Any] | None = None) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.code = code
        self.schema_errors = schema_errors or []


class StrictPeerUnavailable(RuntimeError):
    """node/npm are missing or ``npm ci`` failed."""


def ensure_node_modules(timeout: float = 300.0) -> None:
    """``npm ci`` in tests/csms/strict once if node_modules is missing (file-locked against parallel runs)."""
    if shutil.which("node") is None:
        raise StrictPeerUnavailable("node is not installed (needed for the strict OCPP peer, npm ocpp-rpc)")
    if (STRICT_DIR / "node_modules" / "ocpp-rpc" / "package.json").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise StrictPeerUnavailable("npm is not installed and tests/csms/strict/node_modules is missing")
    with open(Path(tempfile.gettempdir()) / "pievse-strict-csms-npm-ci.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (STRICT_DIR / "node_modules" / "ocpp-rpc" / "package.json").exists():
            return
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=STRICT_DIR,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise StrictPeerUnavailable(f"npm ci in {STRICT_DIR} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")


class StrictCentralSystem:
    """Client id = the charger's identity (last URL path segment)."""

    def __init__(self, node: str = "node") -> None:
        self._node = node
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._port: int | None = None
        self._port_ready: asyncio.Future[int] | None = None
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self.frames: list[dict[str, Any]] = []  # {"dir", "client", "frame", "raw", "errors"}
        self.violations: list[dict[str, Any]] = []  # the frames whose "errors" is not empty
        self.events: list[dict[str, Any]] = []  # {"event": "connect"|"disconnect", "client", ...}
        self.clients: set[str] = set()
        self.stderr: list[str] = []

    async def start(self, timeout: float = 15.0) -> None:
        loop = asyncio.get_running_loop()
        self._port_ready = loop.create_future()
        self._proc = await asyncio.create_subprocess_exec(
            self._node,
            str(SERVER_JS),
            "0",
            cwd=STRICT_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=16 * 1024 * 1024,
        )
        self._reader = asyncio.create_task(self._read_stdout())
        self._stderr_task = asyncio.create_task(self._read_stderr())
        try:
            self._port = await asyncio.wait_for(asyncio.shield(self._port_ready), timeout)
        except (TimeoutError, RuntimeError) as exc:
            await self.stop()
            raise StrictPeerUnavailable(f"strict CSMS did not start: {exc}; stderr: {''.join(self.stderr)}") from exc

    async def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while line := await self._proc.stdout.readline():
            try:
                obj = json.loads(line)
            except ValueError:
                self.stderr.append(f"unparsed stdout: {line!r}\n")
                continue
            self._dispatch(obj)
        exc = RuntimeError(f"strict CSMS exited (stderr: {''.join(self.stderr)[-2000:]})")
        if self._port_ready is not None and not self._port_ready.done():
            self._port_ready.set_exception(exc)
        for fut in self._replies.values():
            if not fut.done():
                fut.set_exception(exc)

    async def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        while line := await self._proc.stderr.readline():
            self.stderr.append(line.decode(errors="replace"))

    def _dispatch(self, obj: dict[str, Any]) -> None:
        if "port" in obj and self._port_ready is not None and not self._port_ready.done():
            self._port_ready.set_result(int(obj["port"]))
        elif "reply" in obj:
            fut = self._replies.pop(obj["reply"], None) if obj["reply"] is not None else None
            if fut is not None and not fut.done():
                fut.set_result(obj)
        elif "dir" in obj:
            self.frames.append(obj)
            if obj.get("errors"):
                self.violations.append(obj)
        elif "event" in obj:
            self.events.append(obj)
            if obj["event"] == "connect":
                self.clients.add(obj["client"])
            elif obj["event"] == "disconnect":
                self.clients.discard(obj["client"])

    @property
    def port(self) -> int:
        assert self._port is not None, "strict CSMS not started"
        return self._port

    @property
    def url(self) -> str:
        """Base URL; the charger appends ``/<charge point id>``."""
        return f"ws://127.0.0.1:{self.port}/ocpp"

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        for task in (self._reader, self._stderr_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, 5)

    async def __aenter__(self) -> StrictCentralSystem:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ control channel
    async def _control(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdin is not None, "strict CSMS not running"
        self._next_id += 1
        req_id = self._next_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[req_id] = fut
        self._proc.stdin.write((json.dumps({"id": req_id, **request}) + "\n").encode())
        await self._proc.stdin.drain()
        try:
            reply = await asyncio.wait_for(fut, timeout)
        finally:
            self._replies.pop(req_id, None)
        if "error" in reply:
            raise StrictCallError(str(reply["error"]), reply.get("code"), reply.get("schemaErrors"))
        return reply

    async def call(self, client: str, action: str, payload: dict[str, Any], timeout: float = 35.0) -> Any:
        """CSMS-initiated CALL (camelCase payload, validated by ocpp-rpc); returns the result dict.

        A CALLERROR from the charger, an invalid CALLRESULT or a call timeout (ocpp-rpc: 30 s) raise
        ``StrictCallError``."""
        reply = await self._control({"client": client, "action": action, "payload": payload}, timeout)
        return reply.get("result")

    async def drop(self, client: str, *, close_frame: bool = True) -> None:
        """Close a charger's socket with a close frame (1000) or terminate the TCP connection without one."""
        await self._control({"op": "drop", "client": client, "closeFrame": close_frame}, 10.0)

    async def set_refuse(self, on: bool) -> None:
        """While on, new upgrade requests are answered with HTTP 503."""
        await self._control({"op": "refuse", "on": on}, 10.0)

    # ------------------------------------------------------------------ queries
    def connected(self, client: str) -> bool:
        return client in self.clients

    def calls(self, action: str | None = None, client: str | None = None) -> list[dict[str, Any]]:
        """Inbound CALL frame records (with their "errors"), optionally filtered."""
        out = []
        for f in self.frames:
            frame = f.get("frame")
            if f["dir"] != "in" or not isinstance(frame, list) or len(frame) < 4 or frame[0] != 2:
                continue
            if (action is None or frame[2] == action) and (client is None or f["client"] == client):
                out.append(f)
        return out

    def received(self, action: str) -> list[dict[str, Any]]:
        """Payloads of inbound CALLs of that action (valid or not)."""
        return [f["frame"][3] for f in self.calls(action)]

    def count(self, action: str) -> int:
        return len(self.calls(action))

    async def wait_for(self, predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.01) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if loop.time() >= deadline:
                raise TimeoutError(f"condition not met within {timeout}s; last frames: {self.frames[-5:]}")
            await asyncio.sleep(interval)


def strict_unavailable_reason() -> str | None:
    """Why the strict peer cannot run here (None if it can), installing node_modules if needed."""
    try:
        ensure_node_modules()
    except (StrictPeerUnavailable, subprocess.TimeoutExpired, OSError) as exc:
        return str(exc)
    return None


def in_ci() -> bool:
    return bool(os.environ.get("CI"))
