"""The shared fuse as the daemon wires it from [sharing]: two whole charge points on one real mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from mqtt_broker import Mosquitto, running_broker

from firmware import cli
from firmware.app import ChargePointApp, demo_settings
from firmware.config import default_settings
from hal.clock import ScaledClock

SPEED = 10.0


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with running_broker(tmp_path) as b:
        yield b


def charge_point(name: str, port: int, clock: ScaledClock) -> ChargePointApp:
    work = Path(tempfile.mkdtemp(prefix=f"evse-share-{name}-", dir="/tmp"))
    s = demo_settings(default_settings(), work)
    s = replace(
        s,
        charger=replace(s.charger, id=name),
        auth=replace(s.auth, mode="free"),
        sharing=replace(s.sharing, broker=f"mqtt://127.0.0.1:{port}", group="test/fuse", fuse_a=20.0, margin_a=1.0),
    )
    return ChargePointApp(s, clock=clock, sim_tick_s=0.01, meter_interval_s=0.02, control_tick_s=0.025)


async def until(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_two_daemons_share_one_fuse_and_a_leaver_frees_its_share(
    broker: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = ScaledClock(SPEED)
    a, b = charge_point("CP-A", broker.port, clock), charge_point("CP-B", broker.port, clock)
    stops = {"a": asyncio.Event(), "b": asyncio.Event()}
    tasks = [asyncio.create_task(a.run(stops["a"])), asyncio.create_task(b.run(stops["b"]))]
    try:
        assert a.sim is not None and b.sim is not None
        a.sim.plug()
        await until(lambda: a.controller.offered_a == 19.0)  # alone: the fuse minus the margin
        b.sim.plug()
        # Both charge, on equal shares that together fit 20 A - 1 A.
        await until(lambda: a.controller.offered_a == b.controller.offered_a == 9.5)
        assert a.sim.ev.draw_a + b.sim.ev.draw_a <= 19.0 + 1e-9

        assert await asyncio.to_thread(cli.main, ["limits", "--json", "--socket", a.settings.control.socket]) == 0
        limits = json.loads(capsys.readouterr().out)
        assert limits["winner"]["source"] == "shared"
        shared = limits["sources"]["shared"]
        assert shared["connected"] is True
        assert [m["charger_id"] for m in shared["members"]] == ["CP-B"]  # the others, as this charger sees them

        # B shuts down cleanly: it pauses its EV, says "left", and A may take the whole fuse again.
        stops["b"].set()
        await tasks[1]
        assert b.sim.ev.draw_a == 0.0
        await until(lambda: a.controller.offered_a == 19.0)
    finally:
        for stop in stops.values():
            stop.set()
        for task in tasks:
            with contextlib.suppress(Exception):
                await task
