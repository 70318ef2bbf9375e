"""Firmware update pieces: the slot state machine (property-tested), atomic state writes, the launcher, resumable
downloads, packages and signatures, and the OCPP firmware service's job flow (against a recording sender)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from firmware_update_support import FileServer, Pki, make_pki
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.ocpp.v16.firmware import OcppFirmware
from firmware.update import commands, download, package, signing, state
from firmware.update.launcher import choose, relaunch_command, update_dir_from_config
from hal.clock import FakeClock

# ── the state machine ──────────────────────────────────────────────────────────────────────────────────────

slots = st.sampled_from(state.SLOTS)
runnable_sets = st.frozensets(slots)
events = st.one_of(
    st.builds(state.Launch, now=st.floats(0, 1e6), runnable=runnable_sets),
    st.builds(state.Switch, slot=slots, version=st.sampled_from(["0.2", "0.3"]), now=st.floats(0, 1e6),
              confirm_timeout_s=st.just(300.0), max_attempts=st.integers(1, 3)),
    st.builds(state.Confirm, slot=slots),
    st.builds(state.Fail, slot=slots, reason=st.just("not accepted")),
    st.builds(state.Rollback),
    st.builds(state.Reported),
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(events, max_size=25))
def test_state_machine_invariants(sequence: list[state.Event]) -> None:
    s = state.SlotState()
    for event in sequence:
        try:
            new = state.apply(s, event)
        except state.StateError:
            continue
        if isinstance(event, state.Launch):
            # never ends with no runnable slot
            assert new.active == state.FACTORY or (new.active in event.runnable and not new.slots[new.active].failed), (
                s,
                event,
                new,
            )
            # a confirmed slot (no trial pending) is never rolled back while it can run
            can_run = s.active == state.FACTORY or (s.active in event.runnable and not s.slots[s.active].failed)
            if s.trial is None and can_run:
                assert new.active == s.active
        if new.trial is not None:
            assert new.trial.slot == new.active and new.trial.previous != new.active
        assert state.SlotState.from_json(json.loads(json.dumps(new.to_json()))) == new
        s = new


def switched(now: float = 1000.0, max_attempts: int = 2) -> state.SlotState:
    return state.apply(state.SlotState(), state.Switch("a", "0.2", now, 300, max_attempts, request_id=7))


def test_trial_counts_starts_then_rolls_back() -> None:
    s = switched()
    assert (s.active, s.previous, s.trial and s.trial.attempts) == ("a", "factory", 0)
    s = state.apply(s, state.Launch(1001, frozenset({"a"})))
    s = state.apply(s, state.Launch(1002, frozenset({"a"})))
    assert s.active == "a" and s.trial is not None and s.trial.attempts == 2
    s = state.apply(s, state.Launch(1003, frozenset({"a"})))  # the second start died too
    assert s.active == "factory" and s.trial is None and s.slots["a"].failed
    assert s.result == state.Result("0.2", "failed", "did not reach BootNotification Accepted in 2 start(s)", 7)


def test_failed_trial_deadline_and_missing_slot_roll_back() -> None:
    failed = state.apply(state.apply(switched(), state.Launch(1001, frozenset({"a"}))), state.Fail("a", "no boot"))
    assert state.apply(failed, state.Launch(1002, frozenset({"a"}))).active == "factory"
    late = state.apply(switched(), state.Launch(1e9, frozenset({"a"})))
    assert late.active == "factory" and late.result is not None and "deadline" in late.result.reason
    gone = state.apply(switched(), state.Launch(1001, frozenset()))
    assert gone.active == "factory"


def test_confirmed_slot_stays_and_the_outcome_is_reported_once() -> None:
    s = state.apply(state.apply(switched(), state.Launch(1001, frozenset({"a"}))), state.Confirm("a"))
    assert s.trial is None and s.result is not None and s.result.outcome == "installed"
    for _ in range(5):
        s = state.apply(s, state.Launch(1e9, frozenset({"a"})))
    assert s.active == "a"
    s = state.apply(s, state.Reported())
    assert s.result is not None and s.result.reported
    with pytest.raises(state.StateError):
        state.apply(s, state.Switch("a", "0.3", 2000, 300))  # never into the running slot


def test_atomic_state_write_keeps_the_old_state_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state.write_state(tmp_path, switched())
    before = (tmp_path / "state.json").read_text()

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        state.write_state(tmp_path, state.SlotState())
    monkeypatch.undo()
    assert (tmp_path / "state.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left behind
    assert state.read_state(tmp_path) == switched()


# ── the launcher ───────────────────────────────────────────────────────────────────────────────────────────


def fake_evse(prefix: Path, name: str) -> None:
    """A stand-in ``bin/evse`` that reports what it was started with."""
    evse = prefix / "bin" / "evse"
    evse.parent.mkdir(parents=True)
    evse.write_text(f'#!/bin/sh\necho "{name} $EVSE_SLOT $* $EVSE_RELAUNCH"\nexit 3\n')
    evse.chmod(0o755)


def launch(update_dir: Path, factory: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EVSE_UPDATE_DIR": str(update_dir), "EVSE_FACTORY": str(factory)}
    argv = [sys.executable, "-m", "firmware.update.launcher", "run", "--config", "/nonexistent.toml"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_launcher_runs_the_trial_then_rolls_back_a_slot_that_keeps_failing(tmp_path: Path) -> None:
    update_dir, factory = tmp_path / "fw", tmp_path / "factory"
    fake_evse(factory, "factory")
    assert launch(update_dir, factory).stdout.startswith("factory factory run --config /nonexistent.toml")
    fake_evse(update_dir / "slots" / "a", "slot-a")
    state.write_state(update_dir, switched(now=datetime.now(UTC).timestamp()))
    for attempt in (1, 2):
        done = launch(update_dir, factory)
        assert done.stdout.startswith("slot-a a run --config"), done.stderr
        assert f"start {attempt} of 2" in done.stderr
    relaunch = json.loads(done.stdout.split(" ", 5)[-1])
    assert relaunch[1:] == ["-m", "firmware.update.launcher", "run", "--config", "/nonexistent.toml"]
    done = launch(update_dir, factory)  # both trial starts ended without a confirmation
    assert done.stdout.startswith("factory factory") and "rolled back to factory" in done.stderr
    assert state.read_state(update_dir).slots["a"].failed


def test_launcher_survives_a_garbled_state_file(tmp_path: Path) -> None:
    update_dir = tmp_path / "fw"
    update_dir.mkdir()
    (update_dir / "state.json").write_text("{not json")
    assert choose(update_dir, 0) == "factory"
    assert (update_dir / "state.json.bad").exists() and not (update_dir / "state.json").exists()


def test_launcher_finds_the_update_dir_like_the_daemon(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[store]\ndir = "/data/evse"\n[future]\nkey = 1\n')
    assert update_dir_from_config(cfg) == Path("/data/evse/firmware")
    cfg.write_text('[update]\ndir = "/data/fw"\n')
    assert update_dir_from_config(cfg) == Path("/data/fw")
    cfg.write_text("not = = toml")
    assert update_dir_from_config(cfg) == Path("/var/lib/evse/firmware")
    assert relaunch_command({"EVSE_RELAUNCH": '["/x/python", "-m", "l"]'}) == ["/x/python", "-m", "l"]
    assert relaunch_command({"EVSE_RELAUNCH": "garbage"}) is None and relaunch_command({}) is None


# ── downloads ──────────────────────────────────────────────────────────────────────────────────────────────

BLOB = os.urandom(300_000)


def test_download_resumes_with_range_after_a_dropped_connection(tmp_path: Path) -> None:
    dest = tmp_path / "dl" / "fw.pkg"
    with FileServer({"fw": BLOB}) as server:
        server.drop_after, server.drops = 100_000, 1
        with pytest.raises(download.DownloadError, match="broke off"):
            download.fetch(server.url("fw"), dest)
        assert not dest.exists()  # a partial file never looks complete
        assert (dest.parent / "fw.pkg.part").stat().st_size == 100_000
        got = download.fetch(server.url("fw"), dest)  # e.g. after a restart: only files carry the state
    assert got.resumed_from == 100_000 and dest.read_bytes() == BLOB
    assert [(r, s) for _, r, s in server.requests] == [(None, 200), ("bytes=100000-", 206)]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["fw.pkg"]


def test_download_restarts_from_zero_when_the_server_ignores_range(tmp_path: Path) -> None:
    dest = tmp_path / "fw.pkg"
    with FileServer({"fw": BLOB}) as server:
        server.drop_after, server.drops, server.ignore_range = 50_000, 1, True
        with pytest.raises(download.DownloadError):
            download.fetch(server.url("fw"), dest)
        got = download.fetch(server.url("fw"), dest)
    assert got.resumed_from == 0 and dest.read_bytes() == BLOB
    assert [s for _, _, s in server.requests] == [200, 200]


def test_download_starts_over_after_416_and_reports_http_errors(tmp_path: Path) -> None:
    dest = tmp_path / "fw.pkg"
    with FileServer({"fw": BLOB}) as server:
        (tmp_path / "fw.pkg.part").write_bytes(b"x" * (len(BLOB) + 10))  # longer than the file: not a prefix
        (tmp_path / "fw.pkg.part.json").write_text(json.dumps({"url": server.url("fw")}))
        with pytest.raises(download.DownloadError, match="416"):
            download.fetch(server.url("fw"), dest)
        assert download.fetch(server.url("fw"), dest).resumed_from == 0 and dest.read_bytes() == BLOB
        with pytest.raises(download.DownloadError, match="HTTP 404"):
            download.fetch(server.url("missing"), tmp_path / "other")
    with pytest.raises(download.DownloadError, match="cannot connect"):
        download.fetch(server.url("fw"), tmp_path / "third")  # the server is gone


@pytest.mark.parametrize(
    ("url", "why"),
    [("gopher://h/x", "unsupported scheme"), ("http:///nohost", "no host"), ("http://h:99999/x", "malformed")],
)
def test_bad_urls_are_refused(url: str, why: str) -> None:
    assert why in (download.check_url(url) or "")


# ── packages and signatures ────────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def fake_wheels(tmp_path: Path) -> Path:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "pievse-0.2.0-py3-none-any.whl").write_bytes(os.urandom(5000))
    (wheels / "dep-1.0-py3-none-any.whl").write_bytes(os.urandom(3000))
    return wheels


def signed_package(tmp_path: Path, signer: Any) -> Path:
    (tmp_path / "k.pem").write_bytes(signer.key_pem)
    (tmp_path / "c.pem").write_bytes(signer.cert_pem)
    return package.build(
        fake_wheels(tmp_path), tmp_path / "p.fwpkg", sign_key=tmp_path / "k.pem", sign_cert=tmp_path / "c.pem"
    )


def test_package_round_trip_and_sha256_mismatch(tmp_path: Path, pki: Pki) -> None:
    root = tmp_path / "root.pem"
    root.write_bytes(pki.root_pem)
    pkg = signed_package(tmp_path, pki.signer)
    manifest = package.verify(pkg, require_signature=True, root_ca=str(root), now=datetime.now(UTC))
    assert manifest.version == "0.2.0" and manifest.requirement == "pievse==0.2.0"
    assert len(package.extract_wheels(pkg, manifest, tmp_path / "out")) == 2
    tampered = tmp_path / "t.fwpkg"  # same manifest and sizes, one byte of a wheel changed
    with tarfile.open(pkg) as src, tarfile.open(tampered, "w") as dst:
        for info in src:
            data = src.extractfile(info).read()  # type: ignore[union-attr]
            if info.name.startswith("wheels/pievse"):
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            dst.addfile(info, io.BytesIO(data))
    with pytest.raises(package.PackageError, match="sha256 mismatch"):
        package.extract_wheels(tampered, package.read_manifest(tampered)[0], tmp_path / "out2")
    with pytest.raises(package.PackageError, match="not a firmware package"):
        package.read_manifest(tmp_path / "c.pem")


def test_package_signature_is_required_and_must_chain_to_the_root(tmp_path: Path, pki: Pki) -> None:
    root = tmp_path / "root.pem"
    root.write_bytes(pki.root_pem)
    now = datetime.now(UTC)
    unsigned = package.build(fake_wheels(tmp_path), tmp_path / "u.fwpkg")
    with pytest.raises(package.PackageError, match="not signed"):
        package.verify(unsigned, require_signature=True, root_ca=str(root), now=now)
    assert package.verify(unsigned, require_signature=False, root_ca="", now=now).version == "0.2.0"
    other = tmp_path / "other"
    other.mkdir()
    foreign = signed_package(other, pki.untrusted)
    with pytest.raises(package.PackageError, match="does not chain"):
        package.verify(foreign, require_signature=True, root_ca=str(root), now=now)
    with pytest.raises(package.PackageError, match="not valid now"):
        later = tmp_path / "later"
        later.mkdir()
        package.verify(signed_package(later, pki.signer), require_signature=True, root_ca=str(root),
                       now=now + timedelta(days=400))  # fmt: skip


def test_signature_checks(tmp_path: Path, pki: Pki) -> None:
    roots = [signing.load_roots(_write(tmp_path / "r.pem", pki.root_pem))[0]]
    now = datetime.now(UTC)
    cert = signing.check_certificate(pki.signer.cert_pem, roots, now)
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(100_000))
    signing.verify_signature(cert, blob, pki.signer.sign(blob.read_bytes()))
    with pytest.raises(signing.SignatureError):
        signing.verify_signature(cert, blob, pki.signer.sign(b"other"))
    with pytest.raises(signing.SignatureError):
        signing.decode_signature("***")
    ec_roots = [signing.load_roots(_write(tmp_path / "ec.pem", pki.root_pem))[0]]
    with pytest.raises(signing.CertificateError, match="does not chain"):
        signing.check_certificate(pki.untrusted.cert_pem, ec_roots, now)
    from cryptography import x509

    ec_cert = x509.load_pem_x509_certificate(pki.untrusted.cert_pem)  # ECDSA P-256 signatures verify too
    signing.verify_signature(ec_cert, blob, pki.untrusted.sign(blob.read_bytes()))
    with pytest.raises(signing.SignatureError):
        signing.verify_signature(ec_cert, blob, b"\x30\x02junk")
    for garbage in ("", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "x" * 5000):
        with pytest.raises(signing.CertificateError):
            signing.check_certificate(garbage, roots, now)
    with pytest.raises(signing.CertificateError):
        signing.load_roots("")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ── the OCPP firmware service's job flow ───────────────────────────────────────────────────────────────────


class Sender:
    """Records what the service would send (the real link is exercised by the e2e tests)."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.online = True
        self.hooks: list[Callable[[], Awaitable[None]]] = []

    def on_boot_accepted(self, hook: Callable[[], Awaitable[None]]) -> None:
        self.hooks.append(hook)

    async def send_live(self, payload: Any) -> Any:
        if not self.online:
            return None
        self.sent.append(payload)
        return object()

    def statuses(self) -> list[str]:
        return [str(p.status) for p in self.sent]


class Sessions:
    current: object | None = None


def service(
    tmp_path: Path,
    *,
    slot: str | None = "factory",
    require_signature: bool = True,
    root_ca: str = "",
    clock: FakeClock | None = None,
    restarts: list[str] | None = None,
    sessions: Sessions | None = None,
) -> tuple[OcppFirmware, Sender]:
    sender = Sender()
    clock = clock or FakeClock(datetime.now(UTC))

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)
        await asyncio.sleep(0)

    fw = OcppFirmware(
        update_dir=tmp_path / "fw",
        clock=clock,
        sender=sender,
        sessions=sessions or Sessions(),  # type: ignore[arg-type]
        firmware_version="0.1.0",
        restart=(restarts if restarts is not None else []).append,
        confirm_timeout_s=30,
        root_ca=root_ca,
        require_signature=require_signature,
        running_slot=slot,
        config_file=None,
        sleep=sleep,
    )
    return fw, sender


async def finish(fw: OcppFirmware) -> None:
    if fw._task is not None:
        await asyncio.wait_for(fw._task, 30)


async def test_bad_requests_end_in_download_failed(tmp_path: Path) -> None:
    fw, sender = service(tmp_path)
    fw.request_plain("ftp//no-scheme", "2026-01-01T00:00:00Z", None, None)
    fw.start()
    await finish(fw)
    fw.request_plain("http://127.0.0.1:9/x", "yesterday-ish", None, None)
    fw.start()
    await finish(fw)
    assert sender.statuses() == ["DownloadFailed", "DownloadFailed"]
    assert fw.job is None and fw.status() == "Idle"
    assert fw.request_signed(1, {"location": "http://h/x"}, None, None) == "Rejected"
    assert fw.request_signed(1, "garbage", None, None) == "Rejected"  # type: ignore[arg-type]
    ok_dates = {"location": "http://h/x", "retrieve_date_time": "2026-01-01T00:00:00Z", "signature": "AAAA"}
    assert fw.request_signed(1, {**ok_dates, "signing_certificate": "junk"}, None, None) == "InvalidCertificate"


async def test_unreachable_server_retries_then_download_failed(tmp_path: Path) -> None:
    fw, sender = service(tmp_path)
    with FileServer({}) as server:
        fw.request_plain(server.url("nothing"), "2026-01-01T00:00:00Z", 2, 5)
        fw.start()
        await finish(fw)
    assert sender.statuses() == ["Downloading", "DownloadFailed"]
    assert server.gets("nothing") == 3  # the first try and two retries


async def test_unsigned_package_is_not_installed(tmp_path: Path) -> None:
    pkg = package.build(fake_wheels(tmp_path), tmp_path / "u.fwpkg")
    fw, sender = service(tmp_path)
    with FileServer({"u": pkg}) as server:
        fw.request_plain(server.url("u"), "2026-01-01T00:00:00Z", 0, 0)
        fw.start()
        await finish(fw)
    assert sender.statuses() == ["Downloading", "Downloaded", "InstallationFailed"]
    assert not (tmp_path / "fw" / "slots").exists() and not list((tmp_path / "fw" / "downloads").iterdir())


async def test_install_waits_for_the_session_to_end(tmp_path: Path) -> None:
    pkg = package.build(fake_wheels(tmp_path), tmp_path / "u.fwpkg")
    sessions = Sessions()
    sessions.current = object()
    fw, sender = service(tmp_path, require_signature=False, slot=None, sessions=sessions)
    with FileServer({"u": pkg}) as server:
        fw.request_plain(server.url("u"), "2026-01-01T00:00:00Z", 0, 0)
        fw.start()
        for _ in range(200):
            await asyncio.sleep(0.01)
            if sender.statuses() == ["Downloading", "Downloaded"] and fw.clock.monotonic() > 1010:
                break
        assert sender.statuses() == ["Downloading", "Downloaded"] and fw.status() == "Downloaded"
        sessions.current = None
        await finish(fw)
    # not started through the launcher: refused before anything is touched
    assert sender.statuses() == ["Downloading", "Downloaded", "InstallationFailed"]


async def test_scheduled_download_waits_for_retrieve_date_and_resumes_after_a_restart(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 3, 1, tzinfo=UTC))
    fw, sender = service(tmp_path, clock=clock)
    with FileServer({"p": BLOB}) as server:
        server.drop_after, server.drops = 100_000, 5
        fw.request_plain(server.url("p"), "2026-03-01T00:10:00Z", 1, 30)
        fw.start()
        await finish(fw)
        assert clock.now() >= datetime(2026, 3, 1, 0, 10, tzinfo=UTC)  # waited for retrieveDate
        assert sender.statuses() == ["Downloading", "DownloadFailed"]
        # a daemon restart while downloading: the job and the partial file are on disk
        fw.request_plain(server.url("p"), "2026-03-01T00:00:00Z", 0, 0)
        job_id = fw.job.id if fw.job else ""
        part = tmp_path / "fw" / "downloads" / f"{job_id}.pkg.part"
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(BLOB[:200_000])
        part.with_name(part.name + ".json").write_text(json.dumps({"url": server.url("p")}))
        server.drops = 0
        again, sender2 = service(tmp_path, clock=clock)  # built inside the running loop: resumes by itself
        assert again.job is not None and again.job.id == job_id
        await finish(again)
    assert server.requests[-1][1:] == ("bytes=200000-", 206)
    assert sender2.statuses()[:2] == ["Downloading", "Downloaded"]  # then: not a package -> InstallationFailed


async def test_trial_without_accepted_boot_is_failed_and_restarted(tmp_path: Path) -> None:
    update_dir = tmp_path / "fw"
    state.write_state(update_dir, state.apply(switched(), state.Launch(1001, frozenset({"a"}))))
    restarts: list[str] = []
    fw, _ = service(tmp_path, slot="a", restarts=restarts)
    assert fw._watch is not None
    await asyncio.wait_for(fw._watch, 10)
    assert restarts == ["FirmwareRollback"]
    s = state.read_state(update_dir)
    assert s.trial is not None and s.trial.failed and "not accepted within 30 s" in s.trial.failed
    rolled = state.apply(s, state.Launch(1002, frozenset({"a"})))
    assert rolled.active == "factory" and rolled.result is not None and rolled.result.outcome == "failed"
    state.write_state(update_dir, rolled)
    fw2, sender2 = service(tmp_path, slot="factory")
    await fw2.after_boot()
    assert sender2.statuses() == ["InstallationFailed"]
    assert state.read_state(update_dir).result.reported  # type: ignore[union-attr]


async def test_trial_confirmed_at_accepted_boot_reports_installed_once_delivered(tmp_path: Path) -> None:
    update_dir = tmp_path / "fw"
    signed = state.apply(state.SlotState(), state.Switch("a", "0.2", 1000, 300, request_id=9, signed=True))
    state.write_state(update_dir, state.apply(signed, state.Launch(1001, frozenset({"a"}))))
    restarts: list[str] = []
    fw, sender = service(tmp_path, slot="a", restarts=restarts)
    sender.online = False  # accepted, then the link dropped before the status went out
    fw.online_grace_s = 0.0
    fw.confirmed = False
    await fw.after_boot()
    s = state.read_state(update_dir)
    assert s.trial is None and s.result is not None and not s.result.reported and fw.confirmed
    sender.online = True
    await sender.hooks[0]()  # the next accepted boot
    assert [(p.status, p.request_id) for p in sender.sent] == [("Installed", 9)]
    await sender.hooks[0]()
    assert len(sender.sent) == 1 and restarts == []
    assert fw._watch is not None
    await asyncio.wait_for(fw._watch, 5)
    assert restarts == []


# ── the technician command ─────────────────────────────────────────────────────────────────────────────────


def test_evse_firmware_status_and_rollback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\ndir = "{tmp_path}"\n')
    update_dir = tmp_path / "firmware"
    confirmed = state.apply(state.apply(switched(), state.Launch(1001, frozenset({"a"}))), state.Confirm("a"))
    state.write_state(update_dir, confirmed)
    parser = argparse.ArgumentParser()
    config_opt = argparse.ArgumentParser(add_help=False)
    config_opt.add_argument("--config", default=argparse.SUPPRESS)
    commands.register(parser.add_subparsers(dest="command"), [config_opt])

    def run(*argv: str) -> int:
        args = parser.parse_args([*argv, "--config", str(cfg)])
        return int(args.func(args))

    assert run("firmware", "status") == 0
    out = capsys.readouterr().out
    assert "active:   a (0.2)" in out and "last:     0.2 installed" in out
    assert run("firmware", "status", "--json") == 0
    assert json.loads(capsys.readouterr().out)["active"] == "a"
    assert run("firmware", "rollback") == 0
    assert state.read_state(update_dir).active == "factory"
    assert run("firmware", "rollback") == 1  # nothing left to roll back to
    assert run("firmware", "install", str(tmp_path / "missing.fwpkg")) == 1
    assert "evse firmware:" in capsys.readouterr().err


def test_signature_base64_helper() -> None:
    assert signing.decode_signature(base64.b64encode(b"abc").decode() + "\n") == b"abc"


def test_package_command_builds_and_shows(tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    wheels = fake_wheels(tmp_path)
    key, cert = _write(tmp_path / "k.pem", pki.signer.key_pem), _write(tmp_path / "c.pem", pki.signer.cert_pem)
    out = tmp_path / "p.fwpkg"
    argv = ["build", "--wheel-dir", str(wheels), "--out", str(out), "--extras", "pi"]
    assert package.main([*argv, "--sign-key", str(key), "--sign-cert", str(cert)]) == 0
    assert package.main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert '"requirement": "pievse[pi]==0.2.0"' in shown and "signed: yes" in shown
    assert package.main(["build", "--wheel-dir", str(tmp_path), "--out", str(out)]) == 1  # no pievse wheel there


async def test_extended_trigger_status_follows_the_running_job(tmp_path: Path) -> None:
    """ExtendedTriggerMessage FirmwareStatusNotification: the running job's status, with its requestId if signed."""
    from dataclasses import replace

    from firmware.ocpp.v16.firmware import Job

    fw, _ = service(tmp_path)
    assert fw.signed_status() == ("Idle", None)
    running = asyncio.Event()
    fw.job = Job("j", "http://h/p", "2026-01-01T00:00:00+00:00", 0, 0, signed=True, request_id=7)
    fw._task = asyncio.create_task(running.wait())
    fw.current = "Downloading"
    try:
        assert fw.signed_status() == ("Downloading", 7)
        fw.job = replace(fw.job, signed=False, request_id=None)
        assert fw.signed_status() == ("Downloading", None)
    finally:
        running.set()
        await fw._task
    assert fw.signed_status() == ("Idle", None)  # the job's task has ended
