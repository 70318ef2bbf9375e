"""A small blocking client for the control socket (see :mod:`firmware.api`), used by the ``evse`` CLI.

Blocking on purpose: the CLI sends one request and exits, so an event loop would only add start-up time.
"""

from __future__ import annotations

import json
import socket
from typing import Any

MAX_REPLY = 64 * 1024 * 1024
"""Largest reply accepted, so a confused peer cannot make the CLI eat all memory."""


class DaemonUnavailable(ConnectionError):
    """No daemon answers on the socket (not running, wrong path, no permission, or no reply in time)."""


class RemoteError(Exception):
    """The daemon answered ``ok: false``; the message is its reason."""


class ProtocolError(Exception):
    """The daemon's reply was not a valid API reply."""


class ApiClient:
    """Sends one request per connection to the daemon's control socket at ``path``."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout

    def request(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        """Send ``cmd`` with ``args`` and return the result; raises the errors above instead of ok=false."""
        line = json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
            except FileNotFoundError:
                raise DaemonUnavailable(
                    f"cannot reach the evse daemon at {self.path}: no such socket (is `evse run` running?)"
                ) from None
            except ConnectionRefusedError:
                raise DaemonUnavailable(
                    f"cannot reach the evse daemon at {self.path}: connection refused (is `evse run` running?)"
                ) from None
            except PermissionError:
                raise DaemonUnavailable(
                    f"cannot reach the evse daemon at {self.path}: permission denied "
                    "(run as a member of the socket's group, or with sudo)"
                ) from None
            except TimeoutError:
                raise DaemonUnavailable(
                    f"cannot reach the evse daemon at {self.path}: no answer within {self.timeout:g} s"
                ) from None
            except OSError as exc:
                raise DaemonUnavailable(f"cannot reach the evse daemon at {self.path}: {exc.strerror or exc}") from None
            try:
                sock.sendall(line)
                raw = self._read_line(sock)
            except TimeoutError:
                raise DaemonUnavailable(
                    f"the evse daemon at {self.path} did not answer {cmd!r} within {self.timeout:g} s"
                ) from None
            except OSError as exc:
                raise DaemonUnavailable(
                    f"lost the connection to the evse daemon at {self.path}: {exc.strerror or exc}"
                ) from None
        return self._decode(raw)

    def _read_line(self, sock: socket.socket) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise DaemonUnavailable(f"the evse daemon at {self.path} closed the connection without a reply")
            newline = chunk.find(b"\n")
            if newline >= 0:
                chunks.append(chunk[:newline])
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_REPLY:
                raise ProtocolError(f"reply from {self.path} is larger than {MAX_REPLY} bytes")

    def _decode(self, raw: bytes) -> Any:
        try:
            reply = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProtocolError(f"unreadable reply from {self.path}: {exc}") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            raise ProtocolError(f"unexpected reply from {self.path}: {raw[:200]!r}")
        if not reply["ok"]:
            raise RemoteError(str(reply.get("error") or "request refused without a reason"))
        return reply.get("result")
