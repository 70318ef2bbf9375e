"""firmware.sdnotify against a real AF_UNIX datagram socket, and deploy/evse-pwm-setup against a fake sysfs tree."""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import select
import socket
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware import sdnotify

REPO = Path(__file__).resolve().parent.parent
SETUP = REPO / "deploy" / "evse-pwm-setup"


def _receive(sock: socket.socket) -> list[str]:
    out: list[str] = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


@pytest.fixture(params=["path", "abstract"])
def notify_socket(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        path = str(tmp_path / "notify")
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
    else:
        name = f"evse-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    sock.setblocking(False)
    with sock:
        yield sock


def test_states_arrive_as_exact_datagrams(notify_socket: socket.socket) -> None:
    assert sdnotify.ready()
    assert sdnotify.status("charging at 16 A\nsecond line")
    assert sdnotify.watchdog()
    assert sdnotify.stopping()
    assert sdnotify.notify("RELOADING=1")
    assert _receive(notify_socket) == [
        "READY=1",
        "STATUS=charging at 16 A second line",
        "WATCHDOG=1",
        "STOPPING=1",
        "RELOADING=1",
    ]


def test_no_op_without_notify_socket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    assert sdnotify.watchdog() is False
    assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": ""}) is False


def test_send_error_is_logged_once_and_not_raised(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    monkeypatch.setattr(sdnotify, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="firmware.sdnotify"):
        assert sdnotify.watchdog() is False
        assert sdnotify.watchdog() is False
    assert [r.getMessage().startswith("sd_notify to") for r in caplog.records] == [True]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "10000000"}, 5.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "4242"}, 5.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "4243"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "ten"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(env: dict[str, str], expected: float | None) -> None:
    assert sdnotify.watchdog_interval_s(env, pid=4242) == expected


def test_watchdog_interval_defaults_to_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval_s() == 1.0


async def test_watchdog_pings_only_while_healthy(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    health = iter([True, True, False, False, True])
    ticks: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay: float) -> None:
        ticks.append(delay)
        if len(ticks) == 5:
            raise asyncio.CancelledError
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    seen: list[list[str]] = []

    def healthy() -> bool:
        seen.append(_receive(notify_socket))
        return next(health)

    with caplog.at_level(logging.CRITICAL, logger="firmware.sdnotify"), pytest.raises(asyncio.CancelledError):
        await sdnotify.run_watchdog(healthy, 5.0)
    seen.append(_receive(notify_socket))
    # what arrived after each round: pings after healthy rounds only
    assert seen == [[], ["WATCHDOG=1"], ["WATCHDOG=1"], [], [], ["WATCHDOG=1"]]
    assert ticks == [5.0] * 5
    assert len([r for r in caplog.records if r.levelno == logging.CRITICAL]) == 1


async def test_watchdog_rejects_a_bad_interval() -> None:
    with pytest.raises(ValueError):
        await sdnotify.run_watchdog(lambda: True, 0)


# ---- deploy/evse-pwm-setup ------------------------------------------------------------------------


def _fake_sysfs(tmp_path: Path, device: str = "fe20c000.pwm", chip: str = "pwmchip2") -> Path:
    root = tmp_path / "class" / "pwm"
    dev = tmp_path / "devices" / "platform" / "soc" / device
    dev.mkdir(parents=True)
    (root / chip).mkdir(parents=True)
    (root / chip / "device").symlink_to(dev)
    (root / chip / "export").write_text("")
    # a chip that is not ours (the Pi 5 fan PWM) must be ignored
    fan = tmp_path / "devices" / "platform" / "soc" / "1f0009c000.pwm"
    fan.mkdir()
    (root / "pwmchip0").mkdir()
    (root / "pwmchip0" / "device").symlink_to(fan)
    return root


def _node(root: Path, chip: str, channel: int) -> Path:
    node = root / chip / f"pwm{channel}"
    node.mkdir()
    for attr in ("period", "duty_cycle", "enable"):
        (node / attr).write_text("0\n")
        os.chmod(node / attr, 0o600)
    return node


def _env(root: Path, **extra: str) -> dict[str, str]:
    env = {"PATH": os.environ["PATH"], "EVSE_PWM_ROOT": str(root), "EVSE_GROUP": grp.getgrgid(os.getgid()).gr_name}
    env.update(extra)
    return env


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SETUP)], env=env, capture_output=True, text=True, timeout=30, check=False)


def _group_writable(node: Path) -> bool:
    return all(
        (node / a).stat().st_mode & (stat.S_IWGRP | stat.S_IRGRP) == stat.S_IWGRP | stat.S_IRGRP
        and (node / a).stat().st_gid == os.getgid()
        for a in ("period", "duty_cycle", "enable")
    )


def test_setup_fixes_permissions_of_an_exported_channel_idempotently(tmp_path: Path) -> None:
    root = _fake_sysfs(tmp_path)
    node = _node(root, "pwmchip2", 0)
    assert not _group_writable(node)
    for _ in range(2):
        result = _run(_env(root))
        assert result.returncode == 0, result.stderr
        assert _group_writable(node)
    assert (root / "pwmchip2" / "export").read_text() == ""  # already exported: not exported again


def test_setup_exports_and_waits_for_the_node(tmp_path: Path) -> None:
    """`export` is a FIFO: the test plays udev, creating the node once the channel number arrives."""
    root = _fake_sysfs(tmp_path, device="1f00098000.pwm", chip="pwmchip1")  # Pi 5: GPIO18 is RP1 channel 2
    export = root / "pwmchip1" / "export"
    export.unlink()
    os.mkfifo(export)
    fd = os.open(export, os.O_RDONLY | os.O_NONBLOCK)
    proc = subprocess.Popen([str(SETUP)], env=_env(root, EVSE_PWM_TIMEOUT="100"), stderr=subprocess.PIPE, text=True)
    try:
        data = b""
        while not data.endswith(b"\n"):
            ready, _, _ = select.select([fd], [], [], 10)
            assert ready, "the script never wrote to export"
            data += os.read(fd, 16)
        assert data == b"2\n"
        node = _node(root, "pwmchip1", 2)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert _group_writable(node)
    finally:
        os.close(fd)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_setup_fails_when_the_node_never_appears(tmp_path: Path) -> None:
    root = _fake_sysfs(tmp_path)
    result = _run(_env(root, EVSE_PWM_TIMEOUT="0", EVSE_PWM_GPIO="13"))
    assert result.returncode != 0
    assert (root / "pwmchip2" / "export").read_text() == "1\n"
    assert "did not appear" in result.stderr


def test_setup_fails_clearly_without_a_pwm_chip(tmp_path: Path) -> None:
    root = tmp_path / "class" / "pwm"
    root.mkdir(parents=True)
    result = _run(_env(root))
    assert result.returncode != 0
    assert "no control-pilot PWM chip" in result.stderr and "dtoverlay" in result.stderr


def test_setup_rejects_a_gpio_without_hardware_pwm(tmp_path: Path) -> None:
    root = _fake_sysfs(tmp_path)
    result = _run(_env(root, EVSE_PWM_GPIO="17"))
    assert result.returncode != 0
    assert "GPIO17 has no hardware PWM" in result.stderr
