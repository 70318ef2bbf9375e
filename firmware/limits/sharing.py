"""Several chargers sharing one fuse with no central box: the pure core (no I/O, time comes in).

Every charger runs :class:`SharedFuse` on its own view of the group, built from the members' reports
(demand, allowance, measured current). Two rules keep the fuse safe while the views differ:

* **Headroom.** A charger takes at most ``fuse - margin - sum over the others of what they may draw``,
  where "may draw" is ``max(published allowance, measured current)`` (more for silent members, below).
* **Reserve, then rise.** A rise is first *published* as a reservation (the allowance goes up, the
  claim does not). The claim rises only after the broker has echoed the reservation back and every
  live member has acknowledged it (each report carries the ``seq`` it last saw from everyone) and the
  headroom, counted again with everybody's reservations, still holds. Publishing first and rising a
  moment later is not enough: two chargers whose demands rose at the same time would each rise into
  the same free amps, each before hearing the other. With the acknowledgements the charger that
  rises last has seen every reservation, so the sum stays below the fuse for any message timing.

A drop applies at once, and the old allowance stays published until the EV has followed the lower
offer (a fresh meter reading below the new claim, or the 5 s IEC 61851-1 gives the EV to follow).

A member counts at its last values while it reports; once quiet for two publish intervals (or on its
Last Will) at the higher of its last values and ``fallback_a`` (it may be cut off and rising to its
fallback); after ``member_timeout_s`` at ``fallback_a`` (it has dropped there by then); after a clean
"left" at 0. Silence is measured on an "awake" clock that does not run while this process itself is
stalled, so a pause here never makes the others look dead. A charger that loses its link (disconnected,
or its own reports stop coming back) drops to ``fallback_a`` (or stays lower) at once, and only rises to
``fallback_a`` once the others count it there and their EVs have followed. After (re)connecting it
listens for two publish intervals before rising. Before its first connection since the process started
it claims 0: the others may count it 0 (it left cleanly last time), so it cannot take ``fallback_a``
unannounced.

Timing: the reserve-then-rise rule needs no bound on message delays. Failure detection does: a report
must arrive within one publish interval, and ``member_timeout_s >= 3 x publish_interval_s + release_s``
(checked). ``fallback_a x members`` must fit ``fuse - margin`` (everyone may be cut off at once; not
checkable here, the group size is not known). A charger whose own process hangs cannot drop its claim:
that is the hardware watchdog's job.

The split itself (:func:`~firmware.limits.fair_share.allocate`) and what a charger asks for
(:class:`~firmware.limits.fair_share.DemandEstimator`) live in ``fair_share``.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from firmware.limits.fair_share import STEP_A, allocate, floor_step
from hal.iec61851 import MIN_CURRENT_A

log = logging.getLogger("firmware.limits.sharing")

_EPS: Final = 1e-6


class MemberStatus(enum.StrEnum):
    ONLINE = "online"
    #: Graceful shutdown, after its EV stopped drawing: counts 0.
    LEFT = "left"
    #: The broker's Last Will for an abrupt disconnect: counts at least ``fallback_a``.
    LOST = "lost"


class Mode(enum.StrEnum):
    """Where this charger stands in the group."""

    #: Never connected since the process started: claims 0.
    BOOT = "boot"
    #: Link lost: at most ``fallback_a``, rising to it once the others count it there.
    ISOLATED = "isolated"
    #: (Re)connected: hearing everyone before rising.
    LISTENING = "listening"
    COORDINATED = "coordinated"
    #: Shutting down: claims 0, says "left" once the EV has stopped drawing.
    LEAVING = "leaving"


@dataclass(frozen=True, slots=True)
class Report:
    """One member's state, as published (retained) on ``<group>/<charger_id>/state``."""

    charger_id: str
    #: Random per process start: tells a restarted charger from a late message of its previous life.
    boot: str
    #: Connection number within ``boot``: tells a stale Last Will from the live connection's reports.
    conn: int
    status: MemberStatus
    #: Increases with every report of one ``boot``.
    seq: int = 0
    #: What the charger would take if it could (0 when no EV wants current).
    demand_a: float = 0.0
    #: The most it may draw now or before its next report (claim, pending reservation, EV still slowing down).
    allowance_a: float = 0.0
    #: Its own meter's highest phase current.
    actual_a: float = 0.0
    phases: int = 3
    #: Wall-clock UNIX time of sending (information only: nothing here trusts other clocks).
    ts: float = 0.0
    #: Acknowledgements: for each member heard, the (boot, seq) of its last report taken into account.
    seen: Mapping[str, tuple[str, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SharingParams:
    """The shared fuse and the protocol's timing (seconds on the controller's monotonic clock)."""

    #: The fuse all members are behind, per phase.
    fuse_a: float
    #: Kept free below the fuse (meter error, an EV a little above its offer).
    margin_a: float = 1.0
    #: What a charger cut off from the group runs at; ``fallback_a x chargers`` must fit ``fuse - margin``.
    fallback_a: float = 6.0
    #: A member not heard from for this long is counted at ``fallback_a`` (it has dropped there by then).
    member_timeout_s: float = 15.0
    #: Every member reports at least this often.
    publish_interval_s: float = 2.0
    #: The EV has this long to follow a lower PWM offer (IEC 61851-1: 5 s); used without a fresh meter reading.
    release_s: float = 5.0
    #: A reading this close above the new claim counts as "the EV has followed".
    release_tolerance_a: float = 0.5
    #: A rise smaller than this is not worth a reservation round. Keep it small: drops apply for any amount,
    #: so a large value would let a share ratchet down on transient over-counts and stay there.
    rise_min_a: float = STEP_A

    def __post_init__(self) -> None:
        for name in ("fuse_a", "publish_interval_s", "release_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive, got {value!r}")
        for name in ("release_tolerance_a", "rise_min_a"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if not (math.isfinite(self.margin_a) and 0 <= self.margin_a < self.fuse_a):
            raise ValueError(f"margin_a must be >= 0 and below the fuse, got {self.margin_a!r}")
        if not (math.isfinite(self.fallback_a) and (self.fallback_a == 0 or self.fallback_a >= MIN_CURRENT_A)):
            raise ValueError(f"fallback_a must be 0 or at least {MIN_CURRENT_A:g} A, got {self.fallback_a!r}")
        if self.fallback_a > self.capacity_a:
            raise ValueError(f"fallback_a {self.fallback_a:g} A does not fit fuse - margin = {self.capacity_a:g} A")
        need = 3 * self.publish_interval_s + self.release_s
        if not (math.isfinite(self.member_timeout_s) and self.member_timeout_s >= need):
            raise ValueError(
                f"member_timeout_s must be >= 3 x publish_interval_s + release_s = {need:g} s "
                f"(time to notice the link is gone, drop, and let the EV follow), got {self.member_timeout_s!r}"
            )

    @property
    def capacity_a(self) -> float:
        return self.fuse_a - self.margin_a

    @property
    def isolation_s(self) -> float:
        """No echo of our own report for this long: we are cut off; drop to fallback while the EV can follow
        before anyone times us out (``member_timeout_s`` minus the EV's release time minus one interval)."""
        return self.member_timeout_s - self.release_s - self.publish_interval_s

    @property
    def suspect_s(self) -> float:
        """A member quiet for this long (real time) counts at least ``fallback_a``: it may be cut off and rising."""
        return 2.0 * self.publish_interval_s

    @property
    def listen_s(self) -> float:
        """After (re)connecting, hear everyone (each reports once per interval) before rising."""
        return 2.0 * self.publish_interval_s

    @property
    def fallback_rise_s(self) -> float:
        """A cut-off charger below ``fallback_a`` rises to it this long after it noticed: by then every other
        member counts it there (its last report is older than ``suspect_s``, one interval allowed for delivery)
        and their EVs have had ``release_s`` to follow the lower offers that made room for it."""
        return self.suspect_s + self.publish_interval_s + self.release_s


@dataclass(frozen=True, slots=True)
class Inputs:
    """What the charger tells the core on each update."""

    demand_a: float
    #: Own meter, highest phase current, and the monotonic time of that reading (-inf: no reading).
    actual_a: float = 0.0
    actual_at: float = -math.inf
    #: The current the controller offers on the PWM now.
    offered_a: float = 0.0
    phases: int = 3


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of one update: the claim for the arbiter, and whether a report is due now."""

    claim_a: float
    publish: bool
    reason: str


@dataclass(slots=True)
class _Member:
    report: Report
    status: MemberStatus
    #: Real (controller clock) and awake-time instants of the last ONLINE/LEFT report.
    heard_at: float
    heard_awake: float


@dataclass(slots=True)
class _Reservation:
    amps: float
    #: The seq of the first report that carried it (None: not yet handed out for publishing).
    seq: int | None = None


class SharedFuse:
    """One charger's side of the shared fuse: feed it reports and inputs, apply its claim, publish its reports.

    The caller's duties: submit ``Step.claim_a`` to the arbiter as soon as :meth:`update` returns it (a
    rise here has already been published and acknowledged); publish :meth:`report` whenever
    ``Step.publish`` says so; pass every received report (own echoes included) to :meth:`receive`.
    """

    def __init__(self, params: SharingParams, charger_id: str, *, boot: str, now: float) -> None:
        self.params = params
        self.charger_id = charger_id
        self.boot = boot
        self.members: dict[str, _Member] = {}
        self.mode = Mode.BOOT
        self.reason = "shared fuse: not yet heard by the group"
        self.duplicate_id = False
        self._claim = 0.0
        self._held_a = 0.0
        self._held_ok_since: float | None = None
        self._reserve: _Reservation | None = None
        self._connected = False
        self._conn = 0
        self._last_echo: float | None = None
        self._echo_seq = 0
        self._seq = 0
        self._last_publish: float | None = None
        self._published: tuple[MemberStatus, float, float] | None = None
        self._needs_ack = False
        self._listen_since = now
        self._fallback_armed = False
        self._fallback_at: float | None = None
        self._left = False
        self._last_now = now
        self._awake = 0.0
        self._inputs = Inputs(0.0)
        self._fair = 0.0
        self._headroom = params.capacity_a

    # -- the link ---------------------------------------------------------------------------
    def connecting(self) -> Report:
        """A new connection is being opened: returns its Last Will (status lost, this connection's number)."""
        self._conn += 1
        return Report(self.charger_id, self.boot, self._conn, MemberStatus.LOST)

    def set_connected(self, connected: bool, now: float) -> None:
        """The connection is up (and subscribed) or gone. Up is not enough to rise: the echo must come back."""
        self._advance(now)
        self._connected = connected
        self._last_echo = None
        self._last_publish = None  # report at once on a new connection: the echo proves the link

    @property
    def connected(self) -> bool:
        return self._connected

    # -- receiving ------------------------------------------------------------------------
    def receive(self, report: Report, now: float, *, retained: bool = False) -> None:
        """A report from the broker (``retained``: replayed on subscribe, not sent just now)."""
        self._advance(now)
        if report.charger_id == self.charger_id:
            self._own(report, now, retained)
            return
        known = self.members.get(report.charger_id)
        same_life = known is not None and known.report.boot == report.boot
        if report.status is MemberStatus.LOST:
            if known is None:
                self.members[report.charger_id] = _Member(report, MemberStatus.LOST, now, self._awake)
                log.info("shared fuse: member %s is lost (Last Will)", report.charger_id)
            elif same_life and report.conn >= known.report.conn and known.status is not MemberStatus.LOST:
                known.status = MemberStatus.LOST
                log.warning("shared fuse: member %s lost its link (Last Will)", report.charger_id)
            return
        if known is not None and same_life and report.seq <= known.report.seq:
            return  # not newer than what we have (a resend, or the retained copy of it)
        before = None if known is None else known.report.allowance_a
        if before is None or report.allowance_a > before + _EPS or not same_life:
            self._needs_ack = True  # a reservation (or a new life): acknowledge it soon
        if known is None or known.status is not report.status:
            log.info("shared fuse: member %s is %s", report.charger_id, report.status.value)
        self.members[report.charger_id] = _Member(report, report.status, now, self._awake)

    def _own(self, report: Report, now: float, retained: bool) -> None:
        if report.boot != self.boot:
            if not retained and report.status is not MemberStatus.LOST and not self.duplicate_id:
                self.duplicate_id = True
                log.error("shared fuse: another charger reports as %r: charger ids must be unique", self.charger_id)
            return
        if report.status is MemberStatus.LOST or report.conn != self._conn:
            return  # the Last Will of an earlier connection, or a report from before it
        self._last_echo = now
        self._echo_seq = max(self._echo_seq, report.seq)

    def forget(self, charger_id: str) -> None:
        """The member's retained state was cleared (a charger taken out of service): count it no more."""
        if self.members.pop(charger_id, None) is not None:
            log.warning("shared fuse: member %s removed from the group (retained state cleared)", charger_id)

    # -- counting the others --------------------------------------------------------------
    def _live(self, m: _Member) -> bool:
        return m.status is MemberStatus.ONLINE and self._awake - m.heard_awake <= self.params.member_timeout_s

    def counted(self, m: _Member, now: float) -> float:
        """What member ``m`` may be drawing, as far as this charger can tell."""
        if m.status is MemberStatus.LEFT:
            return 0.0
        p = self.params
        last = max(m.report.allowance_a, m.report.actual_a)
        # Awake time: a pause of this process is not the others' silence (it would count them too low).
        if self._awake - m.heard_awake > p.member_timeout_s:
            return p.fallback_a
        # Real time: a member quiet for a while may be cut off and about to rise to fallback.
        if m.status is MemberStatus.LOST or now - m.heard_at > p.suspect_s:
            return max(last, p.fallback_a)
        return last

    def _target(self, now: float) -> float:
        """This charger's share now: min(fair share, fuse - margin - the others), 0 below 6 A."""
        cap = self.params.capacity_a
        demands = {self.charger_id: self._inputs.demand_a}
        incumbents = {self.charger_id} if self._claim >= MIN_CURRENT_A else set()
        others = fixed = 0.0
        for cid, m in self.members.items():
            c = self.counted(m, now)
            others += c
            if self._live(m):
                demands[cid] = m.report.demand_a
                if m.report.allowance_a >= MIN_CURRENT_A:
                    incumbents.add(cid)
            else:
                fixed += c
        self._fair = allocate(cap - fixed, demands, incumbents)[self.charger_id]
        self._headroom = cap - others
        target = floor_step(max(0.0, min(self._fair, self._headroom)))
        return target if target >= MIN_CURRENT_A else 0.0

    def _acknowledged(self, seq: int) -> bool:
        if self._echo_seq < seq:
            return False
        for m in self.members.values():
            if self._live(m):
                ack = m.report.seen.get(self.charger_id)
                if ack is None or ack[0] != self.boot or ack[1] < seq:
                    return False
        return True

    # -- the step -----------------------------------------------------------------------
    def _advance(self, now: float) -> None:
        dt = now - self._last_now
        if dt > 0:
            self._awake += min(dt, self.params.publish_interval_s)
            self._last_now = now

    def update(self, now: float, inputs: Inputs) -> Step:
        self._advance(now)
        self._inputs = inputs
        before = (self._claim, self.mode)
        self._update_mode(now)
        if self.mode in (Mode.BOOT, Mode.LEAVING):
            self._lower(0.0)
        elif self.mode is Mode.COORDINATED:
            self._coordinate(now)
        else:  # ISOLATED, LISTENING
            self._fall_back(now)
        self._release(now, inputs)
        if self.mode is Mode.LEAVING and self._held_a <= self._claim and inputs.offered_a <= _EPS:
            if not self._left:
                log.info("shared fuse: EV stopped drawing; telling the group we leave")
            self._left = True
        if (self._claim, self.mode) != before:
            self.reason = self._explain(now)
        return Step(self._claim, self._connected and self._due(now), self.reason)

    def _update_mode(self, now: float) -> None:
        p = self.params
        link = self._connected and self._last_echo is not None and now - self._last_echo <= p.isolation_s
        if self.mode is Mode.LEAVING:
            return
        if self.mode in (Mode.LISTENING, Mode.COORDINATED) and not link:
            self.mode = Mode.ISOLATED
            self._fallback_armed = True
            if self._fallback_at is None:
                self._fallback_at = now + p.fallback_rise_s
            self._reserve = None
            log.warning(
                "shared fuse: group link lost (%s); at most %g A fallback",
                "disconnected" if not self._connected else "no echo",
                p.fallback_a,
            )
        elif self.mode in (Mode.BOOT, Mode.ISOLATED) and link:
            self.mode = Mode.LISTENING
            self._listen_since = now
            log.info("shared fuse: in the group; listening %.1f s before rising", p.listen_s)
        elif self.mode is Mode.LISTENING and now - self._listen_since >= p.listen_s:
            self.mode = Mode.COORDINATED
            self._fallback_armed = False
            self._fallback_at = None
            log.info("shared fuse: sharing %g A with %d other members", p.capacity_a, len(self.members))

    def _fall_back(self, now: float) -> None:
        fallback = self.params.fallback_a
        self._reserve = None
        if self._claim > fallback:
            self._lower(fallback)
        due = self._fallback_armed and self._fallback_at is not None and now >= self._fallback_at
        if due and self._claim < fallback:
            self._raise(fallback)

    def _coordinate(self, now: float) -> None:
        target = self._target(now)
        if target < self._claim - _EPS:
            self._lower(target)
            self._reserve = None
            return
        if target < self._claim + self.params.rise_min_a:
            self._reserve = None
            return
        r = self._reserve
        if r is None:
            self._reserve = _Reservation(target)
        elif r.seq is not None and self._acknowledged(r.seq):
            self._raise(min(r.amps, target))
            self._reserve = None
        elif target < r.amps:
            r.amps = target  # shrink in place: the acknowledgements of the larger one cover it

    def _lower(self, amps: float) -> None:
        if amps < self._claim - _EPS:
            self._held_a = max(self._held_a, self._claim)
            self._held_ok_since = None
            self._claim = amps

    def _raise(self, amps: float) -> None:
        self._claim = amps
        if self._held_a <= amps:
            self._held_a = 0.0

    def _release(self, now: float, inputs: Inputs) -> None:
        """Stop publishing an old, higher claim once the EV has followed the lower offer."""
        if self._held_a <= self._claim:
            self._held_a = 0.0
            return
        if inputs.offered_a > self._claim + _EPS:
            self._held_ok_since = None  # the controller has not applied the drop yet
            return
        if self._held_ok_since is None:
            self._held_ok_since = now
        if inputs.actual_at >= self._held_ok_since:  # a reading taken after the offer went down
            followed = inputs.actual_a <= self._claim + self.params.release_tolerance_a
        else:  # no fresh reading (no meter): the EV has release_s to follow
            followed = now - self._held_ok_since >= self.params.release_s
        if followed:
            self._held_a = 0.0

    # -- publishing -----------------------------------------------------------------------
    @property
    def claim_a(self) -> float:
        return self._claim

    @property
    def allowance_a(self) -> float:
        """What the others must count for us: claim, pending reservation, old claim the EV may still draw."""
        a = max(self._claim, self._held_a)
        if self._reserve is not None:
            a = max(a, self._reserve.amps)
        if self._fallback_armed and self.mode in (Mode.ISOLATED, Mode.LISTENING):
            a = max(a, self.params.fallback_a)
        return a

    @property
    def status(self) -> MemberStatus:
        return MemberStatus.LEFT if self._left else MemberStatus.ONLINE

    @property
    def left(self) -> bool:
        """Leaving is complete: the EV has stopped and the next report says "left"."""
        return self._left

    @property
    def left_echoed(self) -> bool:
        """The broker has the "left" report (our echo of it came back)."""
        return (
            self._left
            and self._published is not None
            and self._published[0] is MemberStatus.LEFT
            and (self._echo_seq >= self._seq)
        )

    def _due(self, now: float) -> bool:
        if self._published is None or self._last_publish is None:
            return True
        status, allowance, demand = self._published
        d = 0.0 if self.mode is Mode.LEAVING else self._inputs.demand_a  # as report() publishes it
        return (
            status is not self.status
            or abs(allowance - self.allowance_a) > _EPS
            or abs(demand - d) >= 1.0
            or (demand <= 0) != (d <= 0)
            or self._needs_ack
            or (self._reserve is not None and self._reserve.seq is None)
            or now - self._last_publish >= self.params.publish_interval_s
        )

    def report(self, now: float, wall: float = 0.0) -> Report:
        """The report to publish now (counts as published: a reservation in it waits for its acknowledgements)."""
        self._seq += 1
        if self._reserve is not None and self._reserve.seq is None:
            self._reserve.seq = self._seq
        self._last_publish = now
        self._needs_ack = False
        allowance = 0.0 if self._left else self.allowance_a
        demand = 0.0 if self.mode is Mode.LEAVING else self._inputs.demand_a
        self._published = (self.status, allowance, demand)
        seen = {cid: (m.report.boot, m.report.seq) for cid, m in self.members.items() if m.report.seq > 0}
        return Report(
            charger_id=self.charger_id,
            boot=self.boot,
            conn=self._conn,
            status=self.status,
            seq=self._seq,
            demand_a=round(demand, 2),
            allowance_a=round(allowance, 2),
            actual_a=round(max(0.0, self._inputs.actual_a), 2),
            phases=self._inputs.phases,
            ts=wall,
            seen=seen,
        )

    def leave(self) -> None:
        """Graceful shutdown: claim 0 now; the report says "left" once the EV has stopped drawing."""
        if self.mode is not Mode.LEAVING:
            log.info("shared fuse: leaving the group")
            self.mode = Mode.LEAVING
            self._reserve = None

    # -- explaining -----------------------------------------------------------------------
    def _explain(self, now: float) -> str:
        p = self.params
        if self.mode is Mode.BOOT:
            return "shared fuse: not yet heard by the group"
        if self.mode is Mode.LEAVING:
            return "shared fuse: leaving the group"
        if self.mode is Mode.ISOLATED:
            return f"shared fuse: group link lost, fallback {p.fallback_a:g} A (now {self._claim:g} A)"
        if self.mode is Mode.LISTENING:
            return f"shared fuse: (re)joined the group, listening before rising (now {self._claim:g} A)"
        n = 1 + sum(1 for m in self.members.values() if self._live(m) and m.report.demand_a > 0)
        return (
            f"shared fuse {p.capacity_a:g} A: share {self._fair:.1f} A of {n} wanting, "
            f"others may draw {p.capacity_a - self._headroom:.1f} A"
        )

    def describe(self, now: float) -> dict[str, Any]:
        """The status API's view: own state and every member with what it counts for here."""
        p = self.params
        rows = []
        for cid, m in sorted(self.members.items()):
            rows.append(
                {
                    "charger_id": cid,
                    "status": m.status.value,
                    "live": self._live(m),
                    "demand_a": m.report.demand_a,
                    "allowance_a": m.report.allowance_a,
                    "actual_a": m.report.actual_a,
                    "phases": m.report.phases,
                    "counted_a": round(self.counted(m, now), 2),
                    "age_s": round(now - m.heard_at, 1),
                }
            )
        return {
            "charger_id": self.charger_id,
            "mode": self.mode.value,
            "connected": self._connected,
            "claim_a": round(self._claim, 2),
            "allowance_a": round(self.allowance_a, 2),
            "reserved_a": None if self._reserve is None else round(self._reserve.amps, 2),
            "demand_a": round(self._inputs.demand_a, 2),
            "fair_share_a": round(self._fair, 2),
            "capacity_a": p.capacity_a,
            "fallback_a": p.fallback_a,
            "reason": self.reason,
            "duplicate_id": self.duplicate_id,
            "members": rows,
        }
