"""OCPP 1.6 diagnostics: GetDiagnostics / DiagnosticsStatusNotification and, from the 1.6 security extension,
GetLog / LogStatusNotification.

The ``@on`` handlers only check the request and answer (file name, or Accepted/Rejected); the ``@after``
handlers start the job as a task owned by :class:`OcppDiagnostics`, so it outlives the connection: the bundle
is written (in a thread), then uploaded with the request's retries, and each status is sent with
``send_live``. Choices where OCPP leaves room:

- A new request while one of the same kind runs supersedes it: the running job is cancelled (its partial
  upload cleaned up) and sends nothing more; GetLog answers ``AcceptedCanceled`` then. GetDiagnostics and
  GetLog are separate slots and may run side by side.
- Offline, a status that cannot be sent is dropped, never replayed or invented later: the upload itself does
  not need the CSMS link and goes on; TriggerMessage DiagnosticsStatusNotification tells the current state.
- An unusable location (scheme, host) or a malformed start/stop time: GetDiagnostics answers without a file
  name and uploads nothing; GetLog answers ``Rejected``.
- No ``retries`` means one attempt; ``retryInterval`` defaults to 30 s; both are clamped (10 retries, 1 h).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from ocpp.routing import after, on
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action

from firmware.config import Settings
from firmware.diagnostics.bundle import BundleError, TimeWindow, bundle_name, parse_timestamp, write_bundle
from firmware.diagnostics.upload import Location, LocationError, UploadError, parse_location, upload
from firmware.store import Store
from hal.clock import Clock

if TYPE_CHECKING:
    from firmware.ocpp.v16.service import OcppService

log = logging.getLogger("firmware.ocpp.diagnostics")

MAX_RETRIES: Final = 10
MAX_RETRY_INTERVAL_S: Final = 3600
DEFAULT_RETRY_INTERVAL_S: Final = 30
#: LogStatusNotification status for each UploadError kind (security extension UploadLogStatusEnumType).
LOG_FAILURE_STATUS: Final = {
    "permission": "PermissionDenied",
    "unsupported": "NotSupportedOperation",
    "bad_message": "BadMessage",
}


class Sender(Protocol):
    async def send_live(self, payload: Any) -> Any | None: ...


@dataclass
class _Job:
    """One accepted request: what to bundle, where to send it, and how often to try."""

    slot: str  # "diagnostics" (GetDiagnostics) or "log" (GetLog)
    bundle_kind: str  # "diagnostics" or "securitylog"
    location: Location
    filename: str
    window: TimeWindow
    created: datetime
    retries: int
    retry_interval_s: float
    request_id: int | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    retry_at: float | None = None  # clock.monotonic() of the next attempt while waiting for it


def _retries(value: Any) -> int:
    return max(0, min(value, MAX_RETRIES)) if isinstance(value, int) and not isinstance(value, bool) else 0


def _interval(value: Any) -> float:
    if isinstance(value, int) and not isinstance(value, bool):
        return float(max(0, min(value, MAX_RETRY_INTERVAL_S)))
    return float(DEFAULT_RETRY_INTERVAL_S)


def _window(start: Any, stop: Any) -> TimeWindow:
    """ValueError for a bound that is present but not an RFC 3339 time."""
    return TimeWindow(
        None if start is None else parse_timestamp(start),
        None if stop is None else parse_timestamp(stop),
    )


class OcppDiagnostics:
    """The diagnostics jobs of one charge point; ``status()`` is what a TriggerMessage reports."""

    #: How often a retry wait looks at the (injectable) clock.
    retry_poll_s: float = 0.25

    def __init__(self, settings: Settings, *, clock: Clock, sender: Sender, journal: bool = True) -> None:
        self.settings = settings
        self.clock = clock
        self.sender = sender
        self.journal = journal
        self.work_dir = Path(settings.store.dir) / "diagnostics"
        self._slots: dict[str, _Job] = {}
        self._pending: dict[str, _Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._dirs: set[Path] = set()
        self._dirs_lock = threading.Lock()

    # ---- state --------------------------------------------------------------------------------------------
    def status(self) -> str:
        """1.6 §4.4: Uploading while a GetDiagnostics upload is busy (retry waits included), Idle otherwise."""
        return "Uploading" if "diagnostics" in self._slots else "Idle"

    def log_status(self) -> tuple[str, int | None]:
        """What an ExtendedTriggerMessage LogStatusNotification reports: Uploading with the GetLog's requestId while
        its upload is busy (retry waits included), Idle without one otherwise."""
        job = self._slots.get("log")
        return ("Uploading", job.request_id) if job is not None else ("Idle", None)

    def busy(self, slot: str) -> bool:
        return slot in self._slots or slot in self._pending

    def next_attempt_at(self, slot: str) -> float | None:
        """While a job of ``slot`` waits to retry: the ``clock.monotonic()`` of its next attempt."""
        job = self._slots.get(slot)
        return None if job is None else job.retry_at

    # ---- requests (called from @on: answer at once, no I/O) -----------------------------------------------
    def request_diagnostics(
        self,
        location: Any,
        retries: Any = None,
        retry_interval: Any = None,
        start_time: Any = None,
        stop_time: Any = None,
    ) -> str | None:
        """The file name the upload will have, or None when nothing will be uploaded (bad request)."""
        try:
            where = parse_location(location)
            window = _window(start_time, stop_time)
        except (LocationError, ValueError) as exc:
            log.warning("GetDiagnostics refused: %s", exc)
            return None
        now = self.clock.now()
        job = _Job(
            "diagnostics",
            "diagnostics",
            where,
            bundle_name(self.settings.charger.id, now, "diagnostics"),
            window,
            now,
            _retries(retries),
            _interval(retry_interval),
        )
        self._supersede("diagnostics")
        self._pending["diagnostics"] = job
        log.info("GetDiagnostics: %s to %s", job.filename, where.redacted())
        return job.filename

    def request_log(
        self, log_type: Any, request_id: Any, params: Any, retries: Any = None, retry_interval: Any = None
    ) -> tuple[str, str | None]:
        """(GetLog status, filename): Accepted, AcceptedCanceled (a running one was cancelled) or Rejected."""
        try:
            if log_type not in ("DiagnosticsLog", "SecurityLog"):
                raise ValueError(f"unknown logType {log_type!r}")
            if not isinstance(request_id, int) or isinstance(request_id, bool):
                raise ValueError("requestId is not an integer")
            if not isinstance(params, dict):
                raise ValueError("log is not an object")
            where = parse_location(params.get("remote_location"))
            window = _window(params.get("oldest_timestamp"), params.get("latest_timestamp"))
        except (LocationError, ValueError) as exc:
            log.warning("GetLog refused: %s", exc)
            return "Rejected", None
        now = self.clock.now()
        kind = "securitylog" if log_type == "SecurityLog" else "diagnostics"
        job = _Job(
            "log",
            kind,
            where,
            bundle_name(self.settings.charger.id, now, kind),
            window,
            now,
            _retries(retries),
            _interval(retry_interval),
            request_id,
        )
        cancelled = self._supersede("log")
        self._pending["log"] = job
        log.info("GetLog %d (%s): %s to %s", request_id, log_type, job.filename, where.redacted())
        return ("AcceptedCanceled" if cancelled else "Accepted"), job.filename

    def _supersede(self, slot: str) -> bool:
        """Cancel the running (or not yet started) job of ``slot``; True if there was one."""
        found = False
        if self._pending.pop(slot, None) is not None:
            found = True
        running = self._slots.pop(slot, None)
        if running is not None:
            found = True
            if running.task is not None:
                running.task.cancel()
            log.info("%s upload %s superseded by a new request", slot, running.filename)
        return found

    # ---- jobs (started from @after, after the answer went out) --------------------------------------------
    def start(self, slot: str) -> None:
        """Run the pending job of ``slot`` as a task of its own (it outlives the connection)."""
        job = self._pending.pop(slot, None)
        if job is None:
            return
        self._slots[slot] = job
        job.task = asyncio.create_task(self._run(job), name=f"ocpp-{slot}-upload")
        self._tasks.add(job.task)
        job.task.add_done_callback(self._tasks.discard)

    async def wait_idle(self) -> None:
        """Until no job runs (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        """Cancel every job (daemon shutdown): partial uploads are cleaned up, no further status is sent."""
        self._pending.clear()
        for job in list(self._slots.values()):
            if job.task is not None:
                job.task.cancel()
        self._slots.clear()
        await self.wait_idle()

    async def _run(self, job: _Job) -> None:
        job_dir: Path | None = None
        final: str | None = None
        try:
            await self._notify(job, "Uploading")
            job_dir = await asyncio.to_thread(self._job_dir)
            try:
                bundle = await asyncio.to_thread(
                    write_bundle,
                    self.settings,
                    job_dir,
                    now=job.created,
                    window=job.window,
                    kind=job.bundle_kind,
                    name=job.filename,
                    journal=self.journal,
                )
            except (BundleError, OSError) as exc:
                log.error("%s: cannot write the bundle: %s", job.filename, exc)
                final = self._failed(job, None)
                return
            error: UploadError | None = None
            for attempt in range(1 + job.retries):
                if attempt:
                    job.retry_at = self.clock.monotonic() + job.retry_interval_s
                    await self._wait_until(job.retry_at)
                    job.retry_at = None
                started = self.clock.monotonic()
                try:
                    await upload(
                        bundle.path,
                        job.location,
                        filename=job.filename,
                        method=self.settings.diagnostics.http_method,
                        timeout_s=self.settings.diagnostics.upload_timeout_s,
                        ca_file=self.settings.ocpp.ca_file,
                    )
                except UploadError as exc:
                    error = exc
                    log.warning(
                        "%s upload to %s failed (attempt %d of %d): %s",
                        job.filename,
                        job.location.redacted(),
                        attempt + 1,
                        1 + job.retries,
                        exc,
                    )
                    continue
                log.info(
                    "%s uploaded to %s (%d bytes, %.1f s)",
                    job.filename,
                    job.location.redacted(),
                    bundle.size,
                    self.clock.monotonic() - started,
                )
                final = "Uploaded"
                return
            final = self._failed(job, error)
        finally:
            if self._slots.get(job.slot) is job:
                del self._slots[job.slot]
            if job_dir is not None:
                await asyncio.to_thread(shutil.rmtree, job_dir, True)
                self._dirs.discard(job_dir)
            if final is not None:
                await self._notify(job, final)

    @staticmethod
    def _failed(job: _Job, error: UploadError | None) -> str:
        if job.slot == "diagnostics":
            return "UploadFailed"
        return LOG_FAILURE_STATUS.get(error.kind, "UploadFailure") if error is not None else "UploadFailure"

    def _job_dir(self) -> Path:
        """A private directory for one bundle; leftovers of an earlier, crashed run are removed first.

        Runs in a worker thread; the lock keeps two jobs starting together from removing each other's directory.
        """
        with self._dirs_lock:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            for entry in self.work_dir.iterdir():
                if entry in self._dirs:
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
            path = Path(tempfile.mkdtemp(prefix="job-", dir=self.work_dir))
            self._dirs.add(path)
            return path

    async def _wait_until(self, deadline: float) -> None:
        """Until ``deadline`` on the injected clock (a FakeClock moves only when the test advances it)."""
        while (left := deadline - self.clock.monotonic()) > 0:
            await asyncio.sleep(min(left, self.retry_poll_s))

    async def _notify(self, job: _Job, status: str) -> None:
        if job.slot == "diagnostics":
            payload: Any = call.DiagnosticsStatusNotification(status=status)
        else:
            payload = call.LogStatusNotification(status=status, request_id=job.request_id)
        with contextlib.suppress(Exception):
            if await self.sender.send_live(payload) is not None:
                return
        log.info("%s %s not sent (CSMS offline or no answer); it is not sent later", type(payload).__name__, status)


class DiagnosticsHandlers:
    """Mixed into CentralSystemLink: the ``@on``/``@after`` handlers for the diagnostics actions."""

    service: OcppService

    @on(Action.get_diagnostics)  # type: ignore[untyped-decorator]
    def on_get_diagnostics(self, location: str, **kw: Any) -> Any:
        diagnostics = self.service.diagnostics
        if diagnostics is None:
            return call_result.GetDiagnostics()
        name = diagnostics.request_diagnostics(
            location, kw.get("retries"), kw.get("retry_interval"), kw.get("start_time"), kw.get("stop_time")
        )
        return call_result.GetDiagnostics(file_name=name)

    @after(Action.get_diagnostics)  # type: ignore[untyped-decorator]
    async def after_get_diagnostics(self, location: str, **kw: Any) -> None:
        if self.service.diagnostics is not None:
            self.service.diagnostics.start("diagnostics")

    @on(Action.get_log)  # type: ignore[untyped-decorator]
    def on_get_log(self, log_type: str, request_id: int, **kw: Any) -> Any:
        diagnostics = self.service.diagnostics
        if diagnostics is None:
            return call_result.GetLog(status="Rejected")
        status, filename = diagnostics.request_log(
            log_type, request_id, kw.get("log"), kw.get("retries"), kw.get("retry_interval")
        )
        return call_result.GetLog(status=status, filename=filename)

    @after(Action.get_log)  # type: ignore[untyped-decorator]
    async def after_get_log(self, log_type: str, request_id: int, **kw: Any) -> None:
        if self.service.diagnostics is not None:
            self.service.diagnostics.start("log")


def build_diagnostics(settings: Settings, *, store: Store, clock: Clock, sender: Any) -> OcppDiagnostics:
    """The diagnostics service; it reads the store through its own read-only connection, not ``store``."""
    return OcppDiagnostics(settings, clock=clock, sender=sender)
