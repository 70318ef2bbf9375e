"""The assembled charge point: control socket, CLI, daemon process, logs, configuration exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from firmware import cli
from firmware.app import ChargePointApp, demo_settings
from firmware.config import default_settings
from hal.clock import FakeClock

EVSE = [sys.executable, "-m", "firmware"]


@pytest.fixture
async def app() -> AsyncIterator[tuple[ChargePointApp, FakeClock]]:
    work = Path(tempfile.mkdtemp(prefix="evse-t-", dir="/tmp"))
    settings = demo_settings(default_settings(), work)
    settings = replace(settings, auth=replace(settings.auth, mode="local", allowlist=("04A1B2C3",)))
    clock = FakeClock()
    charge_point = ChargePointApp(settings, clock=clock, sim_tick_s=0.005, meter_interval_s=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(charge_point.run(stop))
    await asyncio.sleep(0.05)
    yield charge_point, clock
    stop.set()
    await task


async def run_cli(*argv: str) -> int:
    return await asyncio.to_thread(cli.main, list(argv))


async def advance(app: ChargePointApp, clock: FakeClock, seconds: float, dt: float = 0.1) -> None:
    for _ in range(round(seconds / dt)):
        clock.advance(dt)
        app.sim.tick()
        app.controller.wake()
        await asyncio.sleep(0.002)


async def test_cli_drives_a_whole_session_through_the_socket(
    app: tuple[ChargePointApp, FakeClock], capsys: pytest.CaptureFixture[str]
) -> None:
    charge_point, clock = app
    sock = charge_point.settings.control.socket
    assert await run_cli("sim", "plug", "--socket", sock) == 0
    assert await run_cli("sim", "tap", "04a1b2c3", "--socket", sock) == 0
    await advance(charge_point, clock, 5.0)
    capsys.readouterr()
    assert await run_cli("status", "--json", "--socket", sock) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "C"
    assert status["connector_status"] == "Charging"
    assert status["contactor"] == "closed"
    assert status["offered_a"] == 32.0
    assert status["duty_percent"] == pytest.approx(53.33, abs=0.01)
    assert status["limit"]["winner"] in ("cable", "config") and status["limit"]["value_a"] == 32.0
    assert status["transaction"]["id_tag"] == "04A1B2C3"
    assert status["ocpp"] == {"enabled": False, "connected": False, "queued": 0}
    assert status["faults"] == []
    assert len(status["meter"]["current_a"]) == 3 and len(status["meter"]["voltage_v"]) == 3

    assert await run_cli("sim", "fault", "rcd", "--socket", sock) == 0
    await advance(charge_point, clock, 0.1)
    capsys.readouterr()
    await run_cli("status", "--json", "--socket", sock)
    status = json.loads(capsys.readouterr().out)
    assert status["contactor"] == "open" and status["connector_status"] == "Faulted"
    assert status["state"] == "F" and status["faults"] == ["rcd"]

    assert await run_cli("limits", "--json", "--socket", sock) == 0
    limits = json.loads(capsys.readouterr().out)
    assert {c["source"] for c in limits["claims"]} >= {"config", "cable"}
    assert sum(c["winner"] for c in limits["claims"]) == 1


async def test_sim_on_bad_input_is_a_clean_error(
    app: tuple[ChargePointApp, FakeClock], capsys: pytest.CaptureFixture[str]
) -> None:
    charge_point, _ = app
    sock = charge_point.settings.control.socket
    assert await run_cli("sim", "tap", "XYZ", "--socket", sock) == 2
    assert await asyncio.to_thread(lambda: __import__("firmware.apiclient").apiclient.ApiClient(sock).request("status"))
    from firmware.apiclient import ApiClient, RemoteError

    with pytest.raises(RemoteError, match="unknown sim action"):
        await asyncio.to_thread(ApiClient(sock).request, "sim", {"action": "explode"})
    with pytest.raises(RemoteError, match=r"sim ev\.max_current"):
        await asyncio.to_thread(ApiClient(sock).request, "sim", {"action": "ev.max_current", "value": "lots"})


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[charger]\nmax_current_a = "lots"\n', ['charger.max_current_a: expected a number, got a string ("lots")']),
        ("[charger]\nbogus = 1\n", ["charger.bogus: unknown key"]),
        ("[charger]\nmax_current_a = 100\n", ["charger.max_current_a: 100 is above the maximum 80"]),
        ("[charger\nid=1\n", None),
        ('[charger]\nphases = 2\n[hal]\nbackend = "x"\n', ["charger.phases: 2 is not one of 1, 3", None]),
    ],
)
def test_bad_config_exits_2_for_check_and_run(tmp_path: Path, toml: str, expected: list[str | None] | None) -> None:
    path = write(tmp_path / "config.toml", toml)
    for argv in (["config", "check", str(path)], ["run", "--config", str(path)]):
        done = subprocess.run([*EVSE, *argv], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        if expected is None:
            assert lines[0].startswith(f"config: {path}: invalid TOML")
        else:
            assert len(lines) == len(expected)
            for line, want in zip(lines, expected, strict=True):
                assert want is None or line == want
        assert not (tmp_path / "evse.log").exists()  # nothing started


def test_missing_config_exits_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [*EVSE, "config", "check", str(tmp_path / "nope.toml")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"config: {tmp_path / 'nope.toml'}: file not found"


def test_config_the_build_cannot_honour_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[hal]\nbackend = "rpi"\n[meter]\nmodel = "sim"\n')
    done = subprocess.run([*EVSE, "config", "check", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ['meter.model: "sim" needs simulated hardware; name the meter (e.g. "sdm630")']


def test_shipped_config_checks_ok() -> None:
    root = Path(__file__).parent.parent
    done = subprocess.run(
        [*EVSE, "config", "check", str(root / "config.toml")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"ok: {root / 'config.toml'}"


def test_daemon_runs_logs_and_stops_cleanly_on_sigterm() -> None:
    work = Path(tempfile.mkdtemp(prefix="evse-d-", dir="/tmp"))
    sock = work / "control.sock"
    config = write(
        work / "config.toml",
        f'[hal]\nbackend = "sim"\n[store]\ndir = "{work}"\n[control]\nsocket = "{sock}"\n[auth]\nmode = "free"\n',
    )
    proc = subprocess.Popen([*EVSE, "run", "--config", str(config)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert cli.main(["sim", "plug", "--socket", str(sock)]) == 0
        deadline = time.monotonic() + 15
        from firmware.apiclient import ApiClient

        while ApiClient(str(sock)).request("status")["contactor"] != "closed":
            assert time.monotonic() < deadline, "free vend session did not start"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15)
        stderr = proc.stderr.read() if proc.stderr else ""
    assert code == 0, stderr
    assert "<6>firmware.charging: contactor closed" in stderr  # journald priority prefix
    log = (work / "evse.log").read_text()
    for needle in ("authorization Accepted", "contactor closed", "connector Preparing -> SuspendedEV", "stopped"):
        assert needle in log
    assert not sock.exists()


def test_demo_completes_a_session_and_prints_the_energy() -> None:
    env = {**os.environ, "EVSE_CONFIG": ""}
    done = subprocess.run(
        [*EVSE, "demo", "--speed", "600", "--minutes", "20"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tempfile.mkdtemp(dir="/tmp"),
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Session summary" in done.stdout
    energy = [line for line in done.stdout.splitlines() if "energy delivered" in line]
    kwh = float(energy[0].split()[-2])
    assert 5.0 < kwh < 8.0  # 20 min, ~7 of them at 16 A
