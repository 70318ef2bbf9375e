"""Upload a file to the location the CSMS names: HTTP(S) POST (multipart) or PUT, FTP or explicit FTPS.

The standard library clients (http.client, ftplib) are blocking; :func:`upload` runs one in a worker thread
(``asyncio.to_thread``), the one place diagnostics needs a thread. Each socket operation times out after
``timeout_s`` and the whole upload is bounded by the same figure (checked per 64 KiB block), so an upload that
trickles never outlives its limit.

Nothing half-written keeps the final name on the server: FTP stores under ``<name>.part`` and renames
(RNFR/RNTO) only after the server confirmed the transfer; on any failure the temporary file is deleted (DELE,
on a fresh connection, because the failed one may be out of step). An HTTP server sees a Content-Length and
decides itself what to do with a body that stops short.
"""

from __future__ import annotations

import asyncio
import base64
import ftplib
import http.client
import secrets
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final
from urllib.parse import quote, unquote, urlsplit

SCHEMES: Final = ("http", "https", "ftp", "ftps")
BLOCK: Final = 64 * 1024
MAX_URL: Final = 2048
PART_SUFFIX: Final = ".part"


class LocationError(ValueError):
    """The location is not a URL this charger can upload to (scheme, host, port); the message says why."""


class UploadError(Exception):
    """An upload failed. ``kind``: ``permission`` (refused credentials or rights), ``unsupported`` (the server
    does not do this operation), ``bad_message`` (protocol mismatch), ``cancelled`` or ``failure`` (the rest)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Location:
    """A parsed upload location; ``path`` is the URL path as given (still percent-encoded)."""

    scheme: str
    host: str
    port: int | None
    path: str
    query: str
    username: str | None
    password: str | None

    def redacted(self) -> str:
        """The URL for logs and messages: the password is never shown."""
        user = ""
        if self.username is not None:
            user = quote(self.username, safe="") + (":***" if self.password is not None else "") + "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        query = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{user}{host}{port}{self.path}{query}"

    def ftp_dirs(self) -> list[str]:
        """The directories to CWD into, one per path segment (RFC 1738: relative to the login directory)."""
        return [unquote(seg) for seg in self.path.split("/") if seg]

    def put_target(self, filename: str) -> str:
        """The request target of a PUT: the location is a directory, the file goes inside it."""
        base = self.path if self.path.endswith("/") else (self.path or "") + "/"
        return base + quote(filename) + (f"?{self.query}" if self.query else "")

    def post_target(self) -> str:
        return (self.path or "/") + (f"?{self.query}" if self.query else "")


def parse_location(url: object) -> Location:
    """The location of a GetDiagnostics / GetLog request, checked; LocationError for anything unusable."""
    if not isinstance(url, str) or not url:
        raise LocationError("empty location")
    if len(url) > MAX_URL:
        raise LocationError(f"location longer than {MAX_URL} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise LocationError("location contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise LocationError(f"not a usable URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        shown = scheme or "none"
        raise LocationError(f"unsupported scheme {shown!r} (use {', '.join(s + '://' for s in SCHEMES)})")
    host = parts.hostname
    if not host:
        raise LocationError("no host in the location")
    if port == 0:
        raise LocationError("port 0 in the location")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if scheme.startswith("ftp") and any(c in (username or "") + (password or "") for c in "\r\n"):
        raise LocationError("line breaks in the FTP credentials")
    if scheme.startswith("ftp") and any(c in unquote(parts.path) for c in "\r\n\0"):
        raise LocationError("line breaks in the FTP path")
    return Location(scheme, host, port, parts.path, parts.query, username, password)


# --- the transfer (blocking, in a worker thread) -------------------------------------------------------------


class _Guard:
    """Stops a transfer between blocks when it is cancelled or runs past its deadline."""

    def __init__(self, timeout_s: float, cancel: threading.Event | None) -> None:
        self.deadline = time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        self.cancel = cancel

    def check(self, *_: object) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise UploadError("cancelled", "upload cancelled")
        if time.monotonic() > self.deadline:
            raise UploadError("failure", f"upload took longer than {self.timeout_s:g} s")


def _blocks(handle: BinaryIO, guard: _Guard) -> Iterator[bytes]:
    while True:
        guard.check()
        block = handle.read(BLOCK)
        if not block:
            return
        yield block


def _tls_context(ca_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(ca_file)
    return context


def _http_status_error(status: int, reason: str) -> UploadError:
    text = f"HTTP {status} {reason}".strip()
    if status in (401, 403):
        return UploadError("permission", text)
    if status in (405, 501):
        return UploadError("unsupported", text)
    if status == 400:
        return UploadError("bad_message", text)
    return UploadError("failure", text)


def _http_upload(
    path: Path, loc: Location, filename: str, *, method: str, guard: _Guard, timeout_s: float, ca_file: str
) -> None:
    size = path.stat().st_size
    headers = {"User-Agent": "pievse-diagnostics", "Connection": "close"}
    if loc.username is not None:
        token = base64.b64encode(f"{loc.username}:{loc.password or ''}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
    conn: http.client.HTTPConnection
    if loc.scheme == "https":
        conn = http.client.HTTPSConnection(loc.host, loc.port, timeout=timeout_s, context=_tls_context(ca_file))
    else:
        conn = http.client.HTTPConnection(loc.host, loc.port, timeout=timeout_s)
    try:
        with path.open("rb") as handle:
            if method == "PUT":
                target = loc.put_target(filename)
                headers |= {"Content-Type": "application/gzip", "Content-Length": str(size)}
                body: Iterator[bytes] = _blocks(handle, guard)
            else:
                boundary = "pievse-" + secrets.token_hex(16)
                safe_name = filename.replace('"', "").replace("\r", "").replace("\n", "")
                head = (
                    f"--{boundary}\r\n"
                    f'Content-Disposition: form-data; name="file"; filename="{safe_name}"\r\n'
                    "Content-Type: application/gzip\r\n\r\n"
                ).encode()
                tail = f"\r\n--{boundary}--\r\n".encode()
                target = loc.post_target()
                headers |= {
                    "Content-Type": f"multipart/form-data; boundary={boundary}",
                    "Content-Length": str(len(head) + size + len(tail)),
                }
                body = _framed(head, _blocks(handle, guard), tail)
            conn.request(method, target, body=body, headers=headers)
            response = conn.getresponse()
            response.read(BLOCK)
        if not 200 <= response.status < 300:
            raise _http_status_error(response.status, response.reason)
    except UploadError:
        raise
    except ssl.SSLError as exc:
        raise UploadError("failure", f"TLS: {exc.reason or exc}") from None
    except http.client.HTTPException as exc:
        raise UploadError("bad_message", f"HTTP protocol error: {type(exc).__name__}: {exc}") from None
    except TimeoutError:
        raise UploadError("failure", f"no progress for {timeout_s:g} s") from None
    except OSError as exc:
        raise UploadError("failure", f"{type(exc).__name__}: {exc.strerror or exc}") from None
    finally:
        conn.close()


def _framed(head: bytes, blocks: Iterator[bytes], tail: bytes) -> Iterator[bytes]:
    yield head
    yield from blocks
    yield tail


def _ftp_error(exc: BaseException) -> UploadError:
    if isinstance(exc, UploadError):
        return exc
    text = str(exc).strip()[:200]
    if isinstance(exc, ftplib.error_perm):
        code = text[:3]
        if code in ("502", "504", "500", "501"):
            return UploadError("unsupported", f"FTP: {text}")
        return UploadError("permission", f"FTP: {text}")
    if isinstance(exc, ftplib.error_reply | ftplib.error_proto):
        return UploadError("bad_message", f"FTP: unexpected reply: {text}")
    if isinstance(exc, ftplib.error_temp):
        return UploadError("failure", f"FTP: {text}")
    if isinstance(exc, ssl.SSLError):
        return UploadError("failure", f"FTPS TLS: {exc.reason or exc}")
    if isinstance(exc, TimeoutError):
        return UploadError("failure", "FTP: timed out")
    if isinstance(exc, OSError):
        return UploadError("failure", f"FTP: {type(exc).__name__}: {exc.strerror or exc}")
    return UploadError("failure", f"FTP: {type(exc).__name__}: {text}")


def ftp_open(loc: Location, *, timeout_s: float, ca_file: str) -> ftplib.FTP:
    """Connected, logged in (anonymous without credentials), passive, in the directory ``loc.path`` names (every
    segment is a CWD). Shared with the firmware download, which passes the directory of the file it fetches."""
    ftp: ftplib.FTP
    if loc.scheme == "ftps":
        ftp = ftplib.FTP_TLS(context=_tls_context(ca_file), timeout=timeout_s)
    else:
        ftp = ftplib.FTP(timeout=timeout_s)
    try:
        ftp.connect(loc.host, loc.port or 21, timeout=timeout_s)
        ftp.login(loc.username or "anonymous", loc.password or ("anonymous@" if loc.username is None else ""))
        if isinstance(ftp, ftplib.FTP_TLS):
            ftp.prot_p()
        ftp.set_pasv(True)
        for directory in loc.ftp_dirs():
            ftp.cwd(directory)
    except BaseException:
        ftp.close()
        raise
    return ftp


def _ftp_upload(path: Path, loc: Location, filename: str, *, guard: _Guard, timeout_s: float, ca_file: str) -> None:
    temporary = filename + PART_SUFFIX
    stored = False
    try:
        ftp = ftp_open(loc, timeout_s=timeout_s, ca_file=ca_file)
    except BaseException as exc:
        raise _ftp_error(exc) from None
    try:
        with path.open("rb") as handle:
            stored = True  # from here on a temporary file may exist on the server
            ftp.storbinary(f"STOR {temporary}", handle, blocksize=BLOCK, callback=guard.check)
        guard.check()
        ftp.rename(temporary, filename)
        stored = False
        ftp.quit()
    except BaseException as exc:
        ftp.close()
        if stored:
            _ftp_delete(loc, temporary, timeout_s=timeout_s, ca_file=ca_file)
        raise _ftp_error(exc) from None


def _ftp_delete(loc: Location, name: str, *, timeout_s: float, ca_file: str) -> None:
    """Best effort: remove a temporary file after a failed upload (a fresh connection; errors ignored)."""
    try:
        ftp = ftp_open(loc, timeout_s=min(timeout_s, 30.0), ca_file=ca_file)
    except Exception:
        return
    try:
        ftp.delete(name)
    except Exception:
        pass  # 550: it was never created, or no right to delete what we could not write either
    finally:
        try:
            ftp.quit()
        except Exception:
            ftp.close()


def upload_blocking(
    path: str | Path,
    location: Location,
    *,
    filename: str | None = None,
    method: str = "POST",
    timeout_s: float = 120.0,
    ca_file: str = "",
    cancel: threading.Event | None = None,
) -> None:
    """Upload ``path`` to ``location`` as ``filename`` (default: its own name); UploadError on any failure."""
    source = Path(path)
    name = filename or source.name
    guard = _Guard(timeout_s, cancel)
    if location.scheme in ("http", "https"):
        if method not in ("POST", "PUT"):
            raise ValueError(f"unsupported HTTP method {method!r}")
        _http_upload(source, location, name, method=method, guard=guard, timeout_s=timeout_s, ca_file=ca_file)
    else:
        _ftp_upload(source, location, name, guard=guard, timeout_s=timeout_s, ca_file=ca_file)


async def upload(
    path: str | Path,
    location: Location,
    *,
    filename: str | None = None,
    method: str = "POST",
    timeout_s: float = 120.0,
    ca_file: str = "",
) -> None:
    """:func:`upload_blocking` in a worker thread. Cancelling the awaiting task stops the transfer at its next
    block (the thread then cleans up on its own)."""
    cancel = threading.Event()
    try:
        await asyncio.to_thread(
            upload_blocking,
            path,
            location,
            filename=filename,
            method=method,
            timeout_s=timeout_s,
            ca_file=ca_file,
            cancel=cancel,
        )
    except asyncio.CancelledError:
        cancel.set()
        raise
