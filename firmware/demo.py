"""``evse demo``: one whole charging session on simulated hardware, shown live.

A scripted driver plugs in, taps a card, the site asks for less current for a while, the driver
taps again to stop and unplugs. Time runs ``--speed`` times faster than real time so half an
hour of charging takes half a minute. Needs no CSMS and no config file.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

from firmware.app import ChargePointApp, demo_settings
from firmware.config import ConfigError, Settings, default_settings, find_config, load_settings
from hal.clock import ScaledClock
from hal.sim import SimBench

DEMO_CARD = "04A1B2C3D4E5F6"


def bench(app: ChargePointApp) -> SimBench:
    if app.sim is None:
        raise RuntimeError("the demo needs simulated hardware")
    return app.sim


@dataclass(frozen=True)
class Step:
    at_s: float
    caption: str
    action: Callable[[ChargePointApp], None]


def script(minutes: float, card: str | None) -> list[Step]:
    end = minutes * 60.0

    def tap(app: ChargePointApp) -> None:
        assert card is not None
        bench(app).tap(bytes.fromhex(card))

    def cap(app: ChargePointApp) -> None:
        app.arbiter.submit("manual", 16.0, app.clock.monotonic(), reason="demo: the site asks for 16 A")

    def uncap(app: ChargePointApp) -> None:
        app.arbiter.withdraw("manual")

    steps = [Step(5.0, "driver plugs the EV in", lambda app: bench(app).plug())]
    if card is not None:
        steps.append(Step(20.0, f"driver taps card {card}", tap))
    steps += [
        Step(end * 0.4, "site limit: 16 A (manual claim)", cap),
        Step(end * 0.7, "site limit lifted", uncap),
    ]
    if card is not None:
        steps.append(Step(end, f"driver taps card {card} again to stop", tap))
    steps.append(Step(end + 30.0, "driver unplugs the EV", lambda app: bench(app).unplug()))
    return steps


class _SimTimeFormatter(logging.Formatter):
    def __init__(self, clock: ScaledClock, t0: float, erase: str) -> None:
        super().__init__()
        self.clock, self.t0, self.erase = clock, t0, erase

    def format(self, record: logging.LogRecord) -> str:
        return f"{self.erase}[{_hms(self.clock.monotonic() - self.t0)}] {record.getMessage()}"


def _hms(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _live_line(app: ChargePointApp, elapsed: float) -> str:
    st = app.status()
    meter = st.get("meter") or {}
    tx = st.get("transaction") or {}
    sim = st.get("sim") or {}
    energy = tx.get("energy_wh")
    return (
        f"[{_hms(elapsed)}] {st['state']} {st['connector_status']:<13} contactor {st['contactor']:<6} "
        f"offered {st['offered_a']:4.1f} A  draw {sim.get('draw_a', 0.0):4.1f} A  "
        f"power {meter.get('power_w', 0.0) / 1000:5.1f} kW  "
        f"session {0.0 if energy is None else energy / 1000:6.2f} kWh  SoC {sim.get('soc_percent', 0.0):4.1f} %"
    )


async def run_demo(settings: Settings, speed: float, minutes: float, out: TextIO) -> int:
    clock = ScaledClock(speed)
    card = DEMO_CARD if settings.auth.mode == "local" else None
    app = ChargePointApp(settings, clock=clock, sim_tick_s=0.02, meter_interval_s=0.1, control_tick_s=0.02)
    t0 = clock.monotonic()
    tty = out.isatty()
    erase = "\r\x1b[K" if tty else ""  # rewrite the live line on a terminal only
    handler = logging.StreamHandler(out)
    handler.setFormatter(_SimTimeFormatter(clock, t0, erase))
    handler.setLevel(logging.INFO)
    handler.addFilter(lambda r: r.name.startswith("firmware"))
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    stop = asyncio.Event()
    runner = asyncio.create_task(app.run(stop, serve_api=True))
    soc_start = bench(app).ev.soc_percent
    print(
        f"evse demo: charge point {settings.charger.id}, simulated hardware, time x{speed:g}, "
        f"auth mode {settings.auth.mode}",
        file=out,
    )
    try:
        pending = script(minutes, card)
        last_print = -1e9
        while pending or app.controller.connector.status.value != "Available":
            await asyncio.sleep(0.05)
            if runner.done():
                break
            elapsed = clock.monotonic() - t0
            while pending and elapsed >= pending[0].at_s:
                step = pending.pop(0)
                print(f"{erase}[{_hms(elapsed)}] >>> {step.caption}", file=out)
                step.action(app)
            if tty:
                print(erase + _live_line(app, elapsed), end="", file=out, flush=True)
            elif elapsed - last_print >= 120:
                print(_live_line(app, elapsed), file=out)
                last_print = elapsed
            if elapsed > minutes * 60 + 600:
                print("\ndemo: the session did not finish in time", file=out)
                break
        await asyncio.sleep(0.3)
        await app.sessions.drain()
    finally:
        stop.set()
        await runner
        logging.getLogger().removeHandler(handler)
    return _summary(app, soc_start, out, erase)


def _summary(app: ChargePointApp, soc_start: float, out: TextIO, erase: str) -> int:
    print(erase, file=out)
    if not app.sessions.history:
        print("demo: no session was completed", file=out)
        return 1
    record = app.sessions.history[-1]
    energy = record.energy_wh()
    duration = record.duration_s(app.clock.now())
    print("Session summary", file=out)
    rows = [
        ("id tag", record.id_tag),
        ("duration", _hms(duration)),
        ("meter start/stop", f"{record.meter_start_wh or 0:.1f} Wh / {record.meter_stop_wh or 0:.1f} Wh"),
        ("energy delivered", f"{0 if energy is None else energy / 1000:.3f} kWh"),
        ("highest current", f"{record.max_current_a:.1f} A"),
        ("EV state of charge", f"{soc_start:.1f} % -> {bench(app).ev.soc_percent:.1f} %"),
        ("stop reason", str(record.stop_reason)),
    ]
    for label, value in rows:
        print(f"  {label:<19} {value}", file=out)
    return 0 if energy else 1


def main(args: argparse.Namespace) -> int:
    path = find_config(getattr(args, "config", None))
    try:
        settings = load_settings(path) if path is not None else default_settings()
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 2
    speed = float(getattr(args, "speed", 60.0))
    minutes = float(getattr(args, "minutes", 30.0))
    if speed <= 0 or minutes <= 0:
        print("demo: --speed and --minutes must be positive", file=sys.stderr)
        return 2
    if settings.auth.mode == "ocpp":
        settings = replace(settings, auth=replace(settings.auth, mode="local"))
    if settings.auth.mode == "local" and DEMO_CARD not in settings.auth.allowlist:
        settings = replace(settings, auth=replace(settings.auth, allowlist=(*settings.auth.allowlist, DEMO_CARD)))
    with tempfile.TemporaryDirectory(prefix="evse-demo-", dir="/tmp") as work:
        settings = demo_settings(settings, Path(work))
        return asyncio.run(run_demo(settings, speed, minutes, sys.stdout))
