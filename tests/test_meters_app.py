"""The daemon with real Modbus RTU meters (pymodbus over socat) beside simulated pilot and contactor."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from modbus_server import MeterServer, SocatPair

from firmware.app import ChargePointApp, demo_settings
from firmware.backends import unsupported
from firmware.config import MeterSettings, default_settings
from hal.meters import meter_map
from hal.meters.bus import DEFAULT_REGISTRY


@pytest.fixture
async def meters(tmp_path: Path) -> AsyncIterator[tuple[str, MeterServer]]:
    pair = SocatPair(tmp_path / "ctrl", tmp_path / "meter")
    server = MeterServer(tmp_path / "meter", {1: meter_map("sdm630"), 2: meter_map("em340")})
    await server.start()
    try:
        yield str(tmp_path / "ctrl"), server
    finally:
        await server.stop()
        pair.close()


async def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_charger_and_grid_meter_share_one_bus_and_feed_status_and_the_site_fuse(
    meters: tuple[str, MeterServer],
) -> None:
    port, server = meters
    for quantity, value in (("voltage_l1", 231.0), ("current_l1", 12.5), ("total_power", 2887.5)):
        server.set(1, quantity, value)
    server.set(1, "energy_import", 1234.567)
    for phase in (1, 2, 3):
        server.set(2, f"current_l{phase}", 20.0)
        server.set(2, f"voltage_l{phase}", 230.0)
    server.set(2, "energy_import", 99.0)
    work = Path(tempfile.mkdtemp(prefix="evse-mb-", dir="/tmp"))
    s = demo_settings(default_settings(), work)
    s = replace(
        s,
        meter=MeterSettings(model="sdm630", port=port, address=1),
        grid_meter=MeterSettings(model="em340", port=port, address=2),
        site=replace(s.site, fuse_a=35.0, margin_a=2.0),
    )
    assert unsupported(s) == []  # real meters run beside simulated pilot and contactor
    app = ChargePointApp(s, meter_interval_s=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        await until(lambda: app.sampler.latest is not None)
        status = app.status()["meter"]
        assert status["energy_wh"] == pytest.approx(1234567.0, abs=1.0)
        assert status["current_a"][0] == pytest.approx(12.5, abs=0.01)
        assert status["voltage_v"][0] == pytest.approx(231.0, abs=0.1)
        # Site fuse: 35 A - (20 A at the grid - 12.5 A of our own on L1) - 2 A = 25.5 A on L1; L2/L3 carry
        # 20 A of other load (the charger meter shows nothing there): 35 - 20 - 2 = 13 A decides.
        await until(lambda: app.arbiter.get("site") is not None and app.arbiter.get("site").current_a == 13.0)  # type: ignore[union-attr]
        server.set(2, "current_l2", 30.0)
        await until(lambda: app.arbiter.get("site").current_a == 3.0)  # type: ignore[union-attr]
        assert "other load 30.0 A (L2)" in app.arbiter.get("site").reason  # type: ignore[union-attr]
    finally:
        stop.set()
        await task
    assert port not in DEFAULT_REGISTRY._buses  # the last meter on the port gave the bus back
