"""OCPP-J transport: one WebSocket to the CSMS that always comes back.

The ``ocpp`` package is a message layer only; it needs an object with async ``recv()``/``send()``.
:class:`OcppConnection` owns that object: it connects (URL = base URL + ``/`` + charge point id,
subprotocol ``ocpp1.6``), applies the security profile (whitepaper ed. 2: 1 = HTTP Basic over ws,
2 = HTTP Basic over TLS, 3 = TLS client certificate), hands the socket to a *session* callback (which
runs the ``ChargePoint``), and when the session ends for whatever reason (close frame, TCP reset, dead
peer caught by the WebSocket keepalive, :meth:`OcppConnection.drop`, an exception) it waits a jittered
exponential backoff and connects again. It never gives up; only cancellation stops it.

Secrets: the AuthorizationKey is never formatted into a log message by this module, and the logger
handed to websockets (which logs every request header at DEBUG) carries :class:`RedactAuthorization`,
which blanks ``Authorization:`` header lines.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import re
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Literal, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI
from websockets.frames import CloseCode
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from hal.clock import Clock, SystemClock

__all__ = [
    "MAX_MESSAGE_BYTES",
    "Backoff",
    "ConnectionConfigError",
    "ConnectionState",
    "OcppConnection",
    "RedactAuthorization",
    "WebSocketLike",
    "basic_auth_header",
    "build_ssl_context",
]

log = logging.getLogger("firmware.ocpp.connection")
#: The logger passed to ``websockets`` for our client connections (it logs request headers at DEBUG).
ws_log = logging.getLogger("firmware.ocpp.connection.websockets")

ConnectionState = Literal["idle", "connecting", "connected", "backoff"]

#: Largest incoming OCPP message accepted (a SendLocalList or a charging profile can be large).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: RFC 6455: a close reason is at most 123 bytes of UTF-8.
_MAX_CLOSE_REASON_BYTES = 123


class ConnectionConfigError(ValueError):
    """The connection settings cannot work (bad URL, profile, or certificate files)."""


class WebSocketLike(Protocol):
    """What the OCPP message layer needs from a connection."""

    async def recv(self) -> str | bytes: ...

    async def send(self, message: str) -> None: ...


# --------------------------------------------------------------------------------------------- backoff


class Backoff:
    """Capped exponential backoff with jitter.

    Attempt ``n`` (0 after construction or :meth:`reset`) has the base ``min(maximum_s, initial_s × factor^n)``
    and the delay ``base × (1 − jitter × u)`` with ``u`` uniform in [0, 1). So every delay lies in
    ``[(1 − jitter) × base, base]`` and never exceeds ``maximum_s``: ``jitter=1`` is "full jitter"
    (0 … base), ``jitter=0.5`` "equal jitter" (base/2 … base), ``jitter=0`` no randomness. The jitter spreads
    the reconnects of a fleet that lost its CSMS at the same moment.
    """

    def __init__(
        self,
        initial_s: float = 1.0,
        maximum_s: float = 300.0,
        factor: float = 2.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < initial_s < float("inf"):
            raise ValueError("initial_s must be positive and finite")
        if not initial_s <= maximum_s < float("inf"):
            raise ValueError("maximum_s must be finite and >= initial_s")
        if not 1.0 <= factor < float("inf"):
            raise ValueError("factor must be >= 1")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError("jitter must be within [0, 1]")
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self.factor = factor
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """How many delays were handed out since the last reset (stops counting at the cap)."""
        return self._attempt

    def base(self, attempt: int | None = None) -> float:
        """The un-jittered delay for ``attempt`` (default: the next one)."""
        n = self._attempt if attempt is None else attempt
        value = self.initial_s
        # Multiply step by step so a huge ``n`` can never overflow a float.
        for _ in range(n):
            value *= self.factor
            if value >= self.maximum_s:
                return self.maximum_s
        return min(value, self.maximum_s)

    def next_delay(self) -> float:
        base = self.base()
        if base < self.maximum_s:
            self._attempt += 1
        return base * (1.0 - self.jitter * self._rng.random())

    def reset(self) -> None:
        self._attempt = 0


# --------------------------------------------------------------------------------------------- TLS, auth


def _reason(exc: BaseException) -> str:
    """A short description of a file/TLS error that never includes file contents."""
    if isinstance(exc, ssl.SSLError):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__


def _verifying_context(ca_file: str) -> ssl.SSLContext:
    """TLS ≥ 1.2 client context; verifies the server against ``ca_file`` or the system store, hostname on."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file or None)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConnectionConfigError(f"cannot load CA file {ca_file!r}: {_reason(exc)}") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _no_password() -> str:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key: a daemon would hang.
    raise ConnectionConfigError("encrypted private keys are not supported")


def build_ssl_context(security_profile: int, ca_file: str, client_cert: str, client_key: str) -> ssl.SSLContext | None:
    """The TLS context for an OCPP security profile.

    0/1 → ``None`` (plain ws://; :class:`OcppConnection` still verifies if the URL is wss://), 2 → TLS ≥ 1.2
    verifying the CSMS certificate (``ca_file`` or the system store) and its host name, 3 → as 2 plus the
    charge point's certificate (``client_cert``, ``client_key``; the key may live in ``client_cert``).
    Raises :class:`ConnectionConfigError` naming the file that cannot be used.
    """
    if security_profile not in (0, 1, 2, 3):
        raise ConnectionConfigError(f"security profile must be 0, 1, 2 or 3, not {security_profile!r}")
    if security_profile < 2:
        return None
    ctx = _verifying_context(ca_file)
    if security_profile == 3:
        if not client_cert:
            raise ConnectionConfigError("security profile 3 needs a client certificate file")
        for label, path in (("client certificate", client_cert), ("client key", client_key)):
            if not path:
                continue
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ConnectionConfigError(f"cannot read {label} file {path!r}: {_reason(exc)}") from exc
        try:
            ctx.load_cert_chain(client_cert, client_key or None, password=_no_password)
        except ConnectionConfigError as exc:
            raise ConnectionConfigError(f"cannot load client key {client_key or client_cert!r}: {exc}") from None
        except (OSError, ssl.SSLError, ValueError) as exc:
            files = f"{client_cert!r}" + (f" / key {client_key!r}" if client_key else "")
            raise ConnectionConfigError(f"cannot load client certificate {files}: {_reason(exc)}") from exc
    return ctx


def basic_auth_header(charge_point_id: str, authorization_key: str) -> str:
    """``Basic base64(id:key)``, the key used exactly as given (UTF-8), as the security whitepaper says."""
    token = base64.b64encode(f"{charge_point_id}:{authorization_key}".encode()).decode("ascii")
    return f"Basic {token}"


_AUTH_HEADER = re.compile(r"(?i)((?:proxy-)?authorization\s*:\s*)[^\r\n]*")


class RedactAuthorization(logging.Filter):
    """Blanks the value of every ``Authorization:`` header line in a record (websockets logs them at DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is logging's problem, not ours
            return True
        redacted = _AUTH_HEADER.sub(r"\1[redacted]", message)
        if redacted != message:
            record.msg = redacted
            record.args = None
        return True


_REDACT = RedactAuthorization()
for _logger in (log, ws_log):
    if not any(isinstance(f, RedactAuthorization) for f in _logger.filters):
        _logger.addFilter(_REDACT)


# --------------------------------------------------------------------------------------------- connection


def _truncate_utf8(text: str, limit: int) -> str:
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode(errors="ignore")


class OcppConnection:
    """The WebSocket to the CSMS, reconnecting forever. See the module docstring.

    ``authorization_key`` and ``ping_interval`` are callables read at every connection attempt, so a changed
    AuthorizationKey / WebSocketPingInterval applies from the next connection. The TLS context is rebuilt at
    every attempt too (a renewed client certificate is picked up); if the files are unusable at that moment
    the attempt fails and is retried like a network error. ``reconnects`` counts every attempt after the first
    (after a failure or a lost connection); ``connections`` counts the connections that reached a session.
    """

    def __init__(
        self,
        base_url: str,
        charge_point_id: str,
        *,
        security_profile: int = 0,
        authorization_key: Callable[[], str] = lambda: "",
        ca_file: str = "",
        client_cert: str = "",
        client_key: str = "",
        subprotocol: str = "ocpp1.6",
        ping_interval: Callable[[], float] = lambda: 60.0,
        ping_timeout_s: float = 20.0,
        open_timeout_s: float = 20.0,
        backoff: Backoff | None = None,
        min_stable_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        close_timeout_s: float = 5.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        clock: Clock | None = None,
    ) -> None:
        if not charge_point_id:
            raise ConnectionConfigError("the charge point id is empty")
        if security_profile not in (0, 1, 2, 3):
            raise ConnectionConfigError(f"security profile must be 0, 1, 2 or 3, not {security_profile!r}")
        self.url = base_url.rstrip("/") + "/" + urllib.parse.quote(charge_point_id, safe="")
        try:
            parsed = parse_uri(self.url)
        except InvalidURI:
            scheme = urllib.parse.urlsplit(base_url).scheme or "none"  # never echo the URL: it may hold credentials
            raise ConnectionConfigError(f"the CSMS URL must be a ws:// or wss:// URL (scheme: {scheme})") from None
        if parsed.user_info is not None:
            raise ConnectionConfigError("the CSMS URL must not contain credentials; use the AuthorizationKey")
        if security_profile >= 2 and not parsed.secure:
            raise ConnectionConfigError(f"security profile {security_profile} needs a wss:// CSMS URL")
        self.secure = parsed.secure
        self.charge_point_id = charge_point_id
        self.security_profile = security_profile
        self._authorization_key = authorization_key
        self._ca_file = ca_file
        self._client_cert = client_cert
        self._client_key = client_key
        self.subprotocol = subprotocol
        self._ping_interval = ping_interval
        self._ping_timeout_s = ping_timeout_s
        self._open_timeout_s = open_timeout_s
        self._close_timeout_s = close_timeout_s
        self._max_message_bytes = max_message_bytes
        self.backoff = backoff or Backoff()
        self.min_stable_s = min_stable_s
        self._sleep = sleep
        self._clock: Clock = clock or SystemClock()
        # Fail at start-up on unusable certificate files rather than in the reconnect loop.
        self._ssl_context()

        self.state: ConnectionState = "idle"
        self.connected_since: datetime | None = None
        self.last_error: str | None = None
        self.reconnects = 0
        self.connections = 0
        self._listeners: list[Callable[[ConnectionState], None]] = []
        #: ``(kind, reason)`` when an attempt fails for a security reason: "authentication" (HTTP 401/403 on the
        #: upgrade: the CSMS refused our credentials) or "certificate" (the CSMS's TLS certificate did not verify).
        self.on_security_failure: Callable[[str, str], None] | None = None
        self._ws: ClientConnection | None = None
        self._drop_reason: str | None = None
        self._running = False

    # -- observers ----------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    def subscribe(self, listener: Callable[[ConnectionState], None]) -> Callable[[], None]:
        """Call ``listener(state)`` on every state change; returns an unsubscribe function."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def _set_state(self, state: ConnectionState) -> None:
        if state == self.state:
            return
        self.state = state
        for listener in list(self._listeners):
            try:
                listener(state)
            except Exception:
                log.exception("connection state listener failed")

    # -- control ------------------------------------------------------------------------------------

    async def drop(self, reason: str) -> None:
        """Force-close the current socket (e.g. a CALL timed out); the session ends and :meth:`run` reconnects."""
        ws = self._ws
        if ws is None:
            return
        self._drop_reason = reason
        log.warning("dropping the CSMS connection: %s", reason)
        await self._close(ws, CloseCode.NORMAL_CLOSURE, reason)

    async def run(self, session: Callable[[WebSocketLike], Awaitable[None]]) -> None:
        """Connect, run ``session(ws)``, back off, reconnect, forever. Only cancellation ends it."""
        if self._running:
            raise RuntimeError("OcppConnection.run() is already running")
        self._running = True
        first = True
        try:
            while True:
                if not first:
                    self.reconnects += 1
                first = False
                if await self._attempt(session):
                    self.backoff.reset()
                delay = self.backoff.next_delay()
                self._set_state("backoff")
                log.info("reconnecting to the CSMS in %.1f s", delay)
                await self._sleep(delay)
        finally:
            self._running = False
            self._ws = None
            self.connected_since = None
            self._set_state("idle")

    # -- internals ----------------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext | None:
        ctx = build_ssl_context(self.security_profile, self._ca_file, self._client_cert, self._client_key)
        if ctx is None and self.secure:
            ctx = _verifying_context(self._ca_file)
        return ctx

    def _scrub(self, text: str) -> str:
        """Remove the AuthorizationKey (and its header form) from text that came from elsewhere."""
        try:
            key = self._authorization_key()
        except Exception:
            key = ""
        for secret in (basic_auth_header(self.charge_point_id, key).split(" ", 1)[1], key):
            if len(secret) >= 4:
                text = text.replace(secret, "[redacted]")
        return _AUTH_HEADER.sub(r"\1[redacted]", text)

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, InvalidStatus):
            code = exc.response.status_code
            hint = " (credentials rejected)" if code in (401, 403) else ""
            text = f"CSMS refused the WebSocket: HTTP {code}{hint}"
        elif isinstance(exc, ssl.SSLCertVerificationError):
            text = f"TLS certificate verification failed: {exc.verify_message or exc.reason}"
        elif isinstance(exc, ssl.SSLError):
            text = f"TLS error: {exc.reason or exc}"
        elif isinstance(exc, TimeoutError):
            text = f"opening handshake timed out ({self._open_timeout_s:g} s)"
        elif isinstance(exc, OSError):
            text = f"{type(exc).__name__}: {exc.strerror or exc}"
        else:
            text = f"{type(exc).__name__}: {exc}"
            cause = exc.__cause__
            if cause is not None:
                text += f" ({type(cause).__name__}: {cause})"
        return self._scrub(text)[:300]

    def _report_security_failure(self, exc: BaseException, reason: str) -> None:
        kind = None
        if isinstance(exc, InvalidStatus) and exc.response.status_code in (401, 403):
            kind = "authentication"
        elif isinstance(exc, ssl.SSLCertVerificationError):
            kind = "certificate"
        if kind is not None and self.on_security_failure is not None:
            try:
                self.on_security_failure(kind, reason)
            except Exception:
                log.exception("security failure listener failed")

    def _fail(self, reason: str) -> None:
        self.last_error = reason
        log.warning("CSMS connection to %s failed: %s", self.url, reason)

    async def _close(self, ws: ClientConnection, code: int, reason: str) -> None:
        """Closing handshake, bounded: a peer that does not read gets its TCP connection aborted."""
        try:
            async with asyncio.timeout(self._close_timeout_s):
                await ws.close(code, _truncate_utf8(reason, _MAX_CLOSE_REASON_BYTES))
        except Exception:  # TimeoutError included
            ws.transport.abort()
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from None  # 3.11 can turn a cancel into the timeout's TimeoutError

    async def _attempt(self, session: Callable[[WebSocketLike], Awaitable[None]]) -> bool:
        """One connection attempt and, if it opens, one session. True if it lasted ≥ min_stable_s."""
        self._set_state("connecting")
        try:
            ssl_ctx = self._ssl_context()
            headers: dict[str, str] = {}
            if self.security_profile in (1, 2):
                key = self._authorization_key()
                if not key:
                    log.warning("security profile %d without an AuthorizationKey", self.security_profile)
                headers["Authorization"] = basic_auth_header(self.charge_point_id, key)
            interval = self._ping_interval()
            log.info("connecting to %s (security profile %d)", self.url, self.security_profile)
            ws = await connect(
                self.url,
                subprotocols=[Subprotocol(self.subprotocol)],
                additional_headers=headers or None,
                ssl=ssl_ctx,
                ping_interval=interval if interval and interval > 0 else None,
                ping_timeout=self._ping_timeout_s,
                open_timeout=self._open_timeout_s,
                close_timeout=self._close_timeout_s,
                proxy=None,
                max_size=self._max_message_bytes,
                logger=ws_log,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = self._describe(exc)
            self._fail(reason)
            self._report_security_failure(exc, reason)
            return False
        try:
            if ws.subprotocol != self.subprotocol:
                self._fail(f"CSMS did not agree on subprotocol {self.subprotocol!r} (got {ws.subprotocol!r})")
                await self._close(ws, CloseCode.PROTOCOL_ERROR, f"subprotocol {self.subprotocol} required")
                return False
            return await self._serve(ws, session)
        finally:
            self._ws = None
            self.connected_since = None
            await self._close(ws, CloseCode.NORMAL_CLOSURE, "")

    async def _serve(self, ws: ClientConnection, session: Callable[[WebSocketLike], Awaitable[None]]) -> bool:
        started = self._clock.monotonic()
        self._drop_reason = None
        self._ws = ws
        self.connected_since = self._clock.now()
        self.connections += 1
        self._set_state("connected")
        log.info("connected to %s (subprotocol %s)", self.url, ws.subprotocol)

        async def run_session() -> None:
            await session(ws)

        session_task = asyncio.create_task(run_session(), name=f"ocpp-session-{self.charge_point_id}")
        closed_task = asyncio.create_task(ws.wait_closed())
        try:
            await asyncio.wait({session_task, closed_task}, return_when=asyncio.FIRST_COMPLETED)
            if not session_task.done():
                # The socket is gone; a session that does not notice must not keep us from reconnecting.
                await asyncio.wait({session_task}, timeout=self._close_timeout_s)
                if not session_task.done():
                    log.warning("the OCPP session did not end after the socket closed; cancelling it")
                    session_task.cancel()
                    await asyncio.wait({session_task})
        finally:
            closed_task.cancel()
            if not session_task.done():
                session_task.cancel()
                await asyncio.wait({session_task})
            if not session_task.cancelled():
                session_task.exception()  # mark it retrieved even when we are being cancelled
        lasted = self._clock.monotonic() - started
        why = self._why_ended(ws, session_task)
        self.last_error = why
        log.warning("disconnected from %s after %.1f s: %s", self.url, lasted, why)
        return lasted >= self.min_stable_s

    def _reason_suffix(self, reason: str) -> str:
        return f" {self._scrub(reason)!r}" if reason else ""

    def _why_ended(self, ws: ClientConnection, session_task: asyncio.Task[None]) -> str:
        parts: list[str] = []
        if self._drop_reason is not None:
            parts.append(f"dropped ({self._scrub(self._drop_reason)})")
        if session_task.cancelled():
            parts.append("session cancelled")
        elif (exc := session_task.exception()) is not None and not isinstance(exc, ConnectionClosed):
            parts.append(f"session raised {self._describe(exc)}")
        protocol = ws.protocol
        received, sent = protocol.close_rcvd, protocol.close_sent
        if received is not None and (sent is None or protocol.close_rcvd_then_sent):
            parts.append(f"CSMS closed with code {received.code}{self._reason_suffix(received.reason)}")
        elif sent is not None and ws.close_code is not None:
            answered = "" if received is not None else ", no close frame back"
            parts.append(f"closed by us with code {sent.code}{self._reason_suffix(sent.reason)}{answered}")
        elif ws.close_code is not None:
            parts.append(f"connection lost without a close frame (code {ws.close_code})")
        elif not parts:
            parts.append("session ended")
        return "; ".join(parts)
