"""Resumable FTP firmware downloads (firmware.update.download) from a real pyftpdlib server on loopback."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from diagnostics_peers import UploadFtpServer, sha256
from pyftpdlib.handlers import DTPHandler

from firmware.update import download

BLOB = os.urandom(300_000)
NEW_BLOB = os.urandom(280_000)
NAME = "pkg v2.bin"  # a space: the URL carries it percent-encoded, RETR gets it decoded
URL_PATH = "fw/pkg%20v2.bin"


def serve(root: Path, data: bytes = BLOB, mtime: int = 1_790_000_000) -> Path:
    path = root / "fw" / NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def rest_commands(server: UploadFtpServer) -> list[str]:
    return [c for c in server.commands if c.startswith("REST")]


def left_over(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.parent.iterdir())


class DropOnce(DTPHandler):  # type: ignore[misc]
    """The first download's data connection closes after ``limit`` bytes (426), as a dying link would."""

    limit = 100_000
    dropped = 0

    def use_sendfile(self) -> bool:
        return False  # count and cut in initiate_send

    def initiate_send(self) -> None:
        super().initiate_send()
        if DropOnce.dropped == 0 and not self._closed and self.tot_bytes_sent >= self.limit:
            DropOnce.dropped += 1
            self.handle_close()  # the producer is not empty: pyftpdlib answers 426


def test_ftp_download_from_a_subdirectory_arrives_intact(tmp_path: Path) -> None:
    serve(tmp_path / "ftp")
    dest = tmp_path / "dl" / "fw.pkg"
    seen: list[tuple[int, int | None]] = []
    with UploadFtpServer(tmp_path / "ftp") as server:
        got = download.fetch(server.url(directory=URL_PATH), dest, progress=lambda s, t: seen.append((s, t)))
    assert got == download.Fetched(dest, len(BLOB), 0)
    assert sha256(dest.read_bytes()) == sha256(BLOB)
    assert seen[-1] == (len(BLOB), len(BLOB)) and len(seen) > 1
    assert left_over(dest) == ["fw.pkg"]
    assert server.commands[:3] == ["USER evse", "PASS ***", "CWD fw"]
    assert f"SIZE {NAME}" in server.commands and f"MDTM {NAME}" in server.commands
    assert f"RETR {NAME}" in server.commands and rest_commands(server) == []


def test_ftp_download_cancelled_mid_way_resumes_with_rest(tmp_path: Path) -> None:
    serve(tmp_path / "ftp")
    dest = tmp_path / "dl" / "fw.pkg"
    part = dest.with_name("fw.pkg.part")
    cancel = threading.Event()

    def progress(size: int, total: int | None) -> None:
        if size >= 100_000:
            cancel.set()

    with UploadFtpServer(tmp_path / "ftp") as server:
        url = server.url(directory=URL_PATH)
        with pytest.raises(download.DownloadCancelled):
            download.fetch(url, dest, progress=progress, cancel=cancel)
        assert not dest.exists()  # a partial file never looks complete
        kept = part.stat().st_size
        assert 100_000 <= kept < len(BLOB)
        assert BLOB.startswith(part.read_bytes())
        server.commands.clear()
        got = download.fetch(url, dest)  # e.g. after a restart: only files carry the state
    assert got.resumed_from == kept and got.size == len(BLOB)
    assert sha256(dest.read_bytes()) == sha256(BLOB)
    assert f"REST {kept}" in rest_commands(server)
    assert left_over(dest) == ["fw.pkg"]


def test_ftp_download_dropped_by_the_server_resumes_with_rest(tmp_path: Path) -> None:
    serve(tmp_path / "ftp")
    dest = tmp_path / "dl" / "fw.pkg"
    part = dest.with_name("fw.pkg.part")
    DropOnce.dropped = 0
    with UploadFtpServer(tmp_path / "ftp", dtp_handler=DropOnce) as server:
        url = server.url(directory=URL_PATH)
        with pytest.raises(download.DownloadError, match="426") as info:
            download.fetch(url, dest)
        assert "secret" not in str(info.value)
        kept = part.stat().st_size
        assert DropOnce.dropped == 1 and 0 < kept < len(BLOB)
        server.commands.clear()
        got = download.fetch(url, dest)
    assert got.resumed_from == kept and dest.read_bytes() == BLOB
    assert rest_commands(server)[-1] == f"REST {kept}"
    assert left_over(dest) == ["fw.pkg"]


def test_ftp_download_starts_over_when_the_file_changed_on_the_server(tmp_path: Path) -> None:
    served = serve(tmp_path / "ftp")
    dest = tmp_path / "dl" / "fw.pkg"
    part = dest.with_name("fw.pkg.part")
    cancel = threading.Event()
    with UploadFtpServer(tmp_path / "ftp") as server:
        url = server.url(directory=URL_PATH)
        with pytest.raises(download.DownloadCancelled):
            download.fetch(url, dest, progress=lambda s, t: cancel.set(), cancel=cancel)
        assert part.stat().st_size > 0
        serve(tmp_path / "ftp", NEW_BLOB, mtime=1_790_000_600)  # a new build: other size, other time
        assert served.read_bytes() == NEW_BLOB
        server.commands.clear()
        got = download.fetch(url, dest)
    assert got == download.Fetched(dest, len(NEW_BLOB), 0)
    assert sha256(dest.read_bytes()) == sha256(NEW_BLOB)
    assert rest_commands(server) == []
    assert left_over(dest) == ["fw.pkg"]


def test_ftp_download_starts_over_when_the_server_refuses_rest(tmp_path: Path) -> None:
    def ftp_REST(handler: Any, line: str) -> None:
        handler.respond("502 Command not implemented.")

    serve(tmp_path / "ftp")
    dest = tmp_path / "dl" / "fw.pkg"
    part = dest.with_name("fw.pkg.part")
    dest.parent.mkdir()
    part.write_bytes(b"\0" * 50_000)  # not even a prefix: it must not survive
    with UploadFtpServer(tmp_path / "ftp", handler_attrs={"ftp_REST": ftp_REST}) as server:
        url = server.url(directory=URL_PATH)
        cancel = threading.Event()
        with pytest.raises(download.DownloadCancelled):
            download.fetch(url, dest, progress=lambda s, t: cancel.set(), cancel=cancel)
        part.write_bytes(b"\0" * 50_000)  # same URL and validator, wrong bytes
        got = download.fetch(url, dest)
    assert got.resumed_from == 0 and dest.read_bytes() == BLOB
    assert rest_commands(server) == ["REST 50000"]  # tried once, refused, then RETR from 0
    assert left_over(dest) == ["fw.pkg"]


def test_ftp_download_without_size_or_mdtm_still_completes(tmp_path: Path) -> None:
    def refuse(handler: Any, line: str) -> None:
        handler.respond("502 Command not implemented.")

    serve(tmp_path / "ftp")
    dest = tmp_path / "dl" / "fw.pkg"
    seen: list[int | None] = []
    with UploadFtpServer(tmp_path / "ftp", handler_attrs={"ftp_SIZE": refuse, "ftp_MDTM": refuse}) as server:
        got = download.fetch(server.url(directory=URL_PATH), dest, progress=lambda s, t: seen.append(t))
    assert got == download.Fetched(dest, len(BLOB), 0) and dest.read_bytes() == BLOB
    assert set(seen) == {None}


def test_ftp_download_errors_keep_the_password_out(tmp_path: Path) -> None:
    serve(tmp_path / "ftp")
    with UploadFtpServer(tmp_path / "ftp") as server:
        port = server.port
        with pytest.raises(download.DownloadError) as info:
            download.fetch(server.url(password="Hunter2-wrong", directory=URL_PATH), tmp_path / "a.pkg")
        assert "530" in str(info.value) and "Hunter2-wrong" not in str(info.value)
        assert "evse:***@" in str(info.value)
        with pytest.raises(download.DownloadError, match="550") as info:
            download.fetch(server.url(directory="fw/missing.bin"), tmp_path / "b.pkg")
        assert "secret" not in str(info.value)
        with pytest.raises(download.DownloadError, match="550"):
            download.fetch(server.url(directory="nowhere/pkg.bin"), tmp_path / "c.pkg")
        with pytest.raises(download.DownloadError, match="no file name"):
            download.fetch(server.url(directory="fw/"), tmp_path / "d.pkg")
    with pytest.raises(download.DownloadError, match="cannot connect") as info:
        download.fetch(f"ftp://evse:secret@127.0.0.1:{port}/fw/x.bin", tmp_path / "e.pkg")  # the server is gone
    assert "secret" not in str(info.value)
    assert not (tmp_path / "a.pkg").exists() and not (tmp_path / "b.pkg").exists()
