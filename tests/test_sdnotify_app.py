"""The daemon speaks sd_notify: READY=1 after its first (safe) control step, WATCHDOG=1 while it steps, STOPPING=1."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

from firmware.app import ChargePointApp, demo_settings
from firmware.config import default_settings


async def test_ready_watchdog_and_stopping_reach_the_notify_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    work = Path(tempfile.mkdtemp(prefix="evse-sd-", dir="/tmp"))
    settings = demo_settings(default_settings(), work)
    app = ChargePointApp(replace(settings, auth=replace(settings.auth, mode="free")))
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    received: list[str] = []

    async def collect(seconds: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            try:
                received.append(sock.recv(4096).decode())
            except BlockingIOError:
                await asyncio.sleep(0.01)

    try:
        await collect(0.5)
        assert received.index("READY=1") > received.index("STATUS=charge point CP-0001 running")
        assert received.count("WATCHDOG=1") >= 3
    finally:
        stop.set()
        await task
        await collect(0.05)
        sock.close()
    assert "STOPPING=1" in received
    assert received.index("STOPPING=1") > received.index("READY=1")
