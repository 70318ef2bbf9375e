"""Firmware download over HTTP(S) or FTP, resumable, into ``downloads/`` of the update directory.

Why a thread: the standard library's urllib and ftplib are well-kept, dependency-free blocking clients; one
download at a time runs in ``asyncio.to_thread`` and the event loop never waits on the network.

Resume: bytes go to ``<name>.part`` as they arrive (with ``<name>.part.json`` naming the URL and the server's
validator, ETag or Last-Modified), and only a complete file is renamed to its final name, so a partial file never
looks complete. The next attempt, in this process or after a restart, asks for the rest (``Range: bytes=N-``,
``If-Range`` with the validator). A 206 whose Content-Range starts at N is appended; a 200 (a server that
ignores Range, or an If-Range whose file changed) starts again from byte 0; a 416 starts again from 0 too.

FTP goes through ftplib in binary mode; connecting, login (the URL's credentials, anonymous otherwise), passive
mode and the CWDs are shared with the diagnostics upload (:func:`firmware.diagnostics.upload.ftp_open`). The
validator is built from SIZE and MDTM (a server may refuse either; with neither nothing is resumed). A part of the
same URL and validator is resumed with REST (sent once on its own first, so that a refusal is told apart from a
failing RETR); a changed validator, a part longer than the file or a refused REST start again from byte 0.
Messages show the URL redacted, never the password.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ftplib
import http.client
import json
import logging
import os
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from firmware.diagnostics.upload import Location, LocationError, ftp_open, parse_location

log = logging.getLogger("firmware.update")
SCHEMES = ("http", "https", "ftp")
CHUNK = 64 * 1024
_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_FTP_ERRORS: tuple[type[BaseException], ...] = (*ftplib.all_errors, ValueError)  # ftplib, socket, TLS, bad reply


class DownloadError(Exception):
    """This attempt failed; the partial file (if any) is kept for the next one."""


class DownloadCancelled(DownloadError):
    pass


@dataclass(frozen=True)
class Fetched:
    path: Path
    size: int
    resumed_from: int  # bytes that were already there (0: a fresh download)


def check_url(url: str) -> str | None:
    """Why ``url`` cannot be downloaded, or None if it looks usable."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        return f"malformed URL: {exc}"
    if parts.scheme.lower() not in SCHEMES:
        return f"unsupported scheme {parts.scheme!r} (supported: {', '.join(SCHEMES)})"
    if not parts.hostname:
        return "no host in the URL"
    return None


def _paths(dest: Path) -> tuple[Path, Path]:
    return dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")


def _read_meta(meta: Path) -> dict[str, Any]:
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_meta(meta: Path, data: dict[str, Any]) -> None:
    tmp = meta.with_name(meta.name + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(meta)


def fetch(
    url: str,
    dest: Path,
    *,
    timeout_s: float = 30.0,
    progress: Callable[[int, int | None], None] | None = None,
    cancel: threading.Event | None = None,
) -> Fetched:
    """Download ``url`` to ``dest`` (blocking), resuming a partial download of the same URL."""
    problem = check_url(url)
    if problem is not None:
        raise DownloadError(problem)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if urlsplit(url).scheme.lower() == "ftp":
        return _fetch_ftp(url, dest, timeout_s=timeout_s, progress=progress, cancel=cancel)
    part, meta = _paths(dest)
    info = _read_meta(meta)
    offset = part.stat().st_size if part.exists() and info.get("url") == url else 0
    if offset == 0:
        info = {"url": url}
        _write_meta(meta, info)
        part.write_bytes(b"")
    request = urllib.request.Request(url, headers={"User-Agent": "pievse-firmware-update"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
        if info.get("validator"):
            request.add_header("If-Range", str(info["validator"]))
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # our part is no prefix of what is there now: start over next time
            part.write_bytes(b"")
            raise DownloadError("the server refused the resume range (416); starting over") from exc
        raise DownloadError(f"HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise DownloadError(f"cannot connect: {reason}") from exc
    with response:
        status = getattr(response, "status", None)
        total: int | None = None
        mode = "wb"
        start = 0
        if offset and status == 206:
            match = _RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match[1]) != offset:
                raise DownloadError(f"unexpected Content-Range {response.headers.get('Content-Range')!r}")
            total = None if match[3] == "*" else int(match[3])
            mode, start = "ab", offset
        else:
            length = response.headers.get("Content-Length") if hasattr(response, "headers") else None
            total = int(length) if length and length.isdigit() else None
            if offset:
                log.info("firmware download: the server sent the whole file (status %s); starting from 0", status)
        validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
        if validator:
            _write_meta(meta, {"url": url, "validator": validator})
        size = start
        try:
            with open(part, mode) as f:
                if mode == "wb":
                    f.truncate(0)
                while True:
                    if cancel is not None and cancel.is_set():
                        raise DownloadCancelled("cancelled")
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    size += len(chunk)
                    if progress is not None:
                        progress(size, total)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise DownloadError(f"transfer broke off after {size} bytes: {type(exc).__name__}") from exc
    if total is not None and size != total:
        raise DownloadError(f"transfer broke off after {size} of {total} bytes")
    part.replace(dest)
    meta.unlink(missing_ok=True)
    return Fetched(dest, size, start)


def _ftp_validator(ftp: ftplib.FTP, name: str) -> tuple[int | None, str | None]:
    """(SIZE, a validator from SIZE and MDTM or None); a server may refuse either command."""
    ftp.voidcmd("TYPE I")  # SIZE counts bytes only in binary mode (some servers refuse it in ASCII)
    total = mdtm = None
    with contextlib.suppress(ftplib.error_perm):
        total = ftp.size(name)
    with contextlib.suppress(ftplib.error_perm):
        reply = ftp.sendcmd(f"MDTM {name}")
        mdtm = reply[4:].strip() if reply.startswith("213") else None
    return total, None if total is None and mdtm is None else f"size={total} mdtm={mdtm}"


def _fetch_ftp(
    url: str,
    dest: Path,
    *,
    timeout_s: float,
    progress: Callable[[int, int | None], None] | None,
    cancel: threading.Event | None,
) -> Fetched:
    try:
        loc = parse_location(url)
    except LocationError as exc:
        raise DownloadError(str(exc)) from None
    directory, _, last = loc.path.rpartition("/")
    name = unquote(last)
    if not name:
        raise DownloadError(f"no file name in {loc.redacted()}")
    part, meta = _paths(dest)
    try:
        ftp = ftp_open(dataclasses.replace(loc, path=directory), timeout_s=timeout_s, ca_file="")
    except _FTP_ERRORS as exc:
        raise DownloadError(f"cannot connect to {loc.redacted()}: {_ftp_text(exc, loc)}") from None
    size = start = 0
    try:
        total, validator = _ftp_validator(ftp, name)
        info = _read_meta(meta)
        if validator is not None and info.get("url") == url and info.get("validator") == validator and part.exists():
            start = part.stat().st_size
        if total is not None and start > total:
            start = 0  # longer than the file: no prefix of it
        if start and start != total:
            try:
                ftp.sendcmd(f"REST {start}")  # on its own: a refusal here is the REST's, not the RETR's
            except ftplib.error_perm as exc:
                log.info("firmware download: the FTP server refuses REST (%s); starting from 0", _ftp_text(exc, loc))
                start = 0
        if not start:
            _write_meta(meta, {"url": url, "validator": validator})
        size = start
        with open(part, "ab" if start else "wb") as f:

            def block(data: bytes) -> None:
                nonlocal size
                f.write(data)
                size += len(data)
                if progress is not None:
                    progress(size, total)
                if cancel is not None and cancel.is_set():
                    raise DownloadCancelled("cancelled")

            try:
                if cancel is not None and cancel.is_set():
                    raise DownloadCancelled("cancelled")
                if total is None or start != total:  # equal: complete already, only the rename was missing
                    ftp.retrbinary(f"RETR {name}", block, blocksize=CHUNK, rest=start or None)
            finally:
                f.flush()
                os.fsync(f.fileno())
    except DownloadCancelled:
        ftp.close()
        raise
    except _FTP_ERRORS as exc:
        ftp.close()
        raise DownloadError(f"FTP {loc.redacted()}: {_ftp_text(exc, loc)} (after {size} bytes)") from None
    try:
        ftp.quit()
    except ftplib.all_errors:
        ftp.close()
    if total is not None and size != total:
        if size > total:
            part.write_bytes(b"")  # the file grew under us; the next attempt starts over
        raise DownloadError(f"transfer broke off after {size} of {total} bytes")
    part.replace(dest)
    meta.unlink(missing_ok=True)
    return Fetched(dest, size, start)


def _ftp_text(exc: BaseException, loc: Location) -> str:
    """A server reply or socket error for a message, the password masked should a server echo it."""
    if isinstance(exc, OSError):
        text = f"{type(exc).__name__}: {exc.strerror or exc}"
    else:
        text = str(exc).strip()[:200] or type(exc).__name__
    return text.replace(loc.password, "***") if loc.password else text


def discard(dest: Path) -> None:
    """Remove a download and its partial state."""
    part, meta = _paths(dest)
    for path in (dest, part, meta):
        path.unlink(missing_ok=True)
