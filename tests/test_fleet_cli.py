"""``evse fleet`` as a process: a short run against the light central system of bench/, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def light_csms() -> Iterator[tuple[int, subprocess.Popen[str]]]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "light_csms.py"), "--heartbeat", "60", "--sample-interval", "2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = json.loads(proc.stdout.readline())["port"]
    yield port, proc
    proc.kill()
    proc.wait()


def _received(proc: subprocess.Popen[str]) -> dict[str, int]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    counts: dict[str, int] = json.loads(out.strip().splitlines()[-1])["received"]
    return counts


def test_a_short_fleet_run_reports_what_the_csms_received(
    light_csms: tuple[int, subprocess.Popen[str]], tmp_path: Path
) -> None:
    port, proc = light_csms
    scenario = tmp_path / "scenario.toml"
    scenario.write_text("arrivals_per_hour = 1800\ndwell_mean_minutes = 0.1\ndwell_min_minutes = 0.05\nramp_up_s = 1\n")
    report_file = tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "firmware",
            "fleet",
            "--count",
            "5",
            "--url",
            f"ws://127.0.0.1:{port}/ocpp",
            "--id-prefix",
            "SITE7-",
            "--duration",
            "8",
            "--scenario",
            str(scenario),
            "--report",
            str(report_file),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(report_file.read_text())
    assert report["chargers"] == 5
    received = _received(proc)
    assert received == {action: row["sent"] for action, row in report["messages"].items()}
    assert received["BootNotification"] == 5
    assert "fleet: 5 chargers" in result.stdout and "BootNotification" in result.stdout
    assert "booted" in result.stderr  # the live progress line


def test_bad_arguments_and_scenario_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet", "--count", "0", "--url", "ws://127.0.0.1:1/x"]) == 2
    assert "--count must be at least 1" in capsys.readouterr().err
    assert main(["fleet", "--count", "2", "--url", "http://example.org"]) == 2
    assert "must start with ws://" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("unknown_card_share = 2\n")
    assert main(["fleet", "--count", "2", "--url", "ws://127.0.0.1:1/x", "--scenario", str(bad)]) == 2
    assert "unknown_card_share: 2 is outside 0 to 1" in capsys.readouterr().err
