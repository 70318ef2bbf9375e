"""OCPP 1.6 SmartCharging on the charge point (1.6 §3.13, §5.5, §5.7, §5.11, §5.16).

SetChargingProfile / ClearChargingProfile / GetCompositeSchedule, the TxProfile a RemoteStartTransaction
carries, and the "ocpp" limit claim: the composite limit for the connector at the current wall time is
submitted to the arbiter, so the control loop (duty governor, 5 s rule, pause below 6 A) applies it. The
claim is re-evaluated when profiles change, when a transaction starts or ends, and at the next instant a
profile can change (exactly then; a 60 s re-check bounds it). Profiles are local: this runs offline too.

W <-> A conversions: see :mod:`firmware.ocpp.v16.electrical` (measured voltage and phases, else nominal).

Limits (read-only keys): ChargeProfileMaxStackLevel 8, ChargingScheduleMaxPeriods 96 (a day in 15 min
steps), MaxChargingProfilesInstalled 16. GetCompositeSchedule covers at most :data:`MAX_COMPOSITE_S` (2 days;
the answer's duration says what it covers) and is computed off the event loop, so a large request never
stalls the control loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Final

from firmware.aio import wait_event
from firmware.limits.arbiter import Arbiter
from firmware.limits.schedule import ChargingProfile, Limit, composite_schedule, limit_at, next_change
from firmware.metering import MeterSampler
from firmware.ocpp.outbox import Outbox
from firmware.ocpp.v16.configuration import Configuration
from firmware.ocpp.v16.electrical import Electrical, electrical, floor_tenth
from firmware.ocpp.v16.meter_values import iso
from firmware.ocpp.v16.profiles import Installed, ProfileStore
from firmware.session import SessionManager, SessionRecord
from firmware.store import StoreError
from hal.clock import Clock
from hal.interfaces import MeterReading

log = logging.getLogger("firmware.ocpp.smart_charging")

CLAIM: Final = "ocpp"
CONNECTOR: Final = 1
#: Upper bound between two evaluations of the claim (also catches a wall clock that jumped).
RECHECK_S: Final = 60.0
#: The longest stretch a GetCompositeSchedule answer covers.
MAX_COMPOSITE_S: Final = 2 * 86_400
#: A RemoteStartTransaction profile waits this long beyond ConnectionTimeOut for its transaction.
PENDING_SLACK_S: Final = 60.0
_UNITS: Final = {"Current": "A", "Power": "W"}
_STORE_ERRORS: Final = (sqlite3.Error, StoreError)


class Refused(ValueError):
    """A profile this charge point does not take; the message says why (logged, answered Rejected)."""


@dataclass(frozen=True, slots=True)
class _Pending:
    """A RemoteStartTransaction's TxProfile, waiting for the transaction it starts."""

    id_tag: str
    profile: ChargingProfile
    at: float


class SmartCharging:
    def __init__(
        self,
        *,
        profiles: ProfileStore,
        configuration: Configuration,
        arbiter: Arbiter,
        clock: Clock,
        sessions: SessionManager,
        outbox: Outbox,
        sampler: MeterSampler,
        max_current_a: float,
        wired_phases: int,
        nominal_voltage_v: float,
        tz: tzinfo = UTC,
    ) -> None:
        self.profiles = profiles
        self.configuration = configuration
        self.arbiter = arbiter
        self.clock = clock
        self.sessions = sessions
        self.outbox = outbox
        self.sampler = sampler
        self.max_current_a = max_current_a
        self.wired_phases = wired_phases
        self.nominal_voltage_v = nominal_voltage_v
        #: Recurring profiles restart at the same wall-clock time in this zone (OCPP times are UTC).
        self.tz = tz
        self.claim: Limit | None = None
        self._pending: _Pending | None = None
        self._wake = asyncio.Event()
        self._due_wall: datetime | None = None
        self._due_mono = -math.inf
        # The OCPP service wires on_session_started, on_transaction_ended and on_meter_reading.
        # A transaction never outlives a restart here (power-loss recovery stops it): stale TxProfiles go.
        open_refs = {tx.ref for tx in outbox.open_transactions()}
        self._remove(lambda i: i.profile.purpose == "TxProfile" and i.transaction_ref not in open_refs, "stale")

    # ---- what applies ----------------------------------------------------------------------------------------
    def _transaction(self) -> tuple[int, datetime] | None:
        record = self.sessions.current
        if record is None or record.transaction_ref is None:
            return None
        return record.transaction_ref, record.started_at

    def _applicable(self, tx: tuple[int, datetime] | None) -> list[ChargingProfile]:
        """ChargePointMax and TxDefault profiles, and the TxProfiles of the running transaction."""
        ref = None if tx is None else tx[0]
        return [i.profile for i in self.profiles.all() if i.profile.purpose != "TxProfile" or i.transaction_ref == ref]

    def electrical(self) -> Electrical:
        reading = None if self.sampler.faulted else self.sampler.latest
        return electrical(reading, self.nominal_voltage_v, self.wired_phases)

    # ---- SetChargingProfile -----------------------------------------------------------------------------------
    def set_profile(self, connector_id: int, data: Any) -> str:
        """SetChargingProfile.req -> "Accepted" or "Rejected"; never raises."""
        try:
            profile = self._parse(connector_id, data)
            ref = self._tx_profile_ref(profile) if profile.purpose == "TxProfile" else None
            self._check_room(profile)
            replaced = self.profiles.install(profile, ref, self.clock.now())
        except Refused as exc:
            log.warning("SetChargingProfile on connector %s rejected: %s", connector_id, exc)
            return "Rejected"
        except _STORE_ERRORS:
            log.exception("SetChargingProfile: the profile could not be stored; rejected")
            return "Rejected"
        log.info(
            "%s %d installed on connector %d (stack %d)%s",
            profile.purpose,
            profile.profile_id,
            connector_id,
            profile.stack_level,
            f", replacing {replaced}" if replaced else "",
        )
        self.refresh()
        return "Accepted"

    def _parse(self, connector_id: int, data: Any) -> ChargingProfile:
        if isinstance(connector_id, bool) or connector_id not in (0, CONNECTOR):
            raise Refused(f"connector {connector_id!r} does not exist")
        try:
            profile = ChargingProfile.from_wire(data, connector_id=connector_id)
        except (ValueError, TypeError) as exc:
            raise Refused(str(exc)) from exc
        top = self.configuration.get_int("ChargeProfileMaxStackLevel")
        if profile.stack_level > top:
            raise Refused(f"stackLevel {profile.stack_level} above ChargeProfileMaxStackLevel {top}")
        most = self.configuration.get_int("ChargingScheduleMaxPeriods")
        if len(profile.schedule.periods) > most:
            raise Refused(f"{len(profile.schedule.periods)} periods, ChargingScheduleMaxPeriods is {most}")
        allowed = {_UNITS[u] for u in self.configuration.get_list("ChargingScheduleAllowedChargingRateUnit")}
        if profile.schedule.charging_rate_unit not in allowed:
            raise Refused(f"chargingRateUnit {profile.schedule.charging_rate_unit} is not allowed")
        if profile.valid_to is not None and profile.valid_to <= self.clock.now():
            raise Refused(f"validTo {profile.valid_to.isoformat()} has passed")
        return profile

    def _tx_profile_ref(self, profile: ChargingProfile) -> int:
        """1.6 §3.13: a TxProfile only with a transaction on its connector, and only for that transaction."""
        tx = self._transaction()
        if tx is None:
            raise Refused(f"no transaction on connector {profile.connector_id}")
        if profile.transaction_id is not None:
            running = self.outbox.transaction_id(tx[0])
            if running != profile.transaction_id:
                raise Refused(f"transactionId {profile.transaction_id} is not the running one ({running})")
        return tx[0]

    def _check_room(self, profile: ChargingProfile, *, count_pending: bool = True) -> None:
        """MaxChargingProfilesInstalled, counting a RemoteStart profile that waits for its transaction."""
        most = self.configuration.get_int("MaxChargingProfilesInstalled")
        pending = count_pending and self._pending is not None
        held = len(self.profiles) - len(self.profiles.replaced_by(profile)) + pending
        if held + 1 > most:
            raise Refused(f"MaxChargingProfilesInstalled ({most}) reached")

    # ---- ClearChargingProfile ---------------------------------------------------------------------------------
    def clear_profiles(
        self, profile_id: int | None, connector_id: int | None, purpose: str | None, stack_level: int | None
    ) -> str:
        """ClearChargingProfile.req: by id, or every profile matching all the criteria given (none: all).

        "Accepted" if something was removed, else "Unknown"; never raises.
        """

        def match(p: ChargingProfile) -> bool:
            if profile_id is not None:
                return p.profile_id == profile_id
            return (
                (connector_id is None or p.connector_id == connector_id)
                and (purpose is None or p.purpose == purpose)
                and (stack_level is None or p.stack_level == stack_level)
            )

        pending = self._pending is not None and match(self._pending.profile)
        if pending:
            self._pending = None
        gone = self._remove(lambda i: match(i.profile), "cleared by the CSMS")
        if gone is None:
            return "Unknown"
        self.refresh()
        return "Accepted" if gone or pending else "Unknown"

    def _remove(self, match: Callable[[Installed], bool], why: str) -> list[int] | None:
        try:
            gone = self.profiles.remove(match)
        except _STORE_ERRORS:
            log.exception("charging profiles could not be removed (%s)", why)
            return None
        if gone:
            log.info("charging profile(s) %s removed: %s", gone, why)
        return gone

    # ---- GetCompositeSchedule ---------------------------------------------------------------------------------
    async def composite(self, connector_id: int, duration_s: int, unit: str | None) -> dict[str, Any] | None:
        """GetCompositeSchedule.req -> the conf's fields (snake_case), or None for Rejected.

        From now for ``duration_s`` (at most MAX_COMPOSITE_S), in ``unit`` (default A); connector 0 = the
        ChargePointMax view. Stretches no profile covers show the charger's own maximum, and no period exceeds
        it: this is the schedule the charger will follow.
        """
        if connector_id not in (0, CONNECTOR) or duration_s < 1 or unit not in (None, "A", "W"):
            return None
        now = self.clock.now()
        tx = self._transaction()
        profiles = self._applicable(tx)
        covered = min(duration_s, MAX_COMPOSITE_S)
        elec = self.electrical()
        periods = await asyncio.to_thread(
            self._composite_periods, profiles, now, covered, tx, connector_id, unit or "A", elec
        )
        start = iso(now)
        return {
            "connector_id": connector_id,
            "schedule_start": start,
            "charging_schedule": {
                "duration": covered,
                "start_schedule": start,
                "charging_rate_unit": unit or "A",
                "charging_schedule_period": periods,
            },
        }

    def _composite_periods(
        self,
        profiles: list[ChargingProfile],
        now: datetime,
        covered: int,
        tx: tuple[int, datetime] | None,
        connector_id: int,
        unit: str,
        elec: Electrical,
    ) -> list[dict[str, Any]]:
        """Pure (runs in a worker thread): the composite in ``unit``, capped at the charger's maximum."""
        steps = composite_schedule(
            profiles,
            now,
            covered,
            tx_start=None if tx is None else tx[1],
            connector_id=connector_id,
            unit="A",
            to_amps=elec.to_amps,
            tz=self.tz,
            default=self.max_current_a,
        )
        out: list[dict[str, Any]] = []
        for offset, amps, phases in steps:
            capped = min(amps, self.max_current_a)
            value = floor_tenth(capped if unit == "A" else elec.to_watts(capped, phases))
            if out and (out[-1]["limit"], out[-1].get("number_phases")) == (value, phases):
                continue
            period: dict[str, Any] = {"start_period": offset, "limit": value}
            if phases is not None:
                period["number_phases"] = phases
            out.append(period)
        return out

    # ---- RemoteStartTransaction with a profile ----------------------------------------------------------------
    def remote_start_profile(self, data: Any, connector_id: int | None) -> ChargingProfile | None:
        """The TxProfile of a RemoteStartTransaction.req if acceptable (1.6 §5.11), else None (Rejected)."""
        try:
            profile = self._parse(CONNECTOR if connector_id is None else connector_id, data)
            if profile.purpose != "TxProfile":
                raise Refused(f"a RemoteStartTransaction profile must be a TxProfile, not {profile.purpose}")
            if profile.transaction_id is not None:
                raise Refused("a RemoteStartTransaction profile cannot name a transaction that has not started")
            self._check_room(profile, count_pending=False)  # it takes the place of any waiting one
        except Refused as exc:
            log.warning("RemoteStartTransaction profile rejected: %s", exc)
            return None
        return profile

    def hold_for_remote_start(self, id_tag: str, profile: ChargingProfile | None) -> None:
        """Keep ``profile`` for the transaction ``id_tag`` starts next (None: a remote start without one)."""
        self._pending = None if profile is None else _Pending(id_tag, profile, self.clock.monotonic())

    # ---- transactions -----------------------------------------------------------------------------------------
    def on_session_started(self, record: SessionRecord) -> None:
        """Bind a waiting RemoteStart profile to the transaction it started; re-evaluate (Relative profiles)."""
        pending, self._pending = self._pending, None
        wait = self.configuration.get_int("ConnectionTimeOut") + PENDING_SLACK_S
        if (
            pending is not None
            and record.transaction_ref is not None
            and pending.id_tag.casefold() == record.id_tag.casefold()
            and self.clock.monotonic() - pending.at <= wait
        ):
            try:
                self.profiles.install(pending.profile, record.transaction_ref, self.clock.now())
                log.info("TxProfile %d bound to transaction %d", pending.profile.profile_id, record.transaction_ref)
            except _STORE_ERRORS:
                log.exception("the RemoteStartTransaction profile could not be stored")
        self.refresh()

    def on_transaction_ended(self, ref: int) -> None:
        """1.6 §3.13: a TxProfile is deleted when its transaction ends."""
        self._remove(lambda i: i.transaction_ref == ref, f"transaction {ref} ended")
        self.refresh()

    # ---- the claim ----------------------------------------------------------------------------------------------
    def evaluate(self) -> float:
        """Submit (or withdraw) the "ocpp" claim for now; returns the seconds until it may change."""
        now, mono = self.clock.now(), self.clock.monotonic()
        self._remove(lambda i: i.profile.valid_to is not None and i.profile.valid_to <= now, "validTo passed")
        tx = self._transaction()
        tx_start = None if tx is None else tx[1]
        profiles = self._applicable(tx)
        elec = self.electrical()
        lim = limit_at(profiles, now, tx_start=tx_start, connector_id=CONNECTOR, to_amps=elec.to_amps, tz=self.tz)
        if lim is None:
            if self.claim is not None:
                log.info("no charging profile applies: the ocpp limit is withdrawn")
            self.arbiter.withdraw(CLAIM)
        else:
            amps = floor_tenth(elec.to_amps(lim.value, lim.unit, lim.number_phases))
            reason = f"{lim.purpose} {lim.profile_id} stack {lim.stack_level} period {lim.period_index + 1}: "
            reason += f"{lim.value:g} {lim.unit}"
            if lim.unit == "W":
                phases = elec.phases(lim.number_phases)
                reason += f" = {amps:g} A per phase at {elec.voltage_v:.0f} V x {phases}"
            if self.claim is None or (self.claim.profile_id, self.claim.period_index, self.claim.value) != (
                lim.profile_id,
                lim.period_index,
                lim.value,
            ):
                log.info("ocpp limit: %s", reason)
            self.arbiter.submit(CLAIM, amps, mono, reason=reason, phases=lim.number_phases)
        self.claim = lim
        change = next_change(profiles, now, RECHECK_S, tx_start=tx_start, tz=self.tz)
        wait = RECHECK_S if change is None else max(0.01, (change - now).total_seconds())
        self._due_wall, self._due_mono = now + timedelta(seconds=wait), mono + wait
        return wait

    def refresh(self) -> None:
        """Apply a change now (the CSMS sees its answer with the claim already in place) and re-arm the timer."""
        self.evaluate()
        self._wake.set()

    def on_meter_reading(self, reading: MeterReading) -> None:
        """A due check on every reading: a wall clock that jumped, a non-real-time clock, a W limit's voltage."""
        due = self._due_wall is not None and self.clock.now() >= self._due_wall
        if due or self.clock.monotonic() >= self._due_mono or (self.claim is not None and self.claim.unit == "W"):
            self._wake.set()

    async def run(self) -> None:
        """Evaluate the claim, sleep until the next instant it may change or something wakes it, repeat."""
        while True:
            self._wake.clear()
            wait = self.evaluate()
            await wait_event(self._wake, wait)
