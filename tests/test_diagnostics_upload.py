"""Uploads to real servers on loopback: http.server (POST multipart and PUT) and pyftpdlib (FTP)."""

from __future__ import annotations

import os
import socket
import ssl
import string
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from diagnostics_peers import UploadFtpServer, UploadHttpServer, sha256
from hypothesis import given
from hypothesis import strategies as st
from pyftpdlib.handlers import DTPHandler

from firmware.config import default_settings
from firmware.diagnostics.bundle import write_bundle
from firmware.diagnostics.upload import (
    Location,
    LocationError,
    UploadError,
    parse_location,
    upload,
    upload_blocking,
)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A real bundle of a store with a log file."""
    from dataclasses import replace

    store = tmp_path / "store"
    store.mkdir()
    (store / "evse.log").write_text(
        "".join(f"2026-11-27T05:{m:02d}:00.000+00:00 INFO firmware.charging: line {m}\n" for m in range(60))
    )
    s = default_settings()
    settings = replace(s, store=replace(s.store, dir=str(store)), charger=replace(s.charger, id="CP-UP"))
    out = tmp_path / "out"
    out.mkdir()
    return write_bundle(settings, out, now=datetime(2026, 11, 27, 6, tzinfo=UTC), journal=False).path


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    """1 MiB that does not compress: bigger than any socket buffer, so a dropped connection is noticed."""
    path = tmp_path / "CP-UP-diagnostics-20261127T060000Z.tar.gz"
    path.write_bytes(os.urandom(1 << 20))
    return path


# --- HTTP ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_http_upload_arrives_intact(bundle: Path, method: str) -> None:
    with UploadHttpServer() as server:
        await upload(bundle, parse_location(server.url + "/diag/"), method=method, timeout_s=10)
    assert list(server.files) == [bundle.name]
    assert sha256(server.files[bundle.name]) == sha256(bundle.read_bytes())
    request = server.received[0]
    assert request.method == method
    if method == "PUT":
        assert request.path == f"/diag/{bundle.name}"
    else:
        assert request.path == "/diag/"
        assert request.headers["Content-Type"].startswith("multipart/form-data; boundary=")


async def test_http_put_to_a_path_without_slash_goes_inside_it(bundle: Path) -> None:
    with UploadHttpServer() as server:
        await upload(bundle, parse_location(server.url + "/in?token=abc"), method="PUT", timeout_s=10)
    assert server.received[0].path == f"/in/{bundle.name}?token=abc"


async def test_http_basic_credentials_from_the_url(bundle: Path) -> None:
    with UploadHttpServer() as server:
        url = server.url.replace("http://", "http://tech:p%40ss@") + "/"
        await upload(bundle, parse_location(url), method="PUT", timeout_s=10)
    assert server.received[0].headers["Authorization"] == "Basic dGVjaDpwQHNz"  # tech:p@ss


@pytest.mark.parametrize(("status", "kind"), [(500, "failure"), (403, "permission"), (401, "permission")])
@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_http_error_status_is_a_failure(bundle: Path, method: str, status: int, kind: str) -> None:
    with UploadHttpServer() as server:
        server.status = status
        with pytest.raises(UploadError) as info:
            await upload(bundle, parse_location(server.url + "/"), method=method, timeout_s=10)
    assert info.value.kind == kind
    assert f"HTTP {status}" in str(info.value)
    assert server.files == {}


async def test_http_nobody_listening_is_a_failure(bundle: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    with pytest.raises(UploadError) as info:
        await upload(bundle, parse_location(f"http://127.0.0.1:{port}/"), method="POST", timeout_s=5)
    assert info.value.kind == "failure"


async def test_http_server_that_never_answers_times_out(bundle: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        loop_start = datetime.now(UTC)
        with pytest.raises(UploadError) as info:
            await upload(bundle, parse_location(f"http://127.0.0.1:{port}/"), method="PUT", timeout_s=0.5)
        assert (datetime.now(UTC) - loop_start).total_seconds() < 5
    assert info.value.kind == "failure"


# --- FTP ----------------------------------------------------------------------------------------------------


async def test_ftp_upload_arrives_intact_under_the_final_name(bundle: Path, tmp_path: Path) -> None:
    with UploadFtpServer(tmp_path / "ftp") as server:
        await upload(bundle, parse_location(server.url()), timeout_s=10)
        files = server.files()
    assert list(files) == [f"upload/{bundle.name}"]
    assert sha256(files[f"upload/{bundle.name}"]) == sha256(bundle.read_bytes())


async def test_ftp_bad_password_fails_and_writes_nothing(bundle: Path, tmp_path: Path) -> None:
    with UploadFtpServer(tmp_path / "ftp") as server:
        with pytest.raises(UploadError) as info:
            await upload(bundle, parse_location(server.url(password="wrong")), timeout_s=10)
        files = server.files()
    assert info.value.kind == "permission" and "530" in str(info.value)
    assert files == {}


async def test_ftp_without_write_permission_fails_and_leaves_nothing(bundle: Path, tmp_path: Path) -> None:
    with UploadFtpServer(tmp_path / "ftp") as server:
        with pytest.raises(UploadError) as info:
            await upload(bundle, parse_location(server.url(user="reader")), timeout_s=10)
        files = server.files()
    assert info.value.kind == "permission" and "550" in str(info.value)
    assert files == {}


async def test_ftp_missing_directory_fails(bundle: Path, tmp_path: Path) -> None:
    with UploadFtpServer(tmp_path / "ftp") as server:
        with pytest.raises(UploadError):
            await upload(bundle, parse_location(server.url(directory="nowhere/")), timeout_s=10)
        assert server.files() == {}


async def test_ftp_connection_dropped_mid_transfer_leaves_nothing(big_file: Path, tmp_path: Path) -> None:
    with UploadFtpServer(tmp_path / "ftp", drop_after=100_000) as server:
        with pytest.raises(UploadError) as info:
            await upload(big_file, parse_location(server.url()), timeout_s=10)
        files = server.files()
    assert info.value.kind == "failure"
    assert files == {}, f"left on the server: {list(files)}"


def test_ftp_upload_cancelled_mid_transfer_leaves_nothing(big_file: Path, tmp_path: Path) -> None:
    """A superseded job cancels its upload between blocks; the temporary file is deleted on the server."""
    cancel = threading.Event()

    class Signalling(DTPHandler):  # type: ignore[misc]
        def handle_read(self) -> None:
            super().handle_read()
            if self.tot_bytes_received > 100_000:
                cancel.set()

        handle_read_event = handle_read  # pyftpdlib's alias points at the base method

    with UploadFtpServer(tmp_path / "ftp", dtp_handler=Signalling) as server:
        with pytest.raises(UploadError) as info:
            upload_blocking(big_file, parse_location(server.url()), timeout_s=10, cancel=cancel)
        files = server.files()
    assert info.value.kind == "cancelled"
    assert files == {}


async def test_ftp_nobody_listening_is_a_failure(bundle: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UploadError) as info:
        await upload(bundle, parse_location(f"ftp://u:p@127.0.0.1:{port}/"), timeout_s=5)
    assert info.value.kind == "failure"


def test_upload_blocking_rejects_an_unknown_http_method(bundle: Path) -> None:
    with pytest.raises(ValueError):
        upload_blocking(bundle, parse_location("http://127.0.0.1:1/"), method="PATCH")


# --- TLS: HTTPS and explicit FTPS, with a test CA -------------------------------------------------------------


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path, ssl.SSLContext]:
    """(CA file for the client, server key+chain PEM, server context) for 127.0.0.1."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file, chain = tmp_path / "ca.pem", tmp_path / "server.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_and_cert_chain_pem.write_to_path(str(chain))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    return ca_file, chain, context


async def test_https_upload_trusts_the_configured_ca(bundle: Path, tls: tuple[Path, Path, ssl.SSLContext]) -> None:
    ca_file, _, context = tls
    with UploadHttpServer(context) as server:
        await upload(bundle, parse_location(server.url + "/"), method="PUT", timeout_s=10, ca_file=str(ca_file))
        with pytest.raises(UploadError) as info:  # without the CA: the server is not trusted
            await upload(bundle, parse_location(server.url + "/other/"), method="PUT", timeout_s=10)
    assert info.value.kind == "failure" and "TLS" in str(info.value)
    assert list(server.files) == [bundle.name]
    assert sha256(server.files[bundle.name]) == sha256(bundle.read_bytes())


async def test_ftps_upload_arrives_intact(bundle: Path, tmp_path: Path, tls: tuple[Path, Path, ssl.SSLContext]) -> None:
    pytest.importorskip("OpenSSL", reason="pyftpdlib's FTPS server needs pyOpenSSL")
    ca_file, chain, _ = tls
    with UploadFtpServer(tmp_path / "ftp", tls_cert_chain=chain) as server:
        assert server.url().startswith("ftps://")
        await upload(bundle, parse_location(server.url()), timeout_s=10, ca_file=str(ca_file))
        with pytest.raises(UploadError) as info:
            await upload(bundle, parse_location(server.url(directory="")), timeout_s=10)  # CA not trusted
        files = server.files()
    assert info.value.kind == "failure"
    assert list(files) == [f"upload/{bundle.name}"]
    assert sha256(files[f"upload/{bundle.name}"]) == sha256(bundle.read_bytes())


# --- the location parser ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://example.com/up", Location("http", "example.com", None, "/up", "", None, None)),
        ("HTTPS://example.com:8443/a/b/?x=1", Location("https", "example.com", 8443, "/a/b/", "x=1", None, None)),
        ("ftp://user:p%40ss@10.0.0.5/diag/", Location("ftp", "10.0.0.5", None, "/diag/", "", "user", "p@ss")),
        ("ftps://u@[::1]:2121/", Location("ftps", "::1", 2121, "/", "", "u", None)),
    ],
)
def test_location_parsing(url: str, expected: Location) -> None:
    assert parse_location(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "",
        "file:///etc/passwd",
        "sftp://host/dir",
        "http://",
        "http://host:99999/",
        "http://host:0/",
        "ftp://host/dir with space/",
        "ftp://host/a%0d%0aDELE%20x/",
        "//host/dir",
        "http://host/" + "a" * 3000,
    ],
)
def test_unusable_locations_are_refused(url: str) -> None:
    with pytest.raises(LocationError):
        parse_location(url)


def test_redacted_location_never_shows_the_password() -> None:
    loc = parse_location("ftp://tech:hunter2-secret@host:2121/diag/")
    assert loc.redacted() == "ftp://tech:***@host:2121/diag/"
    assert "hunter2" not in loc.redacted()


@given(st.text(max_size=300))
def test_location_parser_accepts_or_refuses_any_text(text: str) -> None:
    try:
        loc = parse_location(text)
    except LocationError:
        return
    assert loc.scheme in ("http", "https", "ftp", "ftps") and loc.host
    assert loc.password is None or loc.password not in loc.redacted().split("@")[0].split(":", 2)[-1]


@given(
    scheme=st.sampled_from(["http", "https", "ftp", "ftps", "HTTP"]),
    host=st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,5}){0,2}", fullmatch=True),
    port=st.one_of(st.none(), st.integers(1, 65535)),
    path=st.lists(st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=8), max_size=4),
    user=st.one_of(st.none(), st.text(string.ascii_letters, min_size=1, max_size=8)),
)
def test_well_formed_locations_round_trip(
    scheme: str, host: str, port: int | None, path: list[str], user: str | None
) -> None:
    netloc = (f"{user}:pw@" if user else "") + host + (f":{port}" if port else "")
    url = f"{scheme}://{netloc}/" + "/".join(path) + ("/" if path else "")
    loc = parse_location(url)
    assert (loc.scheme, loc.host, loc.port, loc.username) == (scheme.lower(), host, port, user)
    assert loc.ftp_dirs() == path
