"""The systemd unit: `systemd-analyze verify` is clean and `security --offline` exposure stays <= 3.0.

`verify` exits 0 even on unknown keys or parse errors (platform notes §7), so any output fails the test. It also
reports missing ExecStart binaries, so the unit is checked as a copy whose commands point at /bin/true.
Without systemd-analyze the tests skip, unless EVSE_REQUIRE_SYSTEMD is set (CI): then they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "evse.service"
SYSUSERS = REPO / "systemd" / "evse.sysusers.conf"
MAX_EXPOSURE = 3.0
COMMANDS = ("/opt/evse/bin/evse-pwm-setup", "/opt/evse/venv/bin/python")


def _analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        reason = "systemd-analyze not installed (apt-get install systemd)"
        if os.environ.get("EVSE_REQUIRE_SYSTEMD"):
            pytest.fail(reason + " and EVSE_REQUIRE_SYSTEMD is set")
        pytest.skip(reason)
    return tool


def _testable_unit(tmp_path: Path) -> Path:
    text = UNIT.read_text()
    for command in COMMANDS:
        assert command in text, f"{command} no longer in the unit: update the test"
        text = text.replace(command, "/bin/true")
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    return unit


def _keys(text: str) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def test_unit_verifies_without_any_output(tmp_path: Path) -> None:
    tool = _analyze()
    unit = _testable_unit(tmp_path)
    result = subprocess.run(
        [tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a typo'd key is reported (on stderr, with exit code 0)."""
    tool = _analyze()
    unit = _testable_unit(tmp_path)
    unit.write_text(unit.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    result = subprocess.run(
        [tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert "NoNewPrivilege" in result.stdout + result.stderr


def _exposure(tool: str, unit: Path) -> float:
    result = subprocess.run(
        [tool, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
    assert match is not None, f"no exposure in `systemd-analyze security --offline=yes` output:\n{out}"
    return float(match.group(1))


def test_security_exposure_is_at_most_3(tmp_path: Path) -> None:
    tool = _analyze()
    unit = _testable_unit(tmp_path)
    exposure = _exposure(tool, unit)
    print(f"systemd-analyze security --offline=yes: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE


def test_exposure_measurement_can_fail(tmp_path: Path) -> None:
    """The same measurement on the unit stripped of its [Service] hardening is far above the bar."""
    tool = _analyze()
    bare = "[Service]\nType=notify\nExecStart=/bin/true\n"
    unit = tmp_path / "bare.service"
    unit.write_text(bare)
    assert _exposure(tool, unit) > MAX_EXPOSURE


def test_unit_contract() -> None:
    """The settings the firmware and the hardware rely on (platform notes §7, deploy/hardware.md)."""
    keys = _keys(UNIT.read_text())
    assert keys["Type"] == ["notify"]
    assert keys["NotifyAccess"] == ["main"]
    # The firmware launcher from the factory venv starts the active A/B slot (firmware/update/launcher.py).
    launcher = "/opt/evse/venv/bin/python -m firmware.update.launcher run --config /etc/evse/config.toml"
    assert keys["ExecStart"] == [launcher]
    assert keys["ExecStartPre"] == ["+/opt/evse/bin/evse-pwm-setup"]
    assert keys["Restart"] == ["on-failure"]
    assert int(keys["WatchdogSec"][0]) > 0
    assert keys["User"] == ["evse"] and keys["Group"] == ["evse"]
    assert keys["SupplementaryGroups"] == ["gpio i2c spi dialout"]
    assert keys["RuntimeDirectory"] == ["evse"]  # /run/evse/control.sock
    assert keys["WorkingDirectory"] == ["/run/evse"]  # writable: lgpio puts its notify FIFOs in the cwd
    assert keys["CapabilityBoundingSet"] == [""]
    assert "ProtectKernelTunables" not in keys  # makes /sys read-only: breaks the PWM writes
    assert "PrivateDevices" not in keys and "PrivateUsers" not in keys
    assert "/sys/class/pwm" in keys["ReadWritePaths"][0].split()
    assert "StartLimitIntervalSec" in keys and "StartLimitBurst" in keys


def test_sysusers_declares_the_user_and_groups() -> None:
    lines = [line.split() for line in SYSUSERS.read_text().splitlines() if line and not line.startswith("#")]
    assert ["g", "evse", "-"] in lines
    assert any(fields[:3] == ["u", "evse", "-:evse"] for fields in lines)
    members = {fields[2] for fields in lines if fields[0] == "m" and fields[1] == "evse"}
    assert members == {"gpio", "i2c", "spi", "dialout"}


def test_sysusers_parses(tmp_path: Path) -> None:
    tool = shutil.which("systemd-sysusers")
    if tool is None:
        if os.environ.get("EVSE_REQUIRE_SYSTEMD"):
            pytest.fail("systemd-sysusers not installed (apt-get install systemd)")
        pytest.skip("systemd-sysusers not installed (apt-get install systemd)")
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        [tool, "--root", str(tmp_path), "--dry-run", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Creating user 'evse'" in result.stdout + result.stderr
