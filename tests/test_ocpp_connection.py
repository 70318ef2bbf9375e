"""The CSMS WebSocket: backoff, TLS/auth for security profiles 0–3, and reconnecting after every kind of loss.

Real websockets servers on 127.0.0.1 (port 0); backoff delays are milliseconds, so nothing sleeps for seconds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from firmware.ocpp.connection import (
    Backoff,
    ConnectionConfigError,
    ConnectionState,
    OcppConnection,
    WebSocketLike,
    basic_auth_header,
    build_ssl_context,
)
from hal.clock import FakeClock

SERVER_LOG = logging.getLogger("tests.csms")  # the test CSMS; it legitimately sees the key
KEY = "S3cr3t-AuthKey-0123456789abcdef"
CP = "CP-1"


# ------------------------------------------------------------------------------------------- helpers


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_of(server: Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


Handler = Callable[[ServerConnection], Awaitable[None]]


@contextlib.asynccontextmanager
async def csms(handler: Handler | None = None, port: int = 0, **kwargs: Any) -> AsyncIterator[Server]:
    async def keep_open(connection: ServerConnection) -> None:
        await connection.wait_closed()

    kwargs.setdefault("subprotocols", [Subprotocol("ocpp1.6")])
    async with serve(
        handler or keep_open,
        "127.0.0.1",
        port,
        logger=SERVER_LOG,
        close_timeout=0.2,
        ping_interval=None,
        **kwargs,
    ) as server:
        yield server


def fast(url: str, **kwargs: Any) -> OcppConnection:
    kwargs.setdefault("backoff", Backoff(initial_s=0.001, maximum_s=0.01, jitter=0.0))
    kwargs.setdefault("ping_interval", lambda: 0.0)
    kwargs.setdefault("open_timeout_s", 2.0)
    kwargs.setdefault("close_timeout_s", 0.3)
    return OcppConnection(url, CP, **kwargs)


class Recorder:
    """A session that reads until the socket closes, remembering every socket it was given."""

    def __init__(self) -> None:
        self.sockets: list[ClientConnection] = []

    @property
    def sessions(self) -> int:
        return len(self.sockets)

    async def __call__(self, ws: WebSocketLike) -> None:
        assert isinstance(ws, ClientConnection)
        self.sockets.append(ws)
        while True:
            await ws.recv()


@contextlib.asynccontextmanager
async def running(
    conn: OcppConnection, session: Callable[[WebSocketLike], Awaitable[None]]
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(conn.run(session))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert conn.state == "idle"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    """PEM files: the CA, and a charge point certificate issued by it."""
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    leaf = ca.issue_cert("CP-1")
    cert, key = tmp_path / "cp.pem", tmp_path / "cp.key"
    for i, pem in enumerate(leaf.cert_chain_pems):
        pem.write_to_path(str(cert), append=i > 0)
    leaf.private_key_pem.write_to_path(str(key))
    return {"ca_file": str(ca_file), "client_cert": str(cert), "client_key": str(key)}


def server_tls(ca: trustme.CA, *, require_client_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(ctx)
    return ctx


# ------------------------------------------------------------------------------------------- backoff


def test_backoff_grows_to_the_cap_and_resets() -> None:
    b = Backoff(initial_s=1.0, maximum_s=300.0, factor=2.0, jitter=0.0)
    delays = [b.next_delay() for _ in range(12)]
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
    b.reset()
    assert b.next_delay() == 1.0


def test_backoff_never_overflows() -> None:
    b = Backoff(initial_s=1.0, maximum_s=1e300, factor=1e10, jitter=0.0)
    assert [b.next_delay() for _ in range(100)][-1] == 1e300
    assert b.base(10_000) == 1e300


def test_backoff_full_jitter_spans_zero_to_base() -> None:
    b = Backoff(initial_s=10.0, maximum_s=10.0, jitter=1.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(2000)]
    assert 0.0 <= min(delays) < 0.5 and 9.5 < max(delays) <= 10.0


@pytest.mark.parametrize(
    "kwargs",
    [{"initial_s": 0}, {"initial_s": 5, "maximum_s": 1}, {"factor": 0.5}, {"jitter": 1.5}, {"jitter": -0.1}],
)
def test_backoff_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)  # type: ignore[arg-type]


@given(
    initial=st.floats(0.001, 10.0),
    extra=st.floats(0.0, 1000.0),
    factor=st.floats(1.0, 10.0),
    jitter=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32),
    steps=st.integers(1, 40),
    reset_at=st.integers(0, 40),
)
def test_backoff_delays_stay_within_jitter_bounds(
    initial: float, extra: float, factor: float, jitter: float, seed: int, steps: int, reset_at: int
) -> None:
    maximum = initial + extra
    b = Backoff(initial, maximum, factor, jitter, rng=random.Random(seed))
    n = 0
    for step in range(steps):
        if step == reset_at:
            b.reset()
            n = 0
        base = b.base()
        assert base == pytest.approx(min(maximum, initial * factor**n), rel=1e-9)
        delay = b.next_delay()
        assert (1.0 - jitter) * base <= delay <= base <= maximum
        n += 1


# ------------------------------------------------------------------------------------------- pure helpers


def test_basic_auth_header_uses_the_key_as_given() -> None:
    assert basic_auth_header("CP-1", "0123456789abcdef0123456789abcdef01234567") == "Basic " + base64.b64encode(
        b"CP-1:0123456789abcdef0123456789abcdef01234567"
    ).decode("ascii")
    assert basic_auth_header("Zähler", "kéy") == "Basic " + base64.b64encode("Zähler:kéy".encode()).decode("ascii")


def test_url_percent_encodes_the_charge_point_id() -> None:
    conn = OcppConnection("ws://csms.example/ocpp16/", "CP 1/ä?#")
    assert conn.url == "ws://csms.example/ocpp16/CP%201%2F%C3%A4%3F%23"
    assert OcppConnection("wss://csms.example/ocpp", "CP-1").url == "wss://csms.example/ocpp/CP-1"
    assert conn.state == "idle" and not conn.connected and conn.reconnects == 0 and conn.last_error is None


@pytest.mark.parametrize(
    ("url", "profile", "match"),
    [
        ("http://csms.example/ocpp", 0, "must be a ws://"),
        ("ws://user:pw@csms.example/ocpp", 1, "credentials"),
        ("ws://csms.example/ocpp", 2, "needs a wss://"),
        ("ws://csms.example/ocpp", 3, "needs a wss://"),
        ("ws://csms.example/ocpp", 4, "security profile"),
    ],
)
def test_config_errors(url: str, profile: int, match: str) -> None:
    with pytest.raises(ConnectionConfigError, match=match):
        OcppConnection(url, CP, security_profile=profile)
    with pytest.raises(ConnectionConfigError, match="empty"):
        OcppConnection("ws://csms.example", "")


def test_ssl_context_per_profile(tls: dict[str, str]) -> None:
    assert build_ssl_context(0, tls["ca_file"], "", "") is None
    assert build_ssl_context(1, tls["ca_file"], "", "") is None
    for profile in (2, 3):
        ctx = build_ssl_context(profile, tls["ca_file"], tls["client_cert"], tls["client_key"])
        assert ctx is not None
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
        assert ctx.cert_store_stats()["x509_ca"] == 1  # only the configured CA, not the system store
    system = build_ssl_context(2, "", "", "")
    assert system is not None and system.verify_mode == ssl.CERT_REQUIRED


def test_ssl_context_errors_name_the_file_but_not_its_contents(tls: dict[str, str], tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("TOP-SECRET-CONTENT\n")
    missing = str(tmp_path / "missing.pem")

    def error(*args: Any) -> str:
        with pytest.raises(ConnectionConfigError) as info:
            build_ssl_context(*args)
        return str(info.value)

    assert missing in error(2, missing, "", "")
    message = error(2, str(garbage), "", "")
    assert str(garbage) in message and "TOP-SECRET" not in message
    assert "client certificate" in error(3, tls["ca_file"], "", "")
    assert missing in error(3, tls["ca_file"], missing, tls["client_key"])
    assert missing in error(3, tls["ca_file"], tls["client_cert"], missing)
    message = error(3, tls["ca_file"], str(garbage), tls["client_key"])
    assert str(garbage) in message and "TOP-SECRET" not in message
    with pytest.raises(ConnectionConfigError, match="security profile"):
        build_ssl_context(7, "", "", "")
    # Construction fails early on unusable files.
    with pytest.raises(ConnectionConfigError, match=r"missing\.pem"):
        OcppConnection("wss://csms.example", CP, security_profile=2, ca_file=missing)


def test_encrypted_client_key_is_an_error_not_a_terminal_prompt(tls: dict[str, str], tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(Path(tls["client_key"]).read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    with pytest.raises(ConnectionConfigError, match="encrypted"):
        build_ssl_context(3, tls["ca_file"], tls["client_cert"], str(encrypted))


# ------------------------------------------------------------------------------------------- reconnecting


async def test_reconnects_after_the_server_closes_normally() -> None:
    served = 0

    async def handler(connection: ServerConnection) -> None:
        nonlocal served
        served += 1
        if served == 1:
            await connection.close(1001, "restarting")
        else:
            await connection.wait_closed()

    recorder = Recorder()
    async with csms(handler) as server:
        conn = fast(f"ws://127.0.0.1:{port_of(server)}/ocpp")
        states: list[ConnectionState] = []
        conn.subscribe(states.append)
        async with running(conn, recorder):
            await wait_until(lambda: recorder.sessions == 2 and conn.connected)
            assert conn.reconnects == 1 and conn.connections == 2
            assert conn.last_error is not None and "CSMS closed with code 1001 'restarting'" in conn.last_error
            assert conn.connected_since is not None
            assert recorder.sockets[-1].subprotocol == "ocpp1.6"
    assert states == ["connecting", "connected", "backoff", "connecting", "connected", "idle"]


async def test_reconnects_after_a_tcp_abort_without_close_frame() -> None:
    served = 0

    async def handler(connection: ServerConnection) -> None:
        nonlocal served
        served += 1
        if served == 1:
            connection.transport.abort()
        await connection.wait_closed()

    recorder = Recorder()
    async with csms(handler) as server:
        conn = fast(f"ws://127.0.0.1:{port_of(server)}")
        async with running(conn, recorder):
            await wait_until(lambda: recorder.sessions == 2 and conn.connected)
            assert conn.reconnects == 1
            assert conn.last_error is not None and "without a close frame (code 1006)" in conn.last_error


async def test_keeps_retrying_while_the_server_is_down_then_connects() -> None:
    port = free_port()
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)
        await asyncio.sleep(0.001)

    recorder = Recorder()
    conn = fast(f"ws://127.0.0.1:{port}", backoff=Backoff(0.1, 0.4, 2.0, jitter=0.0), sleep=sleep)
    async with running(conn, recorder):
        await wait_until(lambda: conn.reconnects >= 5)
        assert recorder.sessions == 0 and not conn.connected
        assert conn.last_error is not None and "ConnectionRefusedError" in conn.last_error
        async with csms(port=port):
            await wait_until(lambda: recorder.sessions == 1 and conn.connected)
    assert delays[:5] == [0.1, 0.2, 0.4, 0.4, 0.4]


async def test_http_503_then_ok() -> None:
    refused = 0

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        nonlocal refused
        if refused < 2:
            refused += 1
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "busy\n")
        return None

    recorder = Recorder()
    async with csms(process_request=process_request) as server:
        conn = fast(f"ws://127.0.0.1:{port_of(server)}")
        async with running(conn, recorder):
            await wait_until(lambda: recorder.sessions == 1 and conn.connected)
            assert conn.reconnects == 2 and conn.connections == 1
            assert conn.last_error == "CSMS refused the WebSocket: HTTP 503"


async def test_open_timeout_when_the_server_accepts_tcp_but_never_answers() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        async with server:
            port = server.sockets[0].getsockname()[1]
            conn = fast(f"ws://127.0.0.1:{port}", open_timeout_s=0.1)
            async with running(conn, Recorder()):
                await wait_until(lambda: conn.reconnects >= 2)
                assert conn.last_error is not None and "timed out" in conn.last_error
    finally:
        for writer in writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def test_dead_peer_is_noticed_by_keepalive_and_replaced() -> None:
    served = 0

    async def handler(connection: ServerConnection) -> None:
        nonlocal served
        served += 1
        if served == 1:
            connection.transport.pause_reading()  # never reads again, so never answers a ping
        await connection.wait_closed()

    recorder = Recorder()
    async with csms(handler) as server:
        conn = fast(f"ws://127.0.0.1:{port_of(server)}", ping_interval=lambda: 0.2, ping_timeout_s=0.2)
        async with running(conn, recorder):
            await wait_until(lambda: recorder.sessions == 2 and conn.connected)
            assert recorder.sockets[0].ping_interval == 0.2
            assert conn.last_error is not None
            assert "closed by us with code 1011 'keepalive ping timeout', no close frame back" in conn.last_error


async def test_drop_ends_a_live_session_and_reconnects() -> None:
    closes: list[tuple[int | None, str | None]] = []

    async def handler(connection: ServerConnection) -> None:
        await connection.wait_closed()
        closes.append((connection.close_code, connection.close_reason))

    recorder = Recorder()
    async with csms(handler) as server:
        conn = fast(f"ws://127.0.0.1:{port_of(server)}")
        await conn.drop("nothing to drop")  # not connected: a no-op
        async with running(conn, recorder):
            await wait_until(lambda: conn.connected)
            await conn.drop("CALL Heartbeat timed out " + "x" * 200)
            await wait_until(lambda: recorder.sessions == 2 and conn.connected)
            assert conn.last_error is not None and conn.last_error.startswith("dropped (CALL Heartbeat timed out")
            await wait_until(lambda: len(closes) == 1)
    code, reason = closes[0]
    assert code == 1000 and reason is not None and reason.startswith("CALL Heartbeat timed out")
    assert len(reason.encode()) <= 123


async def test_server_without_the_subprotocol_is_a_failure_and_retried() -> None:
    offered = 0

    def select(connection: ServerConnection, subprotocols: list[Subprotocol]) -> Subprotocol | None:
        nonlocal offered
        offered += 1
        return None if offered <= 2 else Subprotocol("ocpp1.6")

    closes: list[int | None] = []

    async def handler(connection: ServerConnection) -> None:
        await connection.wait_closed()
        closes.append(connection.close_code)

    recorder = Recorder()
    async with csms(handler, select_subprotocol=select) as server:
        conn = fast(f"ws://127.0.0.1:{port_of(server)}")
        async with running(conn, recorder):
            await wait_until(lambda: recorder.sessions == 1 and conn.connected)
            assert conn.reconnects == 2
            assert [ws.subprotocol for ws in recorder.sockets] == ["ocpp1.6"]
            assert conn.last_error is not None and "did not agree on subprotocol 'ocpp1.6'" in conn.last_error
            await wait_until(lambda: len(closes) == 2)
            assert closes == [1002, 1002]


async def test_backoff_resets_only_after_a_stable_connection() -> None:
    clock = FakeClock()
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)
        await asyncio.sleep(0)

    calls = 0

    async def session(ws: WebSocketLike) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            clock.advance(30.0)  # this one lasted min_stable_s

    async with csms() as server:
        conn = fast(
            f"ws://127.0.0.1:{port_of(server)}",
            backoff=Backoff(0.001, 1.0, 2.0, jitter=0.0),
            sleep=sleep,
            clock=clock,
            min_stable_s=30.0,
        )
        async with running(conn, session):
            await wait_until(lambda: len(delays) >= 5)
    assert delays[:5] == [0.001, 0.002, 0.001, 0.002, 0.004]


async def test_session_errors_and_stuck_sessions_do_not_stop_reconnecting() -> None:
    calls = 0
    stuck = asyncio.Event()

    async def session(ws: WebSocketLike) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("handler bug")
        if calls == 2:
            await stuck.wait()  # ignores the socket entirely
        await ws.recv()

    served = 0

    async def handler(connection: ServerConnection) -> None:
        nonlocal served
        served += 1
        if served == 2:
            await connection.close()
        await connection.wait_closed()

    async with csms(handler) as server:
        conn = fast(f"ws://127.0.0.1:{port_of(server)}", close_timeout_s=0.05)
        messages: list[str] = []
        conn.subscribe(lambda state: messages.append(state))
        async with running(conn, session):
            await wait_until(lambda: calls == 3 and conn.connected)
    assert messages.count("connected") == 3


async def test_ping_interval_is_read_at_every_attempt() -> None:
    intervals = iter([0.0, 0.5])
    recorder = Recorder()
    async with csms() as server:
        conn = fast(f"ws://127.0.0.1:{port_of(server)}", ping_interval=lambda: next(intervals, 0.5))
        async with running(conn, recorder):
            await wait_until(lambda: conn.connected)
            await conn.drop("test")
            await wait_until(lambda: recorder.sessions == 2 and conn.connected)
    assert [ws.ping_interval for ws in recorder.sockets] == [None, 0.5]


async def test_cancellation_closes_the_socket_cleanly() -> None:
    closes: list[int | None] = []

    async def handler(connection: ServerConnection) -> None:
        await connection.wait_closed()
        closes.append(connection.close_code)

    async with csms(handler) as server:
        conn = fast(f"ws://127.0.0.1:{port_of(server)}")
        task = asyncio.create_task(conn.run(Recorder()))
        await wait_until(lambda: conn.connected)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert conn.state == "idle" and conn.connected_since is None
        await wait_until(lambda: closes == [1000])
        with pytest.raises(RuntimeError):
            # a second run() while one is active is a bug
            running_task = asyncio.create_task(conn.run(Recorder()))
            await asyncio.sleep(0)
            await conn.run(Recorder())
        running_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running_task


def test_listener_errors_are_contained_and_unsubscribe_works() -> None:
    conn = OcppConnection("ws://csms.example", CP)
    seen: list[ConnectionState] = []

    def broken(state: ConnectionState) -> None:
        raise RuntimeError("listener bug")

    conn.subscribe(broken)
    unsubscribe = conn.subscribe(seen.append)
    conn._set_state("connecting")
    unsubscribe()
    unsubscribe()
    conn._set_state("backoff")
    assert seen == ["connecting"]


# ------------------------------------------------------------------------------------------- security profiles


def auth_recorder(seen: list[str | None]) -> Callable[[ServerConnection, Request], Response | None]:
    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        seen.append(request.headers.get("Authorization"))
        return None

    return process_request


async def test_profile_0_sends_no_authorization() -> None:
    seen: list[str | None] = []
    async with csms(process_request=auth_recorder(seen)) as server:
        conn = fast(f"ws://127.0.0.1:{port_of(server)}", authorization_key=lambda: KEY)
        async with running(conn, Recorder()):
            await wait_until(lambda: conn.connected)
    assert seen == [None]


async def test_profile_1_sends_basic_auth() -> None:
    seen: list[str | None] = []
    async with csms(process_request=auth_recorder(seen)) as server:
        conn = fast(f"ws://127.0.0.1:{port_of(server)}", security_profile=1, authorization_key=lambda: KEY)
        async with running(conn, Recorder()):
            await wait_until(lambda: conn.connected)
    assert seen == ["Basic " + base64.b64encode(f"{CP}:{KEY}".encode()).decode("ascii")]


async def test_profile_2_over_wss_with_a_private_ca(ca: trustme.CA, tls: dict[str, str]) -> None:
    seen: list[str | None] = []
    async with csms(process_request=auth_recorder(seen), ssl=server_tls(ca)) as server:
        conn = fast(
            f"wss://127.0.0.1:{port_of(server)}/ocpp",
            security_profile=2,
            authorization_key=lambda: KEY,
            ca_file=tls["ca_file"],
        )
        recorder = Recorder()
        async with running(conn, recorder):
            await wait_until(lambda: conn.connected)
        assert recorder.sockets[0].transport.get_extra_info("ssl_object") is not None
    assert seen == [basic_auth_header(CP, KEY)]


async def test_wss_with_profile_0_still_verifies_the_server(ca: trustme.CA, tls: dict[str, str]) -> None:
    async with csms(ssl=server_tls(ca)) as server:
        url = f"wss://127.0.0.1:{port_of(server)}"
        conn = fast(url, ca_file=tls["ca_file"])
        async with running(conn, Recorder()):
            await wait_until(lambda: conn.connected)
        untrusted = fast(url)  # system store: does not know the test CA
        async with running(untrusted, Recorder()):
            await wait_until(lambda: untrusted.reconnects >= 2)
            assert untrusted.connections == 0
            assert untrusted.last_error is not None and "certificate verification failed" in untrusted.last_error


async def test_wrong_ca_fails_verification_and_is_retried(ca: trustme.CA, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    async with csms(ssl=server_tls(ca)) as server:
        conn = fast(f"wss://127.0.0.1:{port_of(server)}", security_profile=2, ca_file=str(other))
        recorder = Recorder()
        async with running(conn, recorder):
            await wait_until(lambda: conn.reconnects >= 2)
            assert recorder.sessions == 0
            assert conn.last_error is not None and "certificate verification failed" in conn.last_error


async def test_security_failures_are_reported_by_kind(ca: trustme.CA, tmp_path: Path) -> None:
    """Refused credentials and an unverifiable CSMS certificate reach the security listener; a refused TCP
    connection (no CSMS there) is no security event."""
    seen: list[tuple[str, str]] = []

    def reject(connection: ServerConnection, request: Request) -> Response | None:
        return connection.respond(HTTPStatus.UNAUTHORIZED, "bad credentials\n")

    async with csms(process_request=reject) as server:
        conn = fast(f"ws://127.0.0.1:{port_of(server)}", security_profile=1, authorization_key=lambda: KEY)
        conn.on_security_failure = lambda kind, reason: seen.append((kind, reason))
        async with running(conn, Recorder()):
            await wait_until(lambda: conn.reconnects >= 2)
    assert seen[0] == ("authentication", "CSMS refused the WebSocket: HTTP 401 (credentials rejected)")
    assert {kind for kind, _ in seen} == {"authentication"}

    seen.clear()
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    async with csms(ssl=server_tls(ca)) as server:
        conn = fast(f"wss://127.0.0.1:{port_of(server)}", security_profile=2, ca_file=str(other))
        conn.on_security_failure = lambda kind, reason: seen.append((kind, reason))
        async with running(conn, Recorder()):
            await wait_until(lambda: conn.reconnects >= 2)
    assert seen and {kind for kind, _ in seen} == {"certificate"}
    assert "certificate verification failed" in seen[0][1]

    seen.clear()
    conn = fast(f"ws://127.0.0.1:{free_port()}")
    conn.on_security_failure = lambda kind, reason: seen.append((kind, reason))
    async with running(conn, Recorder()):
        await wait_until(lambda: conn.reconnects >= 2)
    assert seen == []


async def test_profile_3_needs_the_client_certificate(ca: trustme.CA, tls: dict[str, str]) -> None:
    seen: list[str | None] = []
    async with csms(process_request=auth_recorder(seen), ssl=server_tls(ca, require_client_cert=True)) as server:
        url = f"wss://127.0.0.1:{port_of(server)}"
        without = fast(url, security_profile=2, ca_file=tls["ca_file"], authorization_key=lambda: KEY)
        recorder = Recorder()
        async with running(without, recorder):
            await wait_until(lambda: without.reconnects >= 2)
            assert recorder.sessions == 0 and without.last_error is not None
        assert seen == []  # the TLS handshake failed before any HTTP request was read

        with_cert = fast(url, security_profile=3, **tls)
        async with running(with_cert, recorder):
            await wait_until(lambda: with_cert.connected)
        assert recorder.sessions == 1
    assert seen == [None]  # profile 3 authenticates with the certificate only


# ------------------------------------------------------------------------------------------- secrets


async def test_the_authorization_key_never_reaches_a_log_record(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = basic_auth_header(CP, KEY).split(" ", 1)[1]

    def reject(connection: ServerConnection, request: Request) -> Response | None:
        return connection.respond(HTTPStatus.UNAUTHORIZED, "bad credentials\n")

    async def fail_session(ws: WebSocketLike) -> None:
        raise RuntimeError("session failed")

    async with csms() as server:  # success, then a session failure, then drop
        conn = fast(f"ws://127.0.0.1:{port_of(server)}", security_profile=1, authorization_key=lambda: KEY)
        async with running(conn, Recorder()):
            await wait_until(lambda: conn.connected)
            await conn.drop("test")
            await wait_until(lambda: conn.connections == 2 and conn.connected)
        failing = fast(f"ws://127.0.0.1:{port_of(server)}", security_profile=1, authorization_key=lambda: KEY)
        async with running(failing, fail_session):
            await wait_until(lambda: failing.connections >= 2)
    async with csms(process_request=reject) as server:  # HTTP 401
        conn = fast(f"ws://127.0.0.1:{port_of(server)}", security_profile=1, authorization_key=lambda: KEY)
        async with running(conn, Recorder()):
            await wait_until(lambda: conn.reconnects >= 2)
            assert conn.last_error == "CSMS refused the WebSocket: HTTP 401 (credentials rejected)"
    conn = fast(f"ws://127.0.0.1:{free_port()}", security_profile=1, authorization_key=lambda: KEY)
    async with running(conn, Recorder()):  # connection refused
        await wait_until(lambda: conn.reconnects >= 2)

    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    client_records = [r for r in caplog.records if not r.name.startswith(SERVER_LOG.name)]
    texts = [formatter.format(r) for r in client_records]
    assert not [t for t in texts if KEY in t or token in t]
    # The websockets client did log its request headers at DEBUG, redacted.
    assert any(
        r.name == "firmware.ocpp.connection.websockets" and r.getMessage() == "> Authorization: [redacted]"
        for r in client_records
    )
    assert any("HTTP 401" in t for t in texts) and any("ConnectionRefusedError" in t for t in texts)
    assert any("session raised RuntimeError" in t for t in texts)
