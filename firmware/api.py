"""The local control and status API: a Unix socket speaking one JSON object per line.

The CLI, tests and (later) a web page talk to the running daemon through it. A Unix socket keeps it local and
lets file permissions decide who may drive the charger; JSON lines keep it scriptable with ``socat`` alone.

Request:  ``{"cmd": "<name>", "args": {...}}``; reply: ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "<message>"}``. Several requests may share a connection; they are answered in order.
Nothing a client sends can crash the server: every bad request gets an ``ok: false`` reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import errno
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Mapping
from datetime import date, datetime
from pathlib import Path, PurePath
from types import TracebackType
from typing import Any, Self

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[Any]]

MAX_LINE = 64 * 1024
"""Longest accepted request line in bytes (without the newline); longer ones end the connection."""


class ApiError(Exception):
    """A handler's clean refusal; its message goes to the client verbatim (no traceback is logged)."""


def _json_default(value: Any) -> Any:
    """Turn the few non-JSON types handlers naturally return (times, enums, dataclasses) into JSON."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _encode(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply, default=_json_default, ensure_ascii=False, allow_nan=False).encode() + b"\n"


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


class ControlServer:
    """Serves ``handlers`` (command name → coroutine taking the args object) on a Unix socket at ``path``."""

    def __init__(self, path: str, handlers: Mapping[str, Handler], *, mode: int = 0o660) -> None:
        self.path = path
        self._handlers = dict(handlers)
        self._mode = mode
        self._server: asyncio.Server | None = None
        self._inode: int | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind the socket; a stale file from a crashed daemon is replaced, a live daemon is not."""
        if self._server is not None:
            raise RuntimeError("control server already started")
        sock_path = Path(self.path)
        sock_path.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale(sock_path)
        self._server = await asyncio.start_unix_server(self._serve, path=self.path, limit=MAX_LINE)
        try:
            os.chmod(self.path, self._mode)
            self._inode = os.stat(self.path).st_ino
        except OSError:
            await self.close()
            raise
        log.info("control API listening on %s", self.path)

    @staticmethod
    def _remove_stale(sock_path: Path) -> None:
        try:
            st = sock_path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(errno.EEXIST, f"{sock_path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(str(sock_path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing stale control socket %s", sock_path)
            with contextlib.suppress(FileNotFoundError):
                sock_path.unlink()
            return
        except OSError as exc:
            raise OSError(exc.errno, f"cannot probe existing control socket {sock_path}: {exc}") from exc
        finally:
            probe.close()
        raise OSError(errno.EADDRINUSE, f"another daemon is already answering on {sock_path}")

    async def close(self) -> None:
        """Stop listening, end open connections and remove our socket file (not a successor's)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        self._inode = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._converse(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went away or we are shutting down; nothing to answer
        except Exception:
            log.exception("control API connection failed")
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:
                writer.write(_encode(_error(f"bad request: line longer than {MAX_LINE} bytes")))
                await writer.drain()
                return
            except asyncio.IncompleteReadError as exc:
                line = exc.partial  # EOF: answer a last request sent without a newline, if any
                if not line.strip():
                    return
            if line.strip():
                writer.write(await self._answer(line))
                await writer.drain()
            if not line.endswith(b"\n"):
                return

    async def _answer(self, line: bytes) -> bytes:
        """The encoded reply to one request line; a result that cannot be encoded becomes an error reply."""
        reply = await self._dispatch(line)
        try:
            return _encode(reply)
        except (TypeError, ValueError) as exc:
            log.error("control API reply not encodable: %s", exc)
            return _encode(_error(f"internal error: result not JSON serializable ({exc})"))

    async def _dispatch(self, line: bytes) -> dict[str, Any]:
        """Decode, validate and run one request; every failure becomes an error reply."""
        try:
            request = json.loads(line)
        except UnicodeDecodeError:
            return _error("bad request: not UTF-8")
        except json.JSONDecodeError as exc:
            return _error(f"bad request: invalid JSON ({exc.msg} at column {exc.colno})")
        if not isinstance(request, dict):
            return _error('bad request: expected a JSON object like {"cmd": "status"}')
        cmd = request.get("cmd")
        if cmd is None:
            return _error('bad request: missing "cmd"')
        if not isinstance(cmd, str):
            return _error('bad request: "cmd" must be a string')
        args = request.get("args", {})
        if args is None:
            args = {}
        if not isinstance(args, dict):
            return _error('bad request: "args" must be an object')
        handler = self._handlers.get(cmd)
        if handler is None:
            known = ", ".join(sorted(self._handlers)) or "none"
            return _error(f"unknown command {cmd!r} (known: {known})")
        try:
            result = await handler(args)
        except ApiError as exc:
            return _error(str(exc) or type(exc).__name__)
        except Exception as exc:
            log.exception("control API command %r failed", cmd)
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return _error(f"internal error: {detail}")
        return {"ok": True, "result": result}
