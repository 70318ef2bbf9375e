"""Firmware update and rollback end to end: two real builds of this package, the real daemon started by the
launcher from a factory venv, the ``ocpp``-package central system sending UpdateFirmware.

* 0.1.1 "good": Downloading, Downloaded, Installing, (restart into slot a), Installed; the next BootNotification
  carries 0.1.1 and it stays (another start runs 0.1.1 again).
* 0.1.2 "broken" (app.py imports a module that is not a declared dependency: ``evse --version`` and
  ``evse config check`` pass, ``evse run`` crashes at start): Downloading, Downloaded, Installing, (restart into
  slot b, crash, crash), the launcher rolls back to slot a by itself, BootNotification 0.1.1, InstallationFailed.

A tiny supervisor plays systemd's ``Restart=on-failure``: it starts the launcher again when the process exits
non-zero. The packages are signed with a test manufacturer CA ([update] require_signature stays on).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ocpp_harness
import pytest
from csms.central import TestCentralSystem, now_iso
from csms.fixtures import strict_csms_fixture  # noqa: F401
from csms.strict import StrictCentralSystem
from firmware_update_support import (
    FileServer,
    Pki,
    build_venv,
    build_wheel,
    dependency_wheels,
    make_factory,
    make_pki,
    package_dir,
    source_copy,
)
from ocpp.v16 import call
from ocpp_harness import OcppHarness, settings_for

from firmware.config import Settings
from firmware.update import package, state

CP = "CP-FWUP"
pytestmark = pytest.mark.timeout(400)


@dataclass
class Builds:
    factory: Path
    good: Path
    broken: Path
    pki: Pki
    root_ca: Path
    seconds: dict[str, float]


@pytest.fixture(scope="session")
def builds(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Builds:
    """Factory 0.1.0 venv, and signed packages of 0.1.1 (good) and 0.1.2 (broken); built once per session."""
    t0 = time.monotonic()
    work = tmp_path_factory.mktemp("fw-builds")
    cache_provider = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider
    cache = Path(cache_provider.mkdir("firmware-update")) if cache_provider is not None else work / "cache"
    deps = dependency_wheels(cache)
    t_deps = time.monotonic()
    python = build_venv(cache, deps)
    wheels = {
        v: build_wheel(python, source_copy(work / f"src-{v}", v, broken=(v == "0.1.2")), work / f"whl-{v}")
        for v in ("0.1.0", "0.1.1", "0.1.2")
    }
    t_wheels = time.monotonic()
    factory = make_factory(work / "factory", wheels["0.1.0"], deps)
    t_factory = time.monotonic()
    pki = make_pki()
    (work / "signing.key").write_bytes(pki.signer.key_pem)
    (work / "signing.pem").write_bytes(pki.signer.cert_pem)
    root_ca = work / "root.pem"
    root_ca.write_bytes(pki.root_pem)
    pkgs = {
        v: package.build(
            package_dir(work / f"pkg-{v}", wheels[v], deps),
            work / f"pievse-{v}.fwpkg",
            sign_key=work / "signing.key",
            sign_cert=work / "signing.pem",
        )
        for v in ("0.1.1", "0.1.2")
    }
    seconds = {
        "dependency wheels": t_deps - t0,
        "three wheel builds": t_wheels - t_deps,
        "factory venv": t_factory - t_wheels,
        "packages": time.monotonic() - t_factory,
    }
    print(f"\nfirmware builds: {', '.join(f'{k} {v:.1f} s' for k, v in seconds.items())}", file=sys.stderr)
    return Builds(factory, pkgs["0.1.1"], pkgs["0.1.2"], pki, root_ca, seconds)


class Supervisor:
    """systemd's Restart=on-failure for the launcher (no RestartSec: the test waits on messages, not time)."""

    def __init__(self, factory: Path, config: Path, log: Path) -> None:
        self.argv = [str(factory / "bin" / "python"), "-m", "firmware.update.launcher", "run", "--config", str(config)]
        self.log = log
        self.starts = 0
        self.exits: list[int] = []
        self.proc: asyncio.subprocess.Process | None = None
        self.task: asyncio.Task[None] | None = None
        self.stopping = False

    async def _start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "EVSE_"))}
        with open(self.log, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, stdout=log, stderr=log, env=env, start_new_session=True
            )
        self.starts += 1

    async def _loop(self) -> None:
        while True:
            await self._start()
            assert self.proc is not None
            code = await self.proc.wait()
            self.exits.append(code)
            if code == 0 or self.stopping:
                return

    def start(self) -> None:
        self.stopping = False
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        self.stopping = True
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, 20)
            except TimeoutError:
                assert self.proc is not None
                self.proc.kill()
                raise


def firmware_statuses(csms: TestCentralSystem) -> list[str]:
    return [p["status"] for p in csms.payloads("FirmwareStatusNotification")]


def boot_versions(csms: TestCentralSystem) -> list[str]:
    return [p.get("firmwareVersion", "") for p in csms.payloads("BootNotification")]


def reported(update_dir: Path) -> bool:
    result = state.read_state(update_dir).result
    return result is not None and result.reported


@pytest.fixture
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("fw-e2e")


async def test_good_update_stays_and_broken_update_rolls_back(builds: Builds, work: Path) -> None:
    t0 = time.monotonic()
    store = work / "store"
    config = work / "config.toml"
    async with TestCentralSystem() as csms:
        config.write_text(
            f'[charger]\nid = "{CP}"\n[hal]\nbackend = "sim"\n[store]\ndir = "{store}"\n'
            f'[control]\nsocket = "{work / "control.sock"}"\n[auth]\nmode = "free"\n'
            f'[ocpp]\nurl = "{csms.url}"\nreconnect_min_s = 0.2\nreconnect_max_s = 1\n'
            f'[update]\nconfirm_timeout_s = 60\nmanufacturer_root_ca = "{builds.root_ca}"\n'
        )
        update_dir = store / "firmware"
        sup = Supervisor(builds.factory, config, work / "daemon.log")
        files = {"good.fwpkg": builds.good, "broken.fwpkg": builds.broken}

        def explain() -> str:
            return f"\n--- daemon log ---\n{(work / 'daemon.log').read_text()[-6000:]}"

        with FileServer(files) as http:  # type: ignore[arg-type]
            sup.start()
            try:
                await csms.wait_for(lambda: csms.connected(CP) and csms.count("BootNotification") == 1, 30)
                assert boot_versions(csms) == ["0.1.0"]  # the factory venv

                # ---- the good version: installed, confirmed, reported, and it stays
                t_good = time.monotonic()
                await csms.call(CP, call.UpdateFirmware(location=http.url("good.fwpkg"), retrieve_date=now_iso()))
                try:
                    await csms.wait_for(lambda: "Installed" in firmware_statuses(csms), 90)
                except TimeoutError:
                    raise AssertionError(f"{firmware_statuses(csms)}{explain()}") from None
                good_s = time.monotonic() - t_good
                assert firmware_statuses(csms) == ["Downloading", "Downloaded", "Installing", "Installed"]
                assert boot_versions(csms) == ["0.1.0", "0.1.1"]
                assert sup.exits == []  # one process: the daemon re-executed the launcher
                await csms.wait_for(lambda: reported(update_dir), 10)  # once the CSMS's answer arrived
                s = state.read_state(update_dir)
                assert s.active == "a" and s.trial is None and s.previous == "factory"
                assert s.result is not None and s.result.outcome == "installed" and s.result.reported

                # it stays: a later start (here a clean stop and start) runs 0.1.1 again
                await sup.stop()
                sup.start()
                await csms.wait_for(lambda: csms.count("BootNotification") == 3, 30)
                assert boot_versions(csms)[-1] == "0.1.1"
                assert state.read_state(update_dir).active == "a"

                # ---- the broken version: it crashes at start, the launcher brings 0.1.1 back
                t_broken = time.monotonic()
                before = len(firmware_statuses(csms))
                await csms.call(CP, call.UpdateFirmware(location=http.url("broken.fwpkg"), retrieve_date=now_iso()))
                try:
                    await csms.wait_for(lambda: "InstallationFailed" in firmware_statuses(csms)[before:], 120)
                except TimeoutError:
                    raise AssertionError(f"{firmware_statuses(csms)}{explain()}") from None
                broken_s = time.monotonic() - t_broken
                assert firmware_statuses(csms)[before:] == [
                    "Downloading",
                    "Downloaded",
                    "Installing",
                    "InstallationFailed",
                ]
                assert boot_versions(csms) == ["0.1.0", "0.1.1", "0.1.1", "0.1.1"]
                assert sup.exits == [0, 1, 1], explain()  # the clean stop, then the two crashed trial starts
                await csms.wait_for(lambda: reported(update_dir), 10)
                s = state.read_state(update_dir)
                assert s.active == "a" and s.trial is None
                assert s.slots["b"].version == "0.1.2" and s.slots["b"].failed
                assert s.result is not None and s.result.outcome == "failed" and s.result.reported
                assert "crash" not in s.result.reason and "start" in s.result.reason
                assert not list((update_dir / "downloads").glob("*")), "downloads are cleaned up"
                assert "cbor2" in explain()
            finally:
                await sup.stop()
    total = time.monotonic() - t0
    log = (work / "daemon.log").read_text()
    measured = re.findall(r"installed into slot \w in ([\d.]+) s|downloaded: (\d+) bytes in ([\d.]+) s", log)
    print(
        f"\nfirmware e2e: good update {good_s:.1f} s, broken update and rollback {broken_s:.1f} s, "
        f"scenario {total:.1f} s (builds: {sum(builds.seconds.values()):.1f} s); daemon log: {measured}",
        file=sys.stderr,
    )


# ── SignedUpdateFirmware against the strict, schema-validating central system ─────────────────────────────────


STRICT_CP = "CP-FWSIGNED"
SCHEMAS = Path(__file__).parent / "csms" / "strict" / "node_modules" / "ocpp-rpc" / "lib" / "schemas" / "ocpp1_6.json"


def schema_errors(action: str, payload: dict[str, Any]) -> list[str]:
    """Check against ocpp-rpc's own 1.6 schemas (incl. the security extension) ourselves as well: server.js has no
    SignedFirmwareStatusNotification handler yet, and ocpp-rpc answers NotImplemented before it validates."""
    import jsonschema

    schema = next(s for s in json.loads(SCHEMAS.read_text()) if s["$id"] == f"urn:{action}.req")
    return [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(payload)]


class SignedHarness(OcppHarness[StrictCentralSystem]):
    def __init__(self, csms: StrictCentralSystem, work: Path) -> None:
        super().__init__(csms, STRICT_CP, response_timeout_s=5.0, work=work, serve_api=False)
        # certificates are checked against the wall clock: the fake clock's wall time is set to today
        self.clock.jump((datetime.now(UTC) - self.clock.now()).total_seconds())


def security_events(csms: StrictCentralSystem, kind: str) -> list[dict[str, Any]]:
    return [p for p in csms.received("SecurityEventNotification") if p["type"] == kind]


def signed_statuses(csms: StrictCentralSystem, request_id: int) -> list[str]:
    return [p["status"] for p in csms.received("SignedFirmwareStatusNotification") if p.get("requestId") == request_id]


async def test_signed_update_firmware_against_the_strict_csms(
    builds: Builds, strict_csms: StrictCentralSystem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    csms = strict_csms
    work = tmp_path / "charger"
    work.mkdir()
    config = tmp_path / "config.toml"
    config.write_text(f'[charger]\nid = "{STRICT_CP}"\n[hal]\nbackend = "sim"\n')
    for key, value in {"EVSE_SLOT": "factory", "EVSE_FACTORY": str(builds.factory), "EVSE_CONFIG": str(config)}.items():
        monkeypatch.setenv(key, value)

    def with_update(url: str, work: Path, charger_id: str, mode: str = "ocpp") -> Settings:
        s = settings_for(url, work, charger_id, mode)
        return replace(s, update=replace(s.update, manufacturer_root_ca=str(builds.root_ca), confirm_timeout_s=60))

    monkeypatch.setattr(ocpp_harness, "settings_for", with_update)
    package_bytes = builds.good.read_bytes()
    signer, untrusted = builds.pki.signer, builds.pki.untrusted

    def request(request_id: int, cert: bytes | str, signature: bytes | str, url: str) -> dict[str, Any]:
        return {
            "requestId": request_id,
            "retries": 1,
            "retryInterval": 1,
            "firmware": {
                "location": url,
                "retrieveDateTime": "2026-01-01T00:00:00Z",  # past: the charger's (fake) clock stands still
                "signingCertificate": cert.decode() if isinstance(cert, bytes) else cert,
                "signature": signature.decode() if isinstance(signature, bytes) else signature,
            },
        }

    with FileServer({"fw.pkg": builds.good}) as http:  # type: ignore[arg-type]
        h = SignedHarness(csms, work)
        await h.start()
        update_dir = work / "firmware"
        try:
            good_sig = base64.b64encode(signer.sign(package_bytes))
            # an untrusted certificate (valid signature, another root): InvalidCertificate, nothing fetched
            answer = await csms.call(
                STRICT_CP,
                "SignedUpdateFirmware",
                request(1, untrusted.cert_pem, base64.b64encode(untrusted.sign(package_bytes)), http.url("fw.pkg")),
            )
            assert answer == {"status": "InvalidCertificate"}
            answer = await csms.call(
                STRICT_CP, "SignedUpdateFirmware", request(2, "garbage", good_sig, http.url("fw.pkg"))
            )
            assert answer == {"status": "InvalidCertificate"}
            answer = await csms.call(
                STRICT_CP, "SignedUpdateFirmware", request(3, signer.cert_pem, "%%not base64%%", http.url("fw.pkg"))
            )
            assert answer == {"status": "Rejected"}
            answer = await csms.call(
                STRICT_CP, "SignedUpdateFirmware", request(4, signer.cert_pem, good_sig, "gopher://example/fw")
            )
            assert answer == {"status": "Rejected"}
            assert http.requests == [] and not (update_dir / "job.json").exists()
            # Security whitepaper: each refused signing certificate is a security event to the CSMS.
            await csms.wait_for(lambda: len(security_events(csms, "InvalidFirmwareSigningCertificate")) == 2, 5)

            # a signature that does not match the file: downloaded, InvalidSignature, nothing installed
            bad_sig = base64.b64encode(signer.sign(package_bytes + b"x"))
            answer = await csms.call(
                STRICT_CP, "SignedUpdateFirmware", request(5, signer.cert_pem, bad_sig, http.url("fw.pkg"))
            )
            assert answer == {"status": "Accepted"}
            await csms.wait_for(lambda: "InvalidSignature" in signed_statuses(csms, 5), 20)
            assert signed_statuses(csms, 5) == ["Downloading", "Downloaded", "InvalidSignature"]
            assert not (update_dir / "slots").exists() and not list((update_dir / "downloads").glob("*"))
            await csms.wait_for(lambda: len(security_events(csms, "InvalidFirmwareSignature")) == 1, 5)

            # the good one: verified, installed into slot a, restarting into it
            answer = await csms.call(
                STRICT_CP, "SignedUpdateFirmware", request(6, signer.cert_pem, good_sig, http.url("fw.pkg"))
            )
            assert answer == {"status": "Accepted"}
            await csms.wait_for(lambda: h.app.restart_requested is not None, 60)
            assert h.app.restart_requested == "Firmware"
            # The charger had its answer before restarting; the strict CSMS's frame log (its stdout) may lag behind.
            await csms.wait_for(lambda: "InstallRebooting" in signed_statuses(csms, 6), 5)
            assert signed_statuses(csms, 6) == [
                "Downloading",
                "Downloaded",
                "SignatureVerified",
                "Installing",
                "InstallRebooting",
            ]
            s = state.read_state(update_dir)
            assert s.active == "a" and s.trial is not None and s.trial.request_id == 6 and s.trial.signed
        finally:
            await h.close()

        # the new slot's first start (in process here; the plain e2e above runs the real slot process)
        monkeypatch.setenv("EVSE_SLOT", "a")
        h2 = SignedHarness(csms, work)
        await h2.start()
        try:
            await csms.wait_for(lambda: "Installed" in signed_statuses(csms, 6), 20)
            await csms.wait_for(lambda: len(security_events(csms, "FirmwareUpdated")) == 1, 5)
            s = state.read_state(update_dir)
            assert s.trial is None and s.result is not None and s.result.outcome == "installed"
        finally:
            await h2.close()

    mine = [f for f in csms.frames if f["client"] == STRICT_CP]
    assert [v for v in csms.violations if v["client"] == STRICT_CP] == []
    for payload in csms.received("SignedFirmwareStatusNotification"):
        assert schema_errors("SignedFirmwareStatusNotification", payload) == [], payload
    for payload in csms.received("SecurityEventNotification"):
        assert schema_errors("SecurityEventNotification", payload) == [], payload
    # Two starts (StartupOfTheDevice each) and the update's events, each once, in order.
    assert [p["type"] for p in csms.received("SecurityEventNotification")] == [
        "StartupOfTheDevice",
        "InvalidFirmwareSigningCertificate",
        "InvalidFirmwareSigningCertificate",
        "InvalidFirmwareSignature",
        "StartupOfTheDevice",
        "FirmwareUpdated",
    ]
    assert any(f["dir"] == "in" and f["frame"] and f["frame"][0] == 3 for f in mine)  # our answers were validated
