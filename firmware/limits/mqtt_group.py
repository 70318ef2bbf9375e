"""The shared fuse over MQTT: connects :class:`~firmware.limits.sharing.SharedFuse` to a broker and the arbiter.

Topics: every member publishes its state, retained, on ``<group>/<charger_id>/state`` and subscribes
to ``<group>/+/state``. The broker publishes the member's Last Will (retained ``{"status": "lost"}``)
when its connection breaks without a goodbye. An empty retained message on a member's topic removes
that member (a charger taken out of service). Each new connection is a new MQTT session with its own
client id, so nothing stale is replayed. The link only counts as up once our own report comes back.

The control loop here never waits on the network: reports go out on their own task (the latest one
wins), so a hung broker cannot delay a drop to fallback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import aiomqtt

from firmware.aio import wait_event
from firmware.limits.arbiter import Arbiter
from firmware.limits.sharing import Inputs, MemberStatus, Report, SharedFuse, SharingParams, Step
from hal.clock import Clock

log = logging.getLogger("firmware.limits.sharing")

#: The arbiter source name of this limit.
SOURCE: Final = "shared"
#: The payload format; a report with another version is ignored (mixed firmware cannot share a fuse).
PROTOCOL_VERSION: Final = 1
#: No current in a report may be above this (a garbage number must not block or free the fuse).
MAX_REPORTED_A: Final = 1000.0
_TOPIC_FORBIDDEN: Final = ("+", "#", "\x00")
#: Bad reports on one topic are logged at most this often (real seconds); all are counted.
BAD_REPORT_LOG_S: Final = 60.0

#: The charger's own meter: (highest phase current, monotonic time of the reading); None without a reading.
ActualReading = tuple[float, float] | None


@dataclass(frozen=True, slots=True)
class GroupSettings:
    """One charger's membership of a shared-fuse group (``[shared_fuse]`` in the configuration).

    Times in seconds: ``member_timeout_s`` and ``publish_interval_s`` on the controller's clock, the MQTT
    ones (keepalive, timeout, reconnect) in real seconds.
    """

    host: str
    group: str
    charger_id: str
    fuse_a: float
    port: int = 1883
    username: str | None = None
    password: str | None = None
    margin_a: float = 1.0
    fallback_a: float = 6.0
    member_timeout_s: float = 15.0
    publish_interval_s: float = 2.0
    keepalive_s: int = 10
    timeout_s: float = 5.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("host must name the MQTT broker")
        if not (0 < self.port < 65536):
            raise ValueError(f"port must be 1..65535, got {self.port!r}")
        group = self.group
        if not group or group.startswith("/") or group.endswith("/") or any(c in group for c in _TOPIC_FORBIDDEN):
            raise ValueError(f"group must be a topic prefix without wildcards or edge slashes, got {group!r}")
        cid = self.charger_id
        if not cid or "/" in cid or any(c in cid for c in _TOPIC_FORBIDDEN):
            raise ValueError(f"charger_id must be one topic level (no '/', '+', '#'), got {cid!r}")
        if not (isinstance(self.keepalive_s, int) and self.keepalive_s >= 1):
            raise ValueError(f"keepalive_s must be a whole number of seconds >= 1, got {self.keepalive_s!r}")
        for name in ("timeout_s", "reconnect_min_s", "reconnect_max_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive, got {value!r}")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        self.sharing()  # validates the fuse and timing

    def sharing(self) -> SharingParams:
        return SharingParams(
            fuse_a=self.fuse_a,
            margin_a=self.margin_a,
            fallback_a=self.fallback_a,
            member_timeout_s=self.member_timeout_s,
            publish_interval_s=self.publish_interval_s,
        )

    def state_topic(self, charger_id: str) -> str:
        return f"{self.group}/{charger_id}/state"

    @property
    def subscription(self) -> str:
        return f"{self.group}/+/state"

    def member_of(self, topic: str) -> str | None:
        """The charger id in a state topic of this group, None for any other topic."""
        head, tail = f"{self.group}/", "/state"
        if not (topic.startswith(head) and topic.endswith(tail)):
            return None
        cid = topic[len(head) : len(topic) - len(tail)]
        return cid if cid and "/" not in cid else None


def cap_without_shared(arbiter: Arbiter, now: float) -> float:
    """The charger's own limit now: the lowest live claim other than the shared fuse's (inf without any).

    Pass it to :meth:`~firmware.limits.sharing.DemandEstimator.update` so the group is not asked for amps
    that the cable, a schedule or the thermal derating would not let this charger use anyway.
    """
    return min((c.current_a for c in arbiter.claims(now) if c.source != SOURCE), default=math.inf)


# -- the wire format ---------------------------------------------------------------------------
def encode(report: Report) -> bytes:
    """JSON for a report; a Last Will carries only who and which connection."""
    body: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "id": report.charger_id,
        "boot": report.boot,
        "conn": report.conn,
        "status": report.status.value,
    }
    if report.status is not MemberStatus.LOST:
        body |= {
            "seq": report.seq,
            "demand_a": report.demand_a,
            "allowance_a": report.allowance_a,
            "actual_a": report.actual_a,
            "phases": report.phases,
            "ts": report.ts,
            "seen": {cid: [boot, seq] for cid, (boot, seq) in sorted(report.seen.items())},
        }
    return json.dumps(body, separators=(",", ":")).encode()


def _int(body: dict[str, Any], key: str, low: int, high: int) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key} must be an integer {low}..{high}, got {value!r}")
    return value


def _amps(body: dict[str, Any], key: str) -> float:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_REPORTED_A:
        raise ValueError(f"{key} must be a current 0..{MAX_REPORTED_A:g} A, got {value!r}")
    return float(value)


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 128:
        raise ValueError(f"{what} must be a short non-empty string, got {value!r}")
    return value


def decode(charger_id: str, payload: bytes) -> Report:
    """Parse and check a report received on ``charger_id``'s topic; ValueError says what is wrong."""
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    if body.get("v") != PROTOCOL_VERSION or isinstance(body.get("v"), bool):
        raise ValueError(f"protocol version {body.get('v')!r}, this firmware speaks {PROTOCOL_VERSION}")
    if body.get("id") != charger_id:
        raise ValueError(f"id {body.get('id')!r} does not match its topic ({charger_id!r})")
    if body.get("status") not in tuple(MemberStatus):
        raise ValueError(f"unknown status {body.get('status')!r}")
    status = MemberStatus(body["status"])
    boot = _text(body.get("boot"), "boot")
    conn = _int(body, "conn", 0, 2**53)
    if status is MemberStatus.LOST:
        return Report(charger_id, boot, conn, status)
    ts = body.get("ts", 0.0)
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise ValueError(f"ts must be a number, got {ts!r}")
    raw_seen = body.get("seen", {})
    if not isinstance(raw_seen, dict):
        raise ValueError("seen must be an object")
    seen: dict[str, tuple[str, int]] = {}
    for cid, ack in raw_seen.items():
        if not (isinstance(ack, list) and len(ack) == 2):
            raise ValueError(f"seen[{cid!r}] must be [boot, seq]")
        seen[cid] = (_text(ack[0], "seen boot"), _int({"seq": ack[1]}, "seq", 0, 2**53))
    return Report(
        charger_id=charger_id,
        boot=boot,
        conn=conn,
        status=status,
        seq=_int(body, "seq", 1, 2**53),
        demand_a=_amps(body, "demand_a"),
        allowance_a=_amps(body, "allowance_a"),
        actual_a=_amps(body, "actual_a"),
        phases=_int(body, "phases", 1, 3),
        ts=float(ts),
        seen=seen,
    )


# -- the member --------------------------------------------------------------------------------
class GroupMember:
    """Limit source ``"shared"``: this charger's part in a shared fuse, over MQTT.

    ``demand()`` is what the charger would take (0 without a session; see
    :class:`~firmware.limits.sharing.DemandEstimator`), ``actual()`` its own meter's highest phase current
    with the reading's monotonic time, ``offered()`` the current on the PWM now. ``tick_s`` is the real
    time between two updates when nothing happens (default a quarter publish interval).

    Run :meth:`run` as a task; for a clean shutdown ``await stop()`` first (the group then counts this
    charger 0), then cancel the task.
    """

    def __init__(
        self,
        settings: GroupSettings,
        arbiter: Arbiter,
        clock: Clock,
        *,
        demand: Callable[[], float],
        actual: Callable[[], ActualReading],
        offered: Callable[[], float],
        phases: int = 3,
        tick_s: float | None = None,
        wall: Callable[[], float] = time.time,
        boot: str | None = None,
    ) -> None:
        self.settings = settings
        self.arbiter = arbiter
        self.clock = clock
        self._demand = demand
        self._actual = actual
        self._offered = offered
        self._phases = phases
        self._wall = wall
        self.tick_s = tick_s if tick_s is not None else settings.publish_interval_s / 4
        self.core = SharedFuse(
            settings.sharing(), settings.charger_id, boot=boot or secrets.token_hex(4), now=clock.monotonic()
        )
        self.bad_reports = 0
        self._bad_logged: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._outbox: Report | None = None
        self._out_ready = asyncio.Event()
        self._submitted: tuple[float, str] | None = None
        self._input_failures = 0
        self._submit(Step(self.core.claim_a, False, self.core.reason))

    # -- lifecycle ----------------------------------------------------------------------
    async def run(self) -> None:
        """Forever: keep the link up, apply the share, report. Cancel to end (after :meth:`stop`).

        However it ends, the claim is left at no more than ``fallback_a``: nobody updates it any more, and the
        others will count this charger at its fallback once it has been quiet for ``member_timeout_s``.
        """
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._control_loop(), name=f"shared-fuse-control-{self.settings.charger_id}")
                tg.create_task(self._link_loop(), name=f"shared-fuse-link-{self.settings.charger_id}")
        finally:
            safe = min(self.core.claim_a, self.core.params.fallback_a)
            self.arbiter.submit(SOURCE, safe, self.clock.monotonic(), reason="shared fuse: not running")

    async def stop(self, timeout_s: float = 10.0) -> bool:
        """Leave cleanly: claim 0, wait for the EV to stop, publish "left" (counted 0 by the others).

        True once the broker has echoed "left" back; False after ``timeout_s`` (real seconds): the others
        then treat this charger as silent (last values, then fallback), which is safe but keeps its share.
        """
        self.core.leave()
        self._wake.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self.core.left_echoed:
            left = deadline - loop.time()
            if left <= 0:
                log.error("shared fuse: could not tell the group we leave within %.0f s", timeout_s)
                return False
            await asyncio.sleep(min(self.tick_s, left))
            self._wake.set()
        return True

    def poke(self) -> None:
        """Update now (e.g. the connector's status changed), not at the next tick."""
        self._wake.set()

    # -- the control loop ----------------------------------------------------------------
    async def _control_loop(self) -> None:
        while True:
            self.update()
            await wait_event(self._wake, self.tick_s)
            self._wake.clear()

    def update(self) -> Step:
        """One update: read the charger, step the core, apply the claim, queue a report if one is due."""
        now = self.clock.monotonic()
        step = self.core.update(now, self._inputs(now))
        # A drop is applied here at once; a rise reaches this point only after the group acknowledged it.
        self._submit(step)
        if step.publish:
            self._outbox = self.core.report(now, self._wall())
            self._out_ready.set()
        return step

    def _inputs(self, now: float) -> Inputs:
        try:
            demand = float(self._demand())
            offered = float(self._offered())
            reading = self._actual()
        except Exception:
            self._input_failures += 1
            if self._input_failures == 1:
                log.exception("shared fuse: reading the charger failed; asking for nothing until it works")
            # Offered stays "unknown high", so an old allowance is not released on a guess.
            return Inputs(0.0, 0.0, -math.inf, math.inf, self._phases)
        if self._input_failures:
            log.warning("shared fuse: reading the charger works again")
            self._input_failures = 0
        actual, actual_at = (0.0, -math.inf) if reading is None else reading
        if not math.isfinite(demand) or demand < 0:
            demand = 0.0
        return Inputs(demand, actual, actual_at, offered, self._phases)

    def _submit(self, step: Step) -> None:
        key = (step.claim_a, step.reason)
        if key != self._submitted:
            self.arbiter.submit(SOURCE, step.claim_a, self.clock.monotonic(), reason=step.reason)
            self._submitted = key

    # -- the link --------------------------------------------------------------------------
    async def _link_loop(self) -> None:
        s = self.settings
        backoff = s.reconnect_min_s
        failures = 0
        while True:
            will = self.core.connecting()
            client = aiomqtt.Client(
                s.host,
                s.port,
                username=s.username,
                password=s.password,
                # Short (MQTT 3.1.1 brokers may refuse more than 23 characters) and new for every connection.
                identifier=f"{s.charger_id[:8]}-{self.core.boot}-{will.conn}",
                will=aiomqtt.Will(s.state_topic(s.charger_id), encode(will), qos=1, retain=True),
                clean_session=True,
                keepalive=s.keepalive_s,
                timeout=s.timeout_s,
            )
            try:
                async with client:
                    await client.subscribe(s.subscription, qos=1)
                    self.core.set_connected(True, self.clock.monotonic())
                    self._wake.set()
                    log.info("shared fuse: connected to %s:%d, group %s", s.host, s.port, s.group)
                    backoff, failures = s.reconnect_min_s, 0
                    # The publisher lives and dies with this connection: a report waiting for the PUBACK of a
                    # dead connection must not hold up the reports of the next one.
                    publisher = asyncio.create_task(self._publish_loop(client))
                    try:
                        async for message in client.messages:
                            self._on_message(message)
                    finally:
                        publisher.cancel()
                        await asyncio.gather(publisher, return_exceptions=True)
            except aiomqtt.MqttError as exc:
                _honour_cancel()
                failures += 1
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(level, "shared fuse: broker %s:%d: %s; retrying in %.1f s", s.host, s.port, exc, backoff)
            finally:
                if self.core.connected:
                    self.core.set_connected(False, self.clock.monotonic())
                    self._wake.set()
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, s.reconnect_max_s)

    def _on_message(self, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        cid = self.settings.member_of(topic)
        if cid is None:
            return
        payload = message.payload
        if not isinstance(payload, bytes | bytearray):
            payload = str(payload).encode()
        if not payload:
            self.core.forget(cid)
            self._wake.set()
            return
        try:
            report = decode(cid, bytes(payload))
        except ValueError as exc:
            self.bad_reports += 1
            now = time.monotonic()
            if now - self._bad_logged.get(topic, -math.inf) >= BAD_REPORT_LOG_S:
                self._bad_logged[topic] = now
                log.warning("shared fuse: ignoring a bad report on %s: %s", topic, exc)
            return
        self.core.receive(report, self.clock.monotonic(), retained=bool(message.retain))
        self._wake.set()

    async def _publish_loop(self, client: aiomqtt.Client) -> None:
        """Sends the latest report on ``client`` (reports that were superseded meanwhile are skipped)."""
        topic = self.settings.state_topic(self.settings.charger_id)
        while True:
            await self._out_ready.wait()
            self._out_ready.clear()
            report = self._outbox
            if report is None:
                continue
            try:
                await client.publish(topic, encode(report), qos=1, retain=True)
            except aiomqtt.MqttError as exc:
                _honour_cancel()
                log.debug("shared fuse: report %d not sent: %s", report.seq, exc)

    # -- status ----------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """For the status API and ``evse limits``: the link, own share, and every member with its age."""
        s = self.settings
        return {
            "broker": f"{s.host}:{s.port}",
            "group": s.group,
            "bad_reports": self.bad_reports,
            **self.core.describe(self.clock.monotonic()),
        }


def _honour_cancel() -> None:
    """aiomqtt waits with asyncio.wait_for, which on 3.11 can turn our cancellation into a timeout error."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
