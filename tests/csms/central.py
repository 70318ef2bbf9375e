"""A real OCPP 1.6J central system on loopback, built from the ``ocpp`` package (central-system role).

Usage (see also ``csms.fixtures``)::

    async with TestCentralSystem() as csms:          # or the ``central_system`` fixture
        ...  # point the charger at csms.url (ws://127.0.0.1:PORT/ocpp, the charger appends its id)
        await csms.wait_for(lambda: csms.count("BootNotification") == 1)
        assert csms.received[0].payload["chargePointModel"] == "..."   # raw camelCase wire payload
        await csms.call("CP-1", call.Reset(type="Soft"))               # CSMS-initiated, CALLERROR raises

Fault knobs: ``boot_status``, ``heartbeat_interval``, ``delay`` (answer every CALL that much later), ``stall``
(keep reading frames but never answer a CALL and never send a pong), ``refuse`` (HTTP 503 to new upgrade
requests), ``drop()`` (close a charger's socket with or without a close frame), ``send_raw()``.

What ``stall`` does on the wire (verified with websockets 17.4): merely not calling ``recv()`` does NOT stop
pongs — the sans-I/O protocol answers a ping with a pong inside ``data_received`` as soon as the bytes arrive,
whether or not the application reads (only after ``max_queue`` (16) unread messages does websockets pause
reading the transport, and only then do pongs stop). So a stalled connection here keeps reading and recording
every frame, drops every PONG frame before it is written (the connection's ``protocol.send_frame`` is wrapped)
and never routes CALLs to the handlers. The charger sees an open TCP socket with no answers and no pongs; its
websockets keepalive (``ping_interval``/``ping_timeout``) then closes the connection (close code 1011,
"keepalive ping timeout"). The server itself sends no pings unless ``ping_interval`` is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, TypeVar

from ocpp.routing import on
from ocpp.v16 import ChargePoint, call_result
from ocpp.v16.enums import Action, AuthorizationStatus, RegistrationStatus
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response

T = TypeVar("T")

CALL, CALLRESULT, CALLERROR = 2, 3, 4


def now_iso() -> str:
    """UTC now as RFC 3339 with a zone (what draft-07 ``date-time`` and real backends expect)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Received:
    """One CALL received from a charger, as it was on the wire."""

    charge_point_id: str
    action: str
    payload: dict[str, Any]  # raw camelCase JSON object
    at: datetime
    unique_id: str = ""


@dataclass
class _Link:
    """One connected charger."""

    connection: ServerConnection
    charge_point: CentralChargePoint
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class _RecordingConnection:
    """What ``ocpp.ChargePoint`` talks to: ``recv``/``send`` that also record every text frame."""

    def __init__(self, central: TestCentralSystem, cp_id: str, ws: ServerConnection) -> None:
        self._central = central
        self._cp_id = cp_id
        self._ws = ws

    async def recv(self) -> str:
        message = await self._ws.recv()
        text = message if isinstance(message, str) else message.decode("utf-8", errors="replace")
        self._central._record(self._cp_id, "in", text)
        return text

    async def send(self, text: str) -> None:
        self._central._record(self._cp_id, "out", text)
        await self._ws.send(text)


class CentralChargePoint(ChargePoint):
    """The central-system side of one charger connection: a handler for every charger-initiated 1.6 message."""

    def __init__(self, cp_id: str, connection: _RecordingConnection, central: TestCentralSystem) -> None:
        super().__init__(cp_id, connection, response_timeout=central.response_timeout)
        self.central = central

    async def route_message(self, raw_msg: str) -> None:
        central = self.central
        try:
            parsed = json.loads(raw_msg)
            is_call = isinstance(parsed, list) and len(parsed) > 0 and parsed[0] == CALL
        except ValueError:
            is_call = True  # let the library answer garbage the way it does
        if is_call and central.stall:
            return  # read and recorded, never answered
        if is_call and central.delay > 0:
            link = central._links.get(self.id)
            task = asyncio.ensure_future(self._route_later(raw_msg, central.delay))
            if link is not None:
                link.tasks.add(task)
                task.add_done_callback(link.tasks.discard)
            return
        await super().route_message(raw_msg)

    async def _route_later(self, raw_msg: str, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.central.stall:
            return
        with contextlib.suppress(ConnectionClosed):
            await super().route_message(raw_msg)

    @on(Action.boot_notification)
    def on_boot_notification(self, **kwargs: Any) -> call_result.BootNotification:
        return call_result.BootNotification(
            current_time=now_iso(), interval=self.central.heartbeat_interval, status=self.central.boot_status
        )

    @on(Action.heartbeat)
    def on_heartbeat(self, **kwargs: Any) -> call_result.Heartbeat:
        return call_result.Heartbeat(current_time=now_iso())

    @on(Action.status_notification)
    def on_status_notification(self, **kwargs: Any) -> call_result.StatusNotification:
        return call_result.StatusNotification()

    @on(Action.authorize)
    def on_authorize(self, id_tag: str, **kwargs: Any) -> call_result.Authorize:
        return call_result.Authorize(id_tag_info=self.central.id_tag_info(id_tag))

    @on(Action.start_transaction)
    def on_start_transaction(self, id_tag: str, **kwargs: Any) -> call_result.StartTransaction:
        return call_result.StartTransaction(
            transaction_id=self.central._next_transaction_id(), id_tag_info=self.central.id_tag_info(id_tag)
        )

    @on(Action.stop_transaction)
    def on_stop_transaction(self, id_tag: str | None = None, **kwargs: Any) -> call_result.StopTransaction:
        info = self.central.id_tag_info(id_tag) if id_tag else None
        return call_result.StopTransaction(id_tag_info=info)

    @on(Action.meter_values)
    def on_meter_values(self, **kwargs: Any) -> call_result.MeterValues:
        return call_result.MeterValues()

    @on(Action.data_transfer)
    def on_data_transfer(self, **kwargs: Any) -> call_result.DataTransfer:
        return call_result.DataTransfer(status="Accepted")

    @on(Action.diagnostics_status_notification)
    def on_diagnostics_status_notification(self, **kwargs: Any) -> call_result.DiagnosticsStatusNotification:
        return call_result.DiagnosticsStatusNotification()

    @on(Action.firmware_status_notification)
    def on_firmware_status_notification(self, **kwargs: Any) -> call_result.FirmwareStatusNotification:
        return call_result.FirmwareStatusNotification()

    @on(Action.log_status_notification)
    def on_log_status_notification(self, **kwargs: Any) -> call_result.LogStatusNotification:
        return call_result.LogStatusNotification()

    @on(Action.signed_firmware_status_notification)
    def on_signed_firmware_status_notification(self, **kwargs: Any) -> call_result.SignedFirmwareStatusNotification:
        return call_result.SignedFirmwareStatusNotification()

    @on(Action.security_event_notification)
    def on_security_event_notification(self, **kwargs: Any) -> call_result.SecurityEventNotification:
        return call_result.SecurityEventNotification()


class TestCentralSystem:
    """An OCPP 1.6J central system on 127.0.0.1 for tests. Not a test class (``__test__ = False``)."""

    __test__ = False

    def __init__(
        self,
        *,
        boot_status: RegistrationStatus | str = RegistrationStatus.accepted,
        heartbeat_interval: int = 300,
        ping_interval: float | None = None,
        response_timeout: float = 10.0,
    ) -> None:
        self.boot_status: RegistrationStatus | str = boot_status
        self.heartbeat_interval = heartbeat_interval
        self.delay: float = 0.0
        self.stall: bool = False
        self.refuse: bool = False
        self.refuse_status: HTTPStatus = HTTPStatus.SERVICE_UNAVAILABLE  # e.g. UNAUTHORIZED: refused credentials
        # Authorize / StartTransaction / StopTransaction idTagInfo
        self.default_auth_status: AuthorizationStatus | str = AuthorizationStatus.accepted
        self.id_tags: dict[str, AuthorizationStatus | str] = {}
        self.parent_id_tag: str | None = None
        self.expiry_date: str | None = None
        self.ping_interval = ping_interval
        self.response_timeout = response_timeout

        self.received: list[Received] = []
        self.frames: list[tuple[str, str, str]] = []  # (charge point id, "in" | "out", raw text)
        self.headers: dict[str, Headers] = {}  # upgrade request headers of the latest connection per charger
        self.paths: dict[str, str] = {}
        self.refused: int = 0  # upgrade requests answered with 503
        self.connections_total: int = 0
        self._links: dict[str, _Link] = {}
        self._server: Server | None = None
        self._transaction_id = 0

    # ------------------------------------------------------------------ life cycle
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await serve(
            self._handler,
            host,
            port,
            subprotocols=["ocpp1.6"],  # type: ignore[list-item]
            process_request=self._process_request,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_interval,
            close_timeout=1,
        )

    @property
    def port(self) -> int:
        assert self._server is not None, "central system not started"
        return int(next(iter(self._server.sockets)).getsockname()[1])

    @property
    def url(self) -> str:
        """Base URL; the charger appends ``/<charge point id>``."""
        return f"ws://127.0.0.1:{self.port}/ocpp"

    async def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        for link in list(self._links.values()):
            for task in list(link.tasks):
                task.cancel()
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5)

    async def __aenter__(self) -> TestCentralSystem:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ server internals
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.refuse:
            self.refused += 1
            return connection.respond(self.refuse_status, f"{self.refuse_status.phrase}\n")
        return None

    async def _handler(self, connection: ServerConnection) -> None:
        assert connection.request is not None
        path = connection.request.path.split("?", 1)[0]
        cp_id = path.rstrip("/").rsplit("/", 1)[-1]
        self.headers[cp_id] = connection.request.headers
        self.paths[cp_id] = connection.request.path
        self.connections_total += 1
        self._suppress_pongs_when_stalled(connection)
        cp = CentralChargePoint(cp_id, _RecordingConnection(self, cp_id, connection), self)
        link = _Link(connection, cp)
        old = self._links.get(cp_id)
        if old is not None:
            old.connection.transport.abort()
        self._links[cp_id] = link
        try:
            await cp.start()
        except ConnectionClosed:
            pass
        finally:
            for task in list(link.tasks):
                task.cancel()
            if self._links.get(cp_id) is link:
                del self._links[cp_id]

    def _suppress_pongs_when_stalled(self, connection: ServerConnection) -> None:
        protocol = connection.protocol
        original = protocol.send_frame

        def send_frame(frame: Frame) -> None:
            if self.stall and frame.opcode is Opcode.PONG:
                return
            original(frame)

        protocol.send_frame = send_frame  # type: ignore[method-assign]

    def _record(self, cp_id: str, direction: str, text: str) -> None:
        self.frames.append((cp_id, direction, text))
        if direction != "in":
            return
        try:
            msg = json.loads(text)
        except ValueError:
            return
        if (
            isinstance(msg, list)
            and len(msg) >= 4
            and msg[0] == CALL
            and isinstance(msg[2], str)
            and isinstance(msg[3], dict)
        ):
            self.received.append(Received(cp_id, msg[2], msg[3], datetime.now(UTC), str(msg[1])))

    def _next_transaction_id(self) -> int:
        self._transaction_id += 1
        return self._transaction_id

    def id_tag_info(self, id_tag: str) -> dict[str, Any]:
        """idTagInfo (snake_case, the library converts) for Authorize/StartTransaction/StopTransaction."""
        info: dict[str, Any] = {"status": str(self.id_tags.get(id_tag, self.default_auth_status))}
        if self.parent_id_tag is not None:
            info["parent_id_tag"] = self.parent_id_tag
        if self.expiry_date is not None:
            info["expiry_date"] = self.expiry_date
        return info

    # ------------------------------------------------------------------ test API
    def connected(self, charge_point_id: str) -> bool:
        return charge_point_id in self._links

    def count(self, action: str) -> int:
        return sum(1 for r in self.received if r.action == action)

    def payloads(self, action: str) -> list[dict[str, Any]]:
        return [r.payload for r in self.received if r.action == action]

    def charge_point(self, charge_point_id: str) -> CentralChargePoint:
        link = self._links.get(charge_point_id)
        if link is None:
            raise KeyError(f"charge point {charge_point_id!r} is not connected (connected: {sorted(self._links)})")
        return link.charge_point

    async def call(self, charge_point_id: str, payload: Any) -> Any:
        """Send a CSMS-initiated CALL (an ``ocpp.v16.call.X``); returns the ``call_result.X``; CALLERROR raises."""
        return await self.charge_point(charge_point_id).call(payload, suppress=False)

    async def send_raw(self, charge_point_id: str, text: str) -> None:
        """Write an arbitrary text frame to a charger (recorded in ``frames`` as "out")."""
        cp = self.charge_point(charge_point_id)
        await cp._connection.send(text)

    async def drop(self, charge_point_id: str, *, close_frame: bool = True) -> None:
        """Close a charger's socket: a normal close handshake, or (``close_frame=False``) abort the TCP transport."""
        link = self._links.get(charge_point_id)
        if link is None:
            return
        if close_frame:
            await link.connection.close(code=1001, reason="dropped by test")
        else:
            link.connection.transport.abort()
        await self.wait_for(lambda: self._links.get(charge_point_id) is not link)

    async def wait_for(self, predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.01) -> T:
        """Poll ``predicate`` until it returns something truthy; return it. ``TimeoutError`` otherwise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if loop.time() >= deadline:
                raise TimeoutError(
                    f"condition not met within {timeout}s; last {len(self.frames)} frames: {self.frames[-5:]}"
                )
            await asyncio.sleep(interval)
