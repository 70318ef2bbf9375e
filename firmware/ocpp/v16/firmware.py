"""OCPP 1.6 firmware update: UpdateFirmware / FirmwareStatusNotification and the security whitepaper's
SignedUpdateFirmware / SignedFirmwareStatusNotification, onto A/B slots with automatic rollback (firmware.update).

One request at a time, as a durable job (``job.json`` in the update directory, written atomically), worked by one
task that outlives connections and survives a restart (a download resumes from its partial file):

1. wait for ``retrieveDate``/``retrieveDateTime`` (the injectable clock); signed: DownloadScheduled;
2. Downloading; the download with ``retries`` (default 3) and ``retryInterval`` (default 60 s) -> DownloadFailed;
3. Downloaded; signed: the request's signature over the whole file with the signing certificate (checked again)
   -> SignatureVerified or InvalidSignature; the package manifest; a plain request with
   ``[update] require_signature`` needs the package's own manifest signature from a certificate that chains to
   the manufacturer root (1.6 has no InvalidSignature status: that is InstallationFailed);
4. signed: ``installDateTime`` (InstallScheduled);
5. **no install while charging**: the job waits until no session is active (1.6 §5.19 lets the charger finish
   charging first; the install itself never touches the contactor, but the restart that follows would end the
   session, and pip on a Pi Zero competes with the control loop for the CPU). The check is repeated after the
   install, right before the restart;
6. Installing; install into the inactive slot and verify it (firmware.update.install) -> InstallationFailed
   (signed: a sha256 mismatch in the package is InstallVerificationFailed);
7. the slot switches on trial (firmware.update.state ``Switch``); signed: InstallRebooting; the daemon stops
   cleanly and restarts through the launcher (``restart("Firmware")``).

After the restart the new version confirms its trial at its first accepted BootNotification and reports
Installed; if it does not reach Accepted within ``[update] confirm_timeout_s`` it marks its trial failed and
restarts through the launcher (``restart("FirmwareRollback")``), which brings the previous slot back; a version
that crashes or hangs is rolled back by the launcher after its start attempts. The version that runs after a
rollback reports InstallationFailed.

Statuses go out live (``send_live``), in order, one at a time; one that cannot be sent while offline is dropped
(logged), except the final outcome (Installed / InstallationFailed after a restart), which is kept in state.json
until a CSMS has acknowledged it and re-sent after every accepted BootNotification.

A new request while one is downloading replaces it (signed: AcceptedCanceled); once the install has begun, a new
signed request is Rejected and a plain one is ignored (UpdateFirmware.conf has no status). The security events
(InvalidFirmwareSigningCertificate, InvalidFirmwareSignature, FirmwareUpdated) go through ``security_event``;
ExtendedTriggerMessage FirmwareStatusNotification reports :meth:`OcppFirmware.signed_status`. Not done: revocation
checks (RevokedCertificate).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ocpp.routing import after, on
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action

from firmware.config import Settings
from firmware.session import SessionManager
from firmware.update import download, state
from firmware.update.launcher import ENV_SLOT, config_path
from hal.clock import Clock

if TYPE_CHECKING:
    from firmware.ocpp.v16.service import OcppService

log = logging.getLogger("firmware.update")

#: The 1.6 FirmwareStatusNotification status for each (signed) status; None: not sent on a plain request.
PLAIN: Final[dict[str, str | None]] = {
    "Idle": "Idle",
    "DownloadScheduled": None,
    "Downloading": "Downloading",
    "DownloadPaused": None,
    "Downloaded": "Downloaded",
    "DownloadFailed": "DownloadFailed",
    "SignatureVerified": None,
    "InvalidSignature": "InstallationFailed",
    "InstallScheduled": None,
    "Installing": "Installing",
    "InstallRebooting": None,
    "InstallVerificationFailed": "InstallationFailed",
    "InstallationFailed": "InstallationFailed",
    "Installed": "Installed",
}
#: What a TriggerMessage(FirmwareStatusNotification) reports while a job is in that state.
TRIGGER: Final = {
    "DownloadScheduled": "Idle",
    "DownloadPaused": "Downloading",
    "SignatureVerified": "Downloaded",
    "InstallScheduled": "Downloaded",
    "InstallRebooting": "Installing",
}
DEFAULT_RETRIES: Final = 3
DEFAULT_RETRY_INTERVAL_S: Final = 60
SESSION_POLL_S: Final = 1.0
ONLINE_GRACE_S: Final = 10.0


class JobFailed(Exception):
    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Job:
    """One firmware request, as kept in job.json."""

    id: str
    location: str
    retrieve_at: str  # ISO 8601, UTC
    retries: int
    retry_interval_s: int
    signed: bool = False
    request_id: int | None = None
    install_at: str | None = None
    signing_certificate: str | None = None
    signature: str | None = None
    phase: str = "download"  # download -> install
    error: str | None = None  # a request that was bad on arrival: fail with this at once


def parse_time(text: str | None) -> datetime | None:
    """An OCPP dateTime -> aware UTC datetime; None if missing or malformed."""
    if not isinstance(text, str) or not text:
        return None
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).astimezone(UTC)


def _count(value: Any, default: int, limit: int) -> int:
    return min(max(value, 0), limit) if isinstance(value, int) and not isinstance(value, bool) else default


class FirmwareHandlers:
    """Mixed into CentralSystemLink: UpdateFirmware and SignedUpdateFirmware, answered at once; the work runs
    in OcppFirmware's own task, started after the answer went out."""

    service: OcppService

    @on(Action.update_firmware)  # type: ignore[untyped-decorator]
    def on_update_firmware(
        self,
        location: str,
        retrieve_date: str,
        retries: int | None = None,
        retry_interval: int | None = None,
        **kw: Any,
    ) -> Any:
        firmware = self.service.firmware
        if firmware is not None:
            firmware.request_plain(location, retrieve_date, retries, retry_interval)
        return call_result.UpdateFirmware()

    @after(Action.update_firmware)  # type: ignore[untyped-decorator]
    async def after_update_firmware(self, **kw: Any) -> None:
        if self.service.firmware is not None:
            self.service.firmware.start()

    @on(Action.signed_update_firmware)  # type: ignore[untyped-decorator]
    def on_signed_update_firmware(
        self,
        request_id: int,
        firmware: dict[str, Any],
        retries: int | None = None,
        retry_interval: int | None = None,
        **kw: Any,
    ) -> Any:
        service_firmware = self.service.firmware
        status = "Rejected"
        if service_firmware is not None:
            status = service_firmware.request_signed(request_id, firmware, retries, retry_interval)
        return call_result.SignedUpdateFirmware(status=status)

    @after(Action.signed_update_firmware)  # type: ignore[untyped-decorator]
    async def after_signed_update_firmware(self, **kw: Any) -> None:
        if self.service.firmware is not None:
            self.service.firmware.start()


class OcppFirmware:
    """The firmware-update service of one charge point (see the module docstring)."""

    def __init__(
        self,
        *,
        update_dir: Path,
        clock: Clock,
        sender: Any,
        sessions: SessionManager,
        firmware_version: str,
        restart: Callable[[str], None],
        confirm_timeout_s: float,
        root_ca: str,
        require_signature: bool,
        running_slot: str | None,
        config_file: Path | None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        factory: Path | None = None,
    ) -> None:
        self.update_dir = update_dir
        self.clock = clock
        self.sender = sender
        self.sessions = sessions
        self.firmware_version = firmware_version
        self.restart = restart
        self.confirm_timeout_s = confirm_timeout_s
        self.root_ca = root_ca
        self.require_signature = require_signature
        self.running_slot = running_slot
        self.config_file = config_file
        self.sleep = sleep
        self.factory = factory
        self.current: str = "Idle"
        self.job: Job | None = self._load_job()
        self.confirmed = False
        self._task: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._cancel = threading.Event()
        self.timings: dict[str, float] = {}
        self.online_grace_s = ONLINE_GRACE_S
        #: ``(type, techInfo)``: the security events of updates (signing certificate, signature, new firmware).
        self.security_event: Callable[[str, str], None] = lambda kind, tech_info: None
        if hasattr(sender, "on_boot_accepted"):
            sender.on_boot_accepted(self.after_boot)
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # built outside a loop (the app builds it inside): the first accepted boot resumes
            return
        self._start_background()

    # ---- state -------------------------------------------------------------------------------------------
    def status(self) -> str:
        """The FirmwareStatusNotification status a TriggerMessage reports now (Idle when nothing is going on)."""
        if self._task is None or self._task.done():
            return "Idle"
        plain = TRIGGER.get(self.current) or PLAIN.get(self.current) or "Idle"
        return plain

    def signed_status(self) -> tuple[str, int | None]:
        """What an ExtendedTriggerMessage FirmwareStatusNotification reports (as SignedFirmwareStatusNotification):
        the job's present status and, for a signed job, its requestId; Idle when nothing is going on."""
        job = self.job
        if not self.busy or job is None:
            return "Idle", None
        return self.current, job.request_id if job.signed else None

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    def _job_path(self) -> Path:
        return self.update_dir / "job.json"

    def _load_job(self) -> Job | None:
        path = self._job_path()
        try:
            data = json.loads(path.read_text())
            return Job(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            log.warning("firmware job %s unreadable (%s): dropped", path, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            return None

    def _save_job(self, job: Job | None) -> None:
        self.job = job
        if job is None:
            with contextlib.suppress(FileNotFoundError):
                self._job_path().unlink()
            return
        state.write_json_atomic(self._job_path(), asdict(job))

    def _download_path(self, job: Job) -> Path:
        return self.update_dir / "downloads" / f"{job.id}.pkg"

    # ---- requests (called from @on handlers: no I/O beyond a small file write, no awaits) ------------------
    def _accept(self, job: Job) -> bool:
        """Take ``job`` unless an install is under way; a download under way is cancelled for it."""
        if self.busy and self.job is not None and self.job.phase != "download":
            log.warning("firmware request ignored: an install is under way")
            return False
        if self._task is not None and not self._task.done():
            self._cancel.set()  # stops a download thread at its next chunk
            self._task.cancel()
            self._task = None
            log.info("firmware job %s cancelled for a new request", self.job.id if self.job else "?")
        self._save_job(job)
        return True

    def request_plain(self, location: str, retrieve_date: str, retries: int | None, retry_interval: int | None) -> None:
        error = download.check_url(location) if isinstance(location, str) else "no location"
        when = parse_time(retrieve_date)
        if when is None and error is None:
            error = f"malformed retrieveDate {retrieve_date!r}"
        self._accept(
            Job(
                id=uuid.uuid4().hex,
                location=str(location),
                retrieve_at=(when or self.clock.now()).isoformat(),
                retries=_count(retries, DEFAULT_RETRIES, 20),
                retry_interval_s=_count(retry_interval, DEFAULT_RETRY_INTERVAL_S, 86400),
                error=error,
            )
        )

    def request_signed(
        self, request_id: int, firmware: dict[str, Any], retries: int | None, retry_interval: int | None
    ) -> str:
        """The SignedUpdateFirmware.conf status: Accepted, AcceptedCanceled, InvalidCertificate or Rejected."""
        from firmware.update import signing

        if not isinstance(firmware, dict):
            return "Rejected"
        location, cert = firmware.get("location"), firmware.get("signing_certificate")
        signature = firmware.get("signature")
        when = parse_time(firmware.get("retrieve_date_time"))
        install_raw = firmware.get("install_date_time")
        install_at = parse_time(install_raw)
        if not isinstance(location, str) or download.check_url(location) is not None:
            log.warning("SignedUpdateFirmware rejected: %s", download.check_url(str(location)))
            return "Rejected"
        if when is None or (install_raw is not None and install_at is None) or not isinstance(signature, str):
            log.warning("SignedUpdateFirmware rejected: malformed dates or signature")
            return "Rejected"
        try:
            roots = signing.load_roots(self.root_ca)
            signing.check_certificate(str(cert), roots, self.clock.now())
            signing.decode_signature(signature)
        except signing.CertificateError as exc:
            log.warning("SignedUpdateFirmware: invalid signing certificate: %s", exc)
            self.security_event("InvalidFirmwareSigningCertificate", str(exc))
            return "InvalidCertificate"
        except signing.SignatureError as exc:
            log.warning("SignedUpdateFirmware rejected: %s", exc)
            return "Rejected"
        was_busy = self.busy
        job = Job(
            id=uuid.uuid4().hex,
            location=location,
            retrieve_at=when.isoformat(),
            retries=_count(retries, DEFAULT_RETRIES, 20),
            retry_interval_s=_count(retry_interval, DEFAULT_RETRY_INTERVAL_S, 86400),
            signed=True,
            request_id=int(request_id),
            install_at=install_at.isoformat() if install_at else None,
            signing_certificate=str(cert),
            signature=signature,
        )
        if not self._accept(job):
            return "Rejected"
        return "AcceptedCanceled" if was_busy else "Accepted"

    def start(self) -> None:
        """Work the saved job (after the answer to its request went out)."""
        if self.job is None or self.busy:
            return
        self._cancel = threading.Event()
        self._task = asyncio.create_task(self._work(self.job), name="firmware-update")

    def _start_background(self) -> None:
        if self.job is not None and self.job.phase in ("download", "install") and not self.busy:
            log.info("resuming firmware job %s (%s)", self.job.id, self.job.phase)
            self.start()
        self._start_watch()

    # ---- status notifications ------------------------------------------------------------------------------
    async def _send(self, status: str, *, signed: bool, request_id: int | None) -> bool:
        self.current = status
        if signed:
            payload: Any = call.SignedFirmwareStatusNotification(status=status, request_id=request_id)
        else:
            plain = PLAIN[status]
            if plain is None:
                return True
            payload = call.FirmwareStatusNotification(status=plain)
        log.info("firmware status %s%s", status, f" (request {request_id})" if signed else "")
        await self._until_online(self.online_grace_s)
        result = await self.sender.send_live(payload)
        if result is None:
            log.warning("firmware status %s not delivered (offline or refused)", status)
        return result is not None

    async def _until_online(self, limit_s: float) -> None:
        """A request can arrive between the CSMS accepting our boot and us reading that answer: give the link
        a moment instead of dropping the first status."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        while not getattr(self.sender, "online", True) and loop.time() < deadline:
            await asyncio.sleep(0.05)

    async def _status(self, job: Job, status: str) -> None:
        await self._send(status, signed=job.signed, request_id=job.request_id)

    # ---- the job ---------------------------------------------------------------------------------------------
    async def _work(self, job: Job) -> None:
        """One job to its end; cancelled (app stopping, or a newer request) it stays on disk or is replaced."""
        self._discard_other_downloads(job)
        try:
            await self._run(job)
        except JobFailed as exc:
            log.warning("firmware update failed: %s: %s", exc.status, exc)
            if exc.status == "InvalidSignature":
                self.security_event("InvalidFirmwareSignature", str(exc))
            await self._status(job, exc.status)
        except Exception:
            log.exception("firmware update failed unexpectedly")
            await self._status(job, "InstallationFailed" if job.phase == "install" else "DownloadFailed")
        if self.job is not None and self.job.id == job.id:
            download.discard(self._download_path(job))
            self._save_job(None)
        self.current = "Idle"

    def _discard_other_downloads(self, job: Job) -> None:
        keep = self._download_path(job).name
        with contextlib.suppress(OSError):
            for path in (self.update_dir / "downloads").iterdir():
                if not path.name.startswith(keep):
                    path.unlink(missing_ok=True)

    async def _wait_until(self, when: datetime) -> None:
        while (left := (when - self.clock.now()).total_seconds()) > 0:
            await self.sleep(min(left, 5.0))

    async def _run(self, job: Job) -> None:
        if job.error is not None:
            raise JobFailed("DownloadFailed", job.error)
        path = self._download_path(job)
        if job.phase == "download":
            retrieve_at = parse_time(job.retrieve_at) or self.clock.now()
            if retrieve_at > self.clock.now():
                await self._status(job, "DownloadScheduled")
                log.info("firmware download scheduled for %s", retrieve_at.isoformat())
                await self._wait_until(retrieve_at)
            await self._status(job, "Downloading")
            await self._download(job, path)
            job = replace(job, phase="install")
            self._save_job(job)
            await self._status(job, "Downloaded")
        elif not path.exists():
            raise JobFailed("InstallationFailed", "the downloaded package is gone")
        manifest = await asyncio.to_thread(self._verify, job, path)
        if job.signed:
            await self._status(job, "SignatureVerified")
        install_at = parse_time(job.install_at)
        if install_at is not None and install_at > self.clock.now():
            await self._status(job, "InstallScheduled")
            await self._wait_until(install_at)
        await self._wait_idle("install")
        await self._install(job, path, manifest)

    async def _download(self, job: Job, path: Path) -> None:
        started = time.monotonic()
        last_logged = [0.0]

        def progress(size: int, total: int | None) -> None:
            now = time.monotonic()
            if now - last_logged[0] >= 5.0 or (total is not None and size == total):
                last_logged[0] = now
                share = f" ({100 * size / total:.0f} %)" if total else ""
                log.info("firmware download: %d bytes%s", size, share)

        attempts = job.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                fetched = await asyncio.to_thread(
                    download.fetch, job.location, path, progress=progress, cancel=self._cancel
                )
            except download.DownloadError as exc:
                log.warning("firmware download attempt %d of %d failed: %s", attempt, attempts, exc)
                if attempt == attempts:
                    raise JobFailed("DownloadFailed", str(exc)) from exc
                await self.sleep(job.retry_interval_s)
                continue
            self.timings["download_s"] = time.monotonic() - started
            log.info(
                "firmware downloaded: %d bytes in %.1f s%s",
                fetched.size,
                self.timings["download_s"],
                f" (resumed at {fetched.resumed_from})" if fetched.resumed_from else "",
            )
            return

    def _verify(self, job: Job, path: Path) -> Any:
        """Signature and manifest checks (in a thread: hashing a package takes a while on a Pi)."""
        from firmware.update import package, signing

        if job.signed:
            try:
                roots = signing.load_roots(self.root_ca)
                cert = signing.check_certificate(job.signing_certificate or "", roots, self.clock.now())
                signing.verify_signature(cert, path, signing.decode_signature(job.signature or ""))
            except (signing.CertificateError, signing.SignatureError) as exc:
                raise JobFailed("InvalidSignature", str(exc)) from exc
        try:
            return package.verify(
                path,
                require_signature=self.require_signature and not job.signed,
                root_ca=self.root_ca,
                now=self.clock.now(),
            )
        except package.PackageError as exc:
            raise JobFailed("InstallVerificationFailed" if job.signed else "InstallationFailed", str(exc)) from exc

    async def _wait_idle(self, before: str) -> None:
        if self.sessions.current is None:
            return
        log.info("firmware %s waits for the charging session to end", before)
        while self.sessions.current is not None:
            await self.sleep(SESSION_POLL_S)

    async def _install(self, job: Job, path: Path, manifest: Any) -> None:
        from firmware.update import install

        if self.running_slot is None:
            raise JobFailed("InstallationFailed", "not started through the launcher (firmware.update.launcher)")
        try:
            current = state.read_state(self.update_dir)
        except ValueError as exc:
            raise JobFailed("InstallationFailed", f"state: {exc}") from exc
        if current.trial is not None:
            raise JobFailed("InstallationFailed", f"slot {current.trial.slot} is still on trial")
        if current.active != self.running_slot:
            raise JobFailed("InstallationFailed", f"running {self.running_slot}, but {current.active} is active")
        await self._status(job, "Installing")
        try:
            with install.install_lock(self.update_dir):
                done = await install.install(
                    path, manifest, self.update_dir, current, config_path=self.config_file, factory=self.factory
                )
                self.timings["install_s"] = done.seconds
                await self._wait_idle("restart")
                self._save_job(None)  # a crash from here on loses the request (safe) rather than repeating it
                state.update_state(
                    self.update_dir,
                    lambda s: state.apply(
                        s,
                        state.Switch(
                            done.slot,
                            done.version,
                            time.time(),
                            self.confirm_timeout_s,
                            request_id=job.request_id,
                            signed=job.signed,
                        ),
                    ),
                )
        except install.InstallError as exc:
            status = "InstallVerificationFailed" if job.signed and "sha256" in str(exc) else "InstallationFailed"
            raise JobFailed(status, str(exc)) from exc
        except (state.StateError, OSError) as exc:
            raise JobFailed("InstallationFailed", str(exc)) from exc
        if job.signed:
            await self._status(job, "InstallRebooting")
        download.discard(path)
        log.warning("firmware %s installed in slot %s: restarting into it", done.version, done.slot)
        self.restart("Firmware")

    # ---- trial confirmation and the final report ----------------------------------------------------------
    def _read_state(self) -> state.SlotState | None:
        try:
            return state.read_state(self.update_dir)
        except (ValueError, OSError) as exc:
            log.warning("firmware state unreadable: %s", exc)
            return None

    def _on_trial(self) -> bool:
        current = self._read_state()
        trial = current.trial if current is not None else None
        return trial is not None and trial.slot == self.running_slot and not trial.failed

    def _start_watch(self) -> None:
        if self._watch is None and not self.confirmed and self._on_trial():
            self._watch = asyncio.create_task(self._confirm_deadline(), name="firmware-confirm")

    async def _confirm_deadline(self) -> None:
        """The trial must reach BootNotification Accepted within confirm_timeout_s, else it is rolled back."""
        deadline = self.clock.monotonic() + self.confirm_timeout_s
        log.info(
            "firmware %s on trial: BootNotification must be accepted within %g s",
            self.firmware_version,
            self.confirm_timeout_s,
        )
        while not self.confirmed and self.clock.monotonic() < deadline:
            await self.sleep(min(1.0, max(deadline - self.clock.monotonic(), 0.01)))
        if self.confirmed:
            return
        slot = self.running_slot or ""
        reason = f"BootNotification not accepted within {self.confirm_timeout_s:g} s"
        state.update_state(self.update_dir, lambda s: state.apply(s, state.Fail(slot, reason)))
        log.error("firmware %s: %s; restarting into the previous version", self.firmware_version, reason)
        self.restart("FirmwareRollback")

    async def after_boot(self) -> None:
        """After every accepted BootNotification: confirm our trial, then report an unreported outcome."""
        if self._on_trial():
            slot = self.running_slot or ""
            state.update_state(self.update_dir, lambda s: state.apply(s, state.Confirm(slot)))
            self.confirmed = True
            self.security_event("FirmwareUpdated", f"firmware {self.firmware_version} running from slot {slot}")
            log.info("firmware %s confirmed in slot %s", self.firmware_version, slot)
        if self.job is not None and not self.busy:
            self.start()
        current = self._read_state()
        result = current.result if current is not None else None
        if result is None or result.reported:
            return
        status = "Installed" if result.outcome == "installed" else "InstallationFailed"
        if result.outcome != "installed":
            log.warning("firmware %s was rolled back: %s", result.version, result.reason)
        if await self._send(status, signed=result.signed, request_id=result.request_id):
            state.update_state(self.update_dir, lambda s: state.apply(s, state.Reported()))
        if not self.busy:
            self.current = "Idle"


def update_dir_of(settings: Settings) -> Path:
    return Path(settings.update.dir) if settings.update.dir else Path(settings.store.dir) / "firmware"


def build_firmware(
    settings: Settings,
    *,
    clock: Clock,
    sender: Any,
    sessions: SessionManager,
    firmware_version: str,
    restart: Callable[[str], None],
) -> OcppFirmware:
    """The service for this process: its slot comes from the launcher's environment (None: not launched)."""
    running_slot = os.environ.get(ENV_SLOT) or None
    if running_slot not in (None, state.FACTORY, *state.SLOTS):
        running_slot = None
    return OcppFirmware(
        update_dir=update_dir_of(settings),
        clock=clock,
        sender=sender,
        sessions=sessions,
        firmware_version=firmware_version,
        restart=restart,
        confirm_timeout_s=settings.update.confirm_timeout_s,
        root_ca=settings.update.manufacturer_root_ca,
        require_signature=settings.update.require_signature,
        running_slot=running_slot,
        config_file=config_path(sys.argv[1:], dict(os.environ)) if running_slot is not None else None,
    )
