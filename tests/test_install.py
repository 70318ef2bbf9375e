"""deploy/install.sh staged into a directory: the layout systemd/evse.service expects, a working `evse` in the
venv, the config kept on a re-run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def install(prefix: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EVSE_PREFIX": str(prefix), "EVSE_PYTHON": sys.executable}
    return subprocess.run(
        ["sh", str(ROOT / "deploy" / "install.sh")], env=env, capture_output=True, text=True, timeout=600
    )


def test_install_stages_the_service_layout_and_keeps_an_edited_config(tmp_path: Path) -> None:
    done = install(tmp_path)
    assert done.returncode == 0, done.stderr
    evse = tmp_path / "opt/evse/venv/bin/evse"
    unit = (tmp_path / "etc/systemd/system/evse.service").read_text()
    assert "ExecStart=/opt/evse/venv/bin/python -m firmware.update.launcher run --config /etc/evse/config.toml" in (
        unit
    )
    assert "ExecStartPre=+/opt/evse/bin/evse-pwm-setup" in unit
    assert os.access(tmp_path / "opt/evse/bin/evse-pwm-setup", os.X_OK)
    assert (tmp_path / "usr/lib/sysusers.d/evse.conf").read_text() == (ROOT / "systemd/evse.sysusers.conf").read_text()
    config = tmp_path / "etc/evse/config.toml"
    assert config.read_text() == (ROOT / "config.toml").read_text()
    assert f"ok: {config}" in done.stdout
    version = subprocess.run([str(evse), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("evse ")
    # What the unit starts: the launcher in the factory venv, which runs the factory `evse` while no slot is active.
    launcher = subprocess.run(
        [str(tmp_path / "opt/evse/venv/bin/python"), "-m", "firmware.update.launcher", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EVSE_UPDATE_DIR": str(tmp_path / "var/lib/evse/firmware")},
    )
    assert launcher.returncode == 0 and launcher.stdout == version.stdout
    assert list((tmp_path / "opt/evse/venv/lib").glob("python3*/site-packages/firmware/__pycache__/*.pyc"))
    maps = subprocess.run(  # the meter register maps are data files: they must ship with the package
        [str(evse.with_name("python")), "-c", "from hal.meters import available_models; print(available_models())"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "sdm630" in maps.stdout and "em340" in maps.stdout, maps.stderr

    config.write_text(config.read_text().replace('id = "CP-0001"', 'id = "CP-GARAGE"'))
    again = install(tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"keeping {config}" in again.stdout
    assert 'id = "CP-GARAGE"' in config.read_text()


def test_a_broken_config_fails_the_install(tmp_path: Path) -> None:
    config = tmp_path / "etc/evse/config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("[charger]\nmax_current_a = 100\n")
    done = install(tmp_path)
    assert done.returncode == 2
    assert "charger.max_current_a: 100 is above the maximum 80" in done.stderr
