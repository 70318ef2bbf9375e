"""The slot state machine shared by the launcher, the daemon and the technician CLI (standard library only).

Why a pure function: rollback is the one piece that must work when everything else is broken, so its rules are a
small function over (state, event) that is property-tested (never ends with no runnable slot; a confirmed slot
is never rolled back automatically), and the I/O around it (reading state.json, checking which slots exist,
exec) stays in the launcher.

Rules:

* ``Switch``: an installed and verified slot becomes active on trial; the slot that ran before becomes
  ``previous`` (the rollback target). Never the active slot itself (the installer refuses that earlier too).
* ``Launch`` (every start through the launcher): a trial that failed (marked by the daemon when
  BootNotification was not accepted within ``[update] confirm_timeout_s``), used up its attempts (each start
  counts; a crash, a watchdog kill or a power cut all end an attempt), ran past its wall-clock deadline (a
  backstop for a daemon hung so badly it cannot mark itself) or whose slot is not runnable is rolled back to
  ``previous`` (the factory venv if that is not runnable). Without a trial the active slot stays, unless it is
  not runnable (then previous, then factory).
* ``Confirm``: the daemon of the trial slot reached BootNotification Accepted: the trial ends, the slot stays.
* ``Fail``: the daemon gave up on its own trial; the next ``Launch`` rolls back.
* ``Rollback``: the technician's ``evse firmware rollback``: back to ``previous``.

``result`` keeps the outcome of the last install (installed / failed, with the OCPP request it came from) until
the daemon has reported it to the CSMS (FirmwareStatusNotification after its accepted boot).

State files are written atomically (temporary file, fsync, rename, fsync of the directory): a power cut leaves
the old or the new state, never a torn one. An unreadable state file means "factory" (logged by the callers).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

FACTORY: Final = "factory"
SLOTS: Final = ("a", "b")
FORMAT: Final = 1
DEFAULT_ATTEMPTS: Final = 2


@dataclass(frozen=True)
class SlotInfo:
    """One installed slot: its package version and whether it was ever rolled back from."""

    version: str
    installed_at: float = 0.0
    failed: bool = False


@dataclass(frozen=True)
class Trial:
    """A new slot on probation until its daemon reaches BootNotification Accepted."""

    slot: str
    version: str
    previous: str
    deadline: float  # wall-clock epoch seconds (backstop; the daemon's own timer is monotonic)
    attempts: int = 0
    max_attempts: int = DEFAULT_ATTEMPTS
    failed: str | None = None
    request_id: int | None = None
    signed: bool = False


@dataclass(frozen=True)
class Result:
    """What became of the last install, until the daemon reported it to the CSMS."""

    version: str
    outcome: str  # "installed" | "failed"
    reason: str = ""
    request_id: int | None = None
    signed: bool = False
    reported: bool = False


@dataclass(frozen=True)
class SlotState:
    active: str = FACTORY
    previous: str | None = None
    slots: dict[str, SlotInfo] = field(default_factory=dict)
    trial: Trial | None = None
    result: Result | None = None

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: Any) -> SlotState:
        """Parse state.json; anything malformed raises ValueError (callers fall back to the factory)."""
        if not isinstance(data, dict):
            raise ValueError("state is not an object")
        try:
            slots = {str(k): SlotInfo(**v) for k, v in dict(data.get("slots") or {}).items()}
            trial = Trial(**data["trial"]) if data.get("trial") else None
            result = Result(**data["result"]) if data.get("result") else None
            state = cls(
                active=str(data.get("active", FACTORY)),
                previous=data.get("previous"),
                slots=slots,
                trial=trial,
                result=result,
            )
        except (TypeError, KeyError) as exc:
            raise ValueError(f"malformed state: {exc}") from exc
        if state.active not in (FACTORY, *SLOTS) or state.previous not in (None, FACTORY, *SLOTS):
            raise ValueError(f"unknown slot in state: {state.active!r} / {state.previous!r}")
        if state.trial is not None and state.trial.slot not in SLOTS:
            raise ValueError(f"unknown trial slot {state.trial.slot!r}")
        return state


# ── events ─────────────────────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Launch:
    now: float
    runnable: frozenset[str]  # slots whose venv has bin/evse (the factory is always assumed runnable)


@dataclass(frozen=True)
class Switch:
    slot: str
    version: str
    now: float
    confirm_timeout_s: float
    max_attempts: int = DEFAULT_ATTEMPTS
    request_id: int | None = None
    signed: bool = False


@dataclass(frozen=True)
class Confirm:
    slot: str


@dataclass(frozen=True)
class Fail:
    slot: str
    reason: str


@dataclass(frozen=True)
class Rollback:
    reason: str = "rolled back by a technician"


@dataclass(frozen=True)
class Reported:
    pass


Event = Launch | Switch | Confirm | Fail | Rollback | Reported


class StateError(Exception):
    """An event that does not apply to the state (e.g. switching to the running slot)."""


def _runnable(state: SlotState, slot: str | None, runnable: frozenset[str]) -> bool:
    if slot is None:
        return False
    if slot == FACTORY:
        return True
    info = state.slots.get(slot)
    return slot in runnable and info is not None and not info.failed


def _roll_back(state: SlotState, reason: str, runnable: frozenset[str] | None) -> SlotState:
    trial = state.trial
    failed_slot = trial.slot if trial is not None else state.active
    target = trial.previous if trial is not None else state.previous
    usable = target is not None and (runnable is None or _runnable(state, target, runnable))
    if target is None or target == failed_slot or not usable:
        target = FACTORY
    slots = dict(state.slots)
    if trial is not None and failed_slot in slots:
        slots[failed_slot] = replace(slots[failed_slot], failed=True)
    result = state.result
    if trial is not None:
        result = Result(trial.version, "failed", reason, trial.request_id, trial.signed)
    previous = FACTORY if target != FACTORY else None
    return SlotState(active=target, previous=previous, slots=slots, trial=None, result=result)


def apply(state: SlotState, event: Event) -> SlotState:
    """The next state; pure. ``Launch`` also decides what runs: the new state's ``active``."""
    if isinstance(event, Launch):
        trial = state.trial
        if trial is not None:
            reason = None
            if trial.failed:
                reason = trial.failed
            elif trial.attempts >= trial.max_attempts:
                reason = f"did not reach BootNotification Accepted in {trial.attempts} start(s)"
            elif event.now > trial.deadline:
                reason = "not confirmed before its deadline"
            elif not _runnable(state, trial.slot, event.runnable):
                reason = f"slot {trial.slot} is not runnable"
            if reason is not None:
                return _roll_back(state, reason, event.runnable)
            return replace(state, trial=replace(trial, attempts=trial.attempts + 1))
        if _runnable(state, state.active, event.runnable):
            return state
        fallback = FACTORY
        if state.previous is not None and _runnable(state, state.previous, event.runnable):
            fallback = state.previous
        return replace(state, active=fallback, previous=None if fallback == FACTORY else FACTORY)
    if isinstance(event, Switch):
        if event.slot not in SLOTS or event.slot == state.active:
            raise StateError(f"cannot switch to slot {event.slot!r} while {state.active!r} is active")
        if state.trial is not None:
            raise StateError(f"slot {state.trial.slot} is still on trial")
        slots = {**state.slots, event.slot: SlotInfo(event.version, event.now)}
        deadline = event.now + event.max_attempts * (event.confirm_timeout_s + 120.0)
        trial = Trial(
            event.slot,
            event.version,
            state.active,
            deadline,
            max_attempts=event.max_attempts,
            request_id=event.request_id,
            signed=event.signed,
        )
        return SlotState(active=event.slot, previous=state.active, slots=slots, trial=trial, result=None)
    if isinstance(event, Confirm):
        trial = state.trial
        if trial is None or trial.slot != event.slot or trial.failed:
            return state
        result = Result(trial.version, "installed", "", trial.request_id, trial.signed)
        return replace(state, trial=None, result=result)
    if isinstance(event, Fail):
        trial = state.trial
        if trial is None or trial.slot != event.slot:
            return state
        return replace(state, trial=replace(trial, failed=event.reason))
    if isinstance(event, Rollback):
        if state.trial is None and state.previous is None:
            raise StateError("there is no previous slot to roll back to")
        return _roll_back(state, event.reason, None)
    if isinstance(event, Reported):
        return state if state.result is None else replace(state, result=replace(state.result, reported=True))
    raise TypeError(f"unknown event {event!r}")


# ── files ──────────────────────────────────────────────────────────────────────────────────────────────────


def write_json_atomic(path: Path, data: Any) -> None:
    """Temporary file in the same directory, fsync, rename over, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_state(update_dir: Path) -> SlotState:
    """The state on disk; a missing file is the factory state. Malformed raises ValueError."""
    path = update_dir / "state.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return SlotState()
    try:
        return SlotState.from_json(json.loads(text))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def write_state(update_dir: Path, state: SlotState) -> None:
    write_json_atomic(update_dir / "state.json", state.to_json())


@contextlib.contextmanager
def locked(update_dir: Path, name: str = "state.lock") -> Iterator[None]:
    """An exclusive flock on ``update_dir/name`` (released when the process dies, so never stale)."""
    update_dir.mkdir(parents=True, exist_ok=True)
    with open(update_dir / name, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def update_state(update_dir: Path, change: Callable[[SlotState], SlotState]) -> SlotState:
    """Read, change and write state.json under the lock; returns the new state."""
    with locked(update_dir):
        new = change(read_state(update_dir))
        write_state(update_dir, new)
        return new


def runnable_slots(update_dir: Path) -> frozenset[str]:
    """Slots whose venv has its ``evse`` entry point (what the launcher can exec)."""
    return frozenset(s for s in SLOTS if os.access(update_dir / "slots" / s / "bin" / "evse", os.X_OK))
