"""The connector's state machine: IEC 61851 pilot states in, OCPP 1.6 connector statuses out.

Built on ``transitions`` (the synchronous Machine: the rules do no I/O, and an AsyncMachine's per-trigger
tasks cost a fleet of a thousand simulated chargers most of a core). The states are the OCPP 1.6
ChargePointStatus values;
the one trigger, ``evaluate``, is a rule table tried in order, so the whole behaviour reads
top to bottom in :data:`RULES`. The machine decides *what the connector wants* (a session, PWM,
energy); the controller turns that into outputs through the safety invariant. The model knows
nothing of hardware or OCPP: it takes plain inputs and emits events.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from transitions import Machine

from firmware.charging.pilot import EV_PRESENT, Letter

log = logging.getLogger("firmware.charging.connector")


class Status(enum.StrEnum):
    """OCPP 1.6 ChargePointStatus (connector level)."""

    AVAILABLE = "Available"
    PREPARING = "Preparing"
    CHARGING = "Charging"
    SUSPENDED_EV = "SuspendedEV"
    SUSPENDED_EVSE = "SuspendedEVSE"
    FINISHING = "Finishing"
    FAULTED = "Faulted"
    UNAVAILABLE = "Unavailable"
    RESERVED = "Reserved"


class StopReason(enum.StrEnum):
    """OCPP 1.6 StopTransaction reasons the connector itself can produce or accept."""

    EV_DISCONNECTED = "EVDisconnected"
    LOCAL = "Local"
    REMOTE = "Remote"
    DEAUTHORIZED = "DeAuthorized"
    EMERGENCY_STOP = "EmergencyStop"
    HARD_RESET = "HardReset"
    SOFT_RESET = "SoftReset"
    POWER_LOSS = "PowerLoss"
    REBOOT = "Reboot"
    UNLOCK_COMMAND = "UnlockCommand"
    OTHER = "Other"


SESSION_STATES: Final = (Status.CHARGING, Status.SUSPENDED_EV, Status.SUSPENDED_EVSE)


@dataclass(frozen=True, slots=True)
class StatusChanged:
    previous: Status
    status: Status
    reason: str
    at: datetime


@dataclass(frozen=True, slots=True)
class SessionStarted:
    session: int
    id_tag: str
    at: datetime
    reservation_id: int | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    reservation_id: int
    id_tag: str
    expires: datetime
    parent_id_tag: str | None = None


@dataclass(frozen=True, slots=True)
class ReservationEnded:
    reservation: Reservation
    #: "used", "expired" or "cancelled".
    how: str
    at: datetime


@dataclass(frozen=True, slots=True)
class SessionStopped:
    session: int
    id_tag: str
    reason: StopReason
    detail: str
    at: datetime


@dataclass(frozen=True, slots=True)
class AuthorizationExpired:
    id_tag: str
    at: datetime


ConnectorEvent = StatusChanged | SessionStarted | SessionStopped | AuthorizationExpired | ReservationEnded


@dataclass
class ConnectorInputs:
    """Everything the rules look at, refreshed by the controller before each evaluation."""

    letter: Letter = "A"
    trip_faults: frozenset[str] = frozenset()
    #: The arbiter's limit after quantisation (0 = below 6 A: pause).
    limit_a: float = 0.0
    ventilation_allowed: bool = False
    connection_timeout_s: float = 60.0
    monotonic: float = 0.0
    wall: datetime = field(default_factory=lambda: datetime.fromtimestamp(0).astimezone())


def _rule(
    source: Status | Sequence[Status], dest: Status, conditions: str | list[str] | None = None, **kw: Any
) -> dict[str, Any]:
    src = source.value if isinstance(source, Status) else [s.value for s in source]
    rule: dict[str, Any] = {"trigger": "evaluate", "source": src, "dest": dest.value, **kw}
    if conditions:
        rule["conditions"] = conditions
    return rule


_ALL_BUT_FAULTED = [s for s in Status if s is not Status.FAULTED]
_SESSION = list(SESSION_STATES)

#: The behaviour, in priority order (the first rule whose source and conditions match fires).
RULES: Final = [
    # Any trip fault wins over everything: ends the session, pilot to F, contactor open.
    _rule(_ALL_BUT_FAULTED, Status.FAULTED, "has_trip_fault", before="_end_session_for_fault"),
    # Leaving Faulted needs no fault and F held long enough (the controller sets fault_hold_done).
    _rule(Status.FAULTED, Status.UNAVAILABLE, ["fault_recovered", "is_inoperative"]),
    _rule(Status.FAULTED, Status.AVAILABLE, ["fault_recovered", "ev_absent"]),
    _rule(Status.FAULTED, Status.PREPARING, ["fault_recovered", "ev_present"]),
    # Availability (ChangeAvailability, maintenance): only between sessions.
    _rule(
        [Status.AVAILABLE, Status.PREPARING, Status.FINISHING],
        Status.UNAVAILABLE,
        "is_inoperative",
        before="_drop_authorization",
    ),
    _rule(Status.UNAVAILABLE, Status.AVAILABLE, "ev_absent", unless="is_inoperative"),
    _rule(Status.UNAVAILABLE, Status.PREPARING, "ev_present", unless="is_inoperative"),
    # A reservation holds the connector for one idTag until it is used, cancelled or expires.
    _rule(Status.AVAILABLE, Status.RESERVED, "is_reserved"),
    _rule(Status.RESERVED, Status.AVAILABLE, unless=["is_reserved", "is_authorized"]),
    _rule(Status.RESERVED, Status.PREPARING, "is_authorized"),
    # Waiting for the other half of "plugged in + authorized".
    _rule(Status.AVAILABLE, Status.PREPARING, "ev_present"),
    _rule(Status.AVAILABLE, Status.PREPARING, "is_authorized"),
    _rule(
        Status.PREPARING,
        Status.AVAILABLE,
        ["is_authorized", "ev_absent", "authorization_timed_out"],
        before="_expire_authorization",
    ),
    _rule(Status.PREPARING, Status.AVAILABLE, "ev_absent", unless="is_authorized"),
    # Session start: authorized and plugged in.
    _rule(
        Status.PREPARING,
        Status.SUSPENDED_EVSE,
        ["is_authorized", "ev_present", "must_pause"],
        after="_start_session",
    ),
    _rule(Status.PREPARING, Status.SUSPENDED_EV, ["is_authorized", "ev_present"], after="_start_session"),
    # Session end.
    _rule(_SESSION, Status.AVAILABLE, "ev_absent", before="_end_session_unplugged"),
    _rule(_SESSION, Status.FINISHING, "stop_requested", before="_end_session_requested"),
    # Within a session.
    _rule([Status.CHARGING, Status.SUSPENDED_EV], Status.SUSPENDED_EVSE, "must_pause"),
    _rule(Status.SUSPENDED_EVSE, Status.SUSPENDED_EV, "ev_present", unless="must_pause"),
    _rule(Status.SUSPENDED_EV, Status.CHARGING, "ev_requests_energy", unless="must_pause"),
    _rule(Status.CHARGING, Status.SUSPENDED_EV, "ev_present", unless="ev_requests_energy"),
    # After a session.
    _rule(Status.FINISHING, Status.RESERVED, ["ev_absent", "is_reserved"], before="_clear_stop"),
    _rule(Status.FINISHING, Status.AVAILABLE, "ev_absent", before="_clear_stop"),
    _rule(Status.FINISHING, Status.PREPARING, "is_authorized", before="_clear_stop"),
]


class Connector:
    """One connector's session logic; the model of a ``transitions`` Machine."""

    state: str  # set by transitions

    def __init__(self, connector_id: int = 1) -> None:
        self.connector_id = connector_id
        self.inputs = ConnectorInputs()
        self.events: list[ConnectorEvent] = []
        self.id_tag: str | None = None
        self.authorized = False
        #: Set at the first evaluation after authorize(): the connection timeout counts from there.
        self.authorized_at: float | None = None
        self.session_number = 0
        self.operative = True
        self.fault_hold_done = False
        self.reservation: Reservation | None = None
        self._stop: tuple[StopReason, str] | None = None
        self._last_reason = ""
        self.machine = Machine(
            model=self,
            states=[s.value for s in Status],
            transitions=RULES,
            initial=Status.AVAILABLE.value,
            auto_transitions=False,
            ignore_invalid_triggers=True,
            after_state_change="_record_status",
        )
        self._status = Status.AVAILABLE
        #: Per state, the rules' conditions for the pre-check in :meth:`step` (this connector's own machine).
        self._guards: dict[str, list[tuple[tuple[str, bool], ...]]] = {}

    # ---- what the outside world may ask -------------------------------------------------
    @property
    def status(self) -> Status:
        return Status(self.state)

    @property
    def in_session(self) -> bool:
        return self.status in SESSION_STATES

    def authorize(self, id_tag: str, parent_id_tag: str | None = None) -> bool:
        """Grant a session to ``id_tag``; refused while a session runs, out of order, or reserved for another."""
        if self.in_session or self.status in (Status.FAULTED, Status.UNAVAILABLE) or not self.operative:
            return False
        r = self.reservation
        if r is not None and not _same_tag(r, id_tag, parent_id_tag):
            return False
        self.authorized, self.id_tag, self.authorized_at = True, id_tag, None
        self._stop = None
        return True

    def reserve(self, reservation: Reservation) -> str:
        """ReserveNow: "Accepted", "Occupied", "Faulted" or "Unavailable" (OCPP 1.6 ReservationStatus)."""
        if self.status is Status.FAULTED:
            return "Faulted"
        if self.status is Status.UNAVAILABLE or not self.operative:
            return "Unavailable"
        current = self.reservation
        same = current is not None and current.reservation_id == reservation.reservation_id
        if self.status not in (Status.AVAILABLE, Status.RESERVED) or (current is not None and not same):
            return "Occupied"
        self.reservation = reservation
        return "Accepted"

    def cancel_reservation(self, reservation_id: int) -> bool:
        r = self.reservation
        if r is None or r.reservation_id != reservation_id:
            return False
        self._end_reservation("cancelled")
        return True

    def _end_reservation(self, how: str) -> None:
        if self.reservation is not None:
            self._emit(ReservationEnded(self.reservation, how, self.inputs.wall))
            self.reservation = None

    def request_stop(self, reason: StopReason, detail: str = "") -> bool:
        """End the session (or cancel a pending authorization) for ``reason``."""
        if not self.authorized:
            return False
        self.authorized = False
        self._stop = (reason, detail)
        if not self.in_session:
            self.id_tag = None
        return True

    def step(self, inputs: ConnectorInputs, max_rules: int = 8) -> None:
        """Apply rules until the state is stable (a plug-in may pass Preparing and start at once)."""
        self.inputs = inputs
        if self.authorized and self.authorized_at is None:
            self.authorized_at = inputs.monotonic
        if self.reservation is not None and inputs.wall >= self.reservation.expires and not self.authorized:
            log.info("reservation %d for %s expired", self.reservation.reservation_id, self.reservation.id_tag)
            self._end_reservation("expired")
        for _ in range(max_rules):
            # Most steps change nothing: ask the rules directly first, and let transitions fire only when one matches.
            if not self._any_rule_matches() or not self.evaluate():
                return
        log.error("connector rules did not settle within %d steps (state %s)", max_rules, self.state)

    def _any_rule_matches(self) -> bool:
        """True when some rule for the present state would fire: the same conditions, in the same order, as the
        machine's own ``evaluate`` tries (they are pure reads, so asking twice is harmless). A step that matches
        none is then the same as transitions' no-op, at a fraction of its cost."""
        guards = self._guards.get(self.state)
        if guards is None:
            guards = self._guards[self.state] = _guards_for(self.machine, self.state)
        for conditions in guards:
            for name, target in conditions:
                if getattr(self, name)() != target:
                    break
            else:
                return True
        return False

    # ---- conditions ----------------------------------------------------------------------
    def has_trip_fault(self) -> bool:
        return bool(self.inputs.trip_faults)

    def fault_recovered(self) -> bool:
        return not self.inputs.trip_faults and self.fault_hold_done and self.inputs.letter not in ("E", "F")

    def is_inoperative(self) -> bool:
        return not self.operative

    def ev_present(self) -> bool:
        return self.inputs.letter in EV_PRESENT

    def ev_absent(self) -> bool:
        return self.inputs.letter == "A"

    def is_reserved(self) -> bool:
        return self.reservation is not None

    def is_authorized(self) -> bool:
        return self.authorized

    def stop_requested(self) -> bool:
        return not self.authorized

    def authorization_timed_out(self) -> bool:
        since = self.authorized_at if self.authorized_at is not None else self.inputs.monotonic
        return self.inputs.monotonic - since >= self.inputs.connection_timeout_s

    def must_pause(self) -> bool:
        if self.inputs.letter == "D" and not self.inputs.ventilation_allowed:
            return True
        return self.inputs.limit_a <= 0.0

    def ev_requests_energy(self) -> bool:
        return self.inputs.letter == "C" or (self.inputs.letter == "D" and self.inputs.ventilation_allowed)

    # ---- callbacks (sync: no I/O, only events) -------------------------------------------
    def _emit(self, event: ConnectorEvent) -> None:
        self.events.append(event)

    def _start_session(self) -> None:
        self.session_number += 1
        reservation_id = None
        if self.reservation is not None:
            reservation_id = self.reservation.reservation_id
            self._end_reservation("used")
        self._last_reason = f"session {self.session_number} started for {self.id_tag}"
        self._emit(SessionStarted(self.session_number, self.id_tag or "", self.inputs.wall, reservation_id))

    def _end_session(self, reason: StopReason, detail: str) -> None:
        self._emit(SessionStopped(self.session_number, self.id_tag or "", reason, detail, self.inputs.wall))
        self._last_reason = f"session {self.session_number} stopped: {reason.value}" + (
            f" ({detail})" if detail else ""
        )
        self.authorized, self.id_tag = False, None

    def _end_session_for_fault(self) -> None:
        faults = ", ".join(sorted(self.inputs.trip_faults))
        if self.in_session:
            self._end_session(StopReason.OTHER, f"fault: {faults}")
        else:
            self._drop_authorization()
        self._last_reason = f"fault: {faults}"

    def _end_session_unplugged(self) -> None:
        self._end_session(StopReason.EV_DISCONNECTED, "")

    def _end_session_requested(self) -> None:
        reason, detail = self._stop or (StopReason.OTHER, "")
        self._end_session(reason, detail)

    def _drop_authorization(self) -> None:
        self.authorized, self.id_tag, self._stop = False, None, None

    def _expire_authorization(self) -> None:
        self._emit(AuthorizationExpired(self.id_tag or "", self.inputs.wall))
        self._last_reason = f"authorization for {self.id_tag} expired: no EV within the connection timeout"
        self._drop_authorization()

    def _clear_stop(self) -> None:
        self._stop = None

    def _record_status(self) -> None:
        new = Status(self.state)
        if new is not self._status:
            self._emit(StatusChanged(self._status, new, self._last_reason or _why(self), self.inputs.wall))
            self._status = new
        self._last_reason = ""

    if TYPE_CHECKING:  # transitions adds the trigger at runtime

        def evaluate(self) -> bool: ...


def _guards_for(machine: Machine, state: str) -> list[tuple[tuple[str, bool], ...]]:
    """Each ``evaluate`` rule's conditions for ``state`` as (method name, wanted result), read from the machine
    itself (conditions, then ``unless`` as wanted False), so the pre-check cannot drift from :data:`RULES`."""
    if machine.prepare_event or machine.finalize_event:
        raise TypeError("the connector pre-check assumes an evaluate that does nothing unless a rule matches")
    guards: list[tuple[tuple[str, bool], ...]] = []
    for transition in machine.events["evaluate"].transitions.get(state, []):
        if transition.prepare:
            raise TypeError("the connector pre-check assumes rules without prepare callbacks")
        conditions: list[tuple[str, bool]] = []
        for condition in transition.conditions:
            if not isinstance(condition.func, str):
                raise TypeError("connector rules name their conditions (methods of Connector)")
            conditions.append((condition.func, bool(condition.target)))
        guards.append(tuple(conditions))
    return guards


def _same_tag(r: Reservation, id_tag: str, parent_id_tag: str | None) -> bool:
    if id_tag.casefold() == r.id_tag.casefold():
        return True
    return (
        r.parent_id_tag is not None
        and parent_id_tag is not None
        and r.parent_id_tag.casefold() == parent_id_tag.casefold()
    )


def _why(c: Connector) -> str:
    i = c.inputs
    return f"pilot {i.letter}, limit {i.limit_a:g} A" + (", authorized" if c.authorized else "")
