"""Real upload servers on loopback for the diagnostics tests: an HTTP server (http.server) and an FTP server
(pyftpdlib), each in a thread of its own, each keeping only what it received completely."""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import hashlib
import logging
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import DTPHandler, FTPHandler
from pyftpdlib.servers import FTPServer

logging.getLogger("pyftpdlib").setLevel(logging.WARNING)  # one INFO line per loop turn otherwise


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Received:
    method: str
    path: str
    filename: str | None
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class UploadHttpServer:
    """POST (multipart/form-data, field ``file``) and PUT; answers ``status`` (200 unless a test changes it).

    A body is stored only when all Content-Length bytes arrived; ``files`` maps the received file name to it.
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.scheme = "https" if tls is not None else "http"
        self.status = 200
        self.received: list[Received] = []
        self.incomplete = 0
        self.requests = 0  # requests whose body arrived completely, whatever the answer
        self.files: dict[str, bytes] = {}
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _body(self) -> bytes | None:
                length = int(self.headers.get("Content-Length", "0"))
                data = b""
                while len(data) < length:
                    chunk = self.rfile.read(min(65536, length - len(data)))
                    if not chunk:
                        return None
                    data += chunk
                return data

            def _answer(self) -> None:
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                data = self._body()
                if data is None:
                    outer.incomplete += 1
                    return
                outer.requests += 1
                if outer.status < 300:
                    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                        b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + data
                    )
                    for part in message.iter_parts():  # type: ignore[attr-defined]
                        if part.get_param("name", header="content-disposition") == "file":
                            name = part.get_filename()
                            payload = part.get_payload(decode=True)
                            with outer.lock:
                                outer.received.append(
                                    Received("POST", self.path, name, payload, dict(self.headers.items()))
                                )
                                outer.files[name] = payload
                self._answer()

            def do_PUT(self) -> None:
                data = self._body()
                if data is None:
                    outer.incomplete += 1
                    return
                outer.requests += 1
                if outer.status < 300:
                    name = self.path.rsplit("/", 1)[-1]
                    with outer.lock:
                        outer.received.append(Received("PUT", self.path, name, data, dict(self.headers.items())))
                        outer.files[name] = data
                self._answer()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> UploadHttpServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class DroppingDTP(DTPHandler):  # type: ignore[misc]
    """Closes the data connection after ``limit`` bytes of an upload, as a dying link or server would."""

    limit = 40_000

    def handle_read(self) -> None:
        super().handle_read()
        if not self._closed and self.tot_bytes_received > self.limit:
            self._resp = ("426 Connection closed by the test server; transfer aborted.", lambda *a: None)
            self.close()

    handle_read_event = handle_read  # pyftpdlib's alias points at the base method


class UploadFtpServer:
    """pyftpdlib on 127.0.0.1: user ``evse``/``secret`` may write in ``root/upload``; ``reader``/``secret``
    may only read. ``drop_after`` makes every data connection close after that many bytes.

    ``commands`` lists every command line the server received, in order (PASS shown as ``PASS ***``);
    ``handler_attrs`` are extra attributes of the control handler class (e.g. an ``ftp_REST`` that refuses)."""

    def __init__(
        self,
        root: Path,
        *,
        drop_after: int | None = None,
        dtp_handler: type[Any] | None = None,
        tls_cert_chain: Path | None = None,
        handler_attrs: dict[str, Any] | None = None,
    ) -> None:
        self.root = root
        self.commands: list[str] = []
        (root / "upload").mkdir(parents=True, exist_ok=True)
        authorizer = DummyAuthorizer()
        authorizer.add_user("evse", "secret", str(root), perm="elradfmw")
        authorizer.add_user("reader", "secret", str(root), perm="elr")
        attrs: dict[str, Any] = {"authorizer": authorizer, "banner": "pievse test ftp", "auth_failed_timeout": 0.05}
        if drop_after is not None:
            attrs["dtp_handler"] = type("Dropping", (DroppingDTP,), {"limit": drop_after})
        elif dtp_handler is not None:
            attrs["dtp_handler"] = dtp_handler
        base: type[Any] = FTPHandler
        self.scheme = "ftp"
        if tls_cert_chain is not None:  # explicit FTPS (AUTH TLS), TLS required on control and data
            from pyftpdlib.handlers import TLS_FTPHandler

            base, self.scheme = TLS_FTPHandler, "ftps"
            attrs |= {"certfile": str(tls_cert_chain), "tls_control_required": True, "tls_data_required": True}
        commands, chosen = self.commands, base

        def pre_process_command(handler: Any, line: str, cmd: str, arg: str) -> None:
            commands.append("PASS ***" if cmd == "PASS" else line)
            chosen.pre_process_command(handler, line, cmd, arg)

        attrs |= {"pre_process_command": pre_process_command} | (handler_attrs or {})
        handler = type("Handler", (base,), attrs)
        self.server = FTPServer(("127.0.0.1", 0), handler)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            self.server.serve_forever(timeout=0.02, blocking=False, handle_exit=False)
        self.server.close_all()

    @property
    def port(self) -> int:
        return int(self.server.socket.getsockname()[1])

    def url(self, user: str = "evse", password: str = "secret", directory: str = "upload/") -> str:
        return f"{self.scheme}://{user}:{password}@127.0.0.1:{self.port}/{directory}"

    def files(self) -> dict[str, bytes]:
        """Every file on the server (relative path -> content)."""
        return {str(p.relative_to(self.root)): p.read_bytes() for p in sorted(self.root.rglob("*")) if p.is_file()}

    def __enter__(self) -> UploadFtpServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join(5)


@contextlib.contextmanager
def http_server() -> Iterator[UploadHttpServer]:
    with UploadHttpServer() as server:
        yield server
