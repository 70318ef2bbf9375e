"""Reaction time of the real control loop: event -> contactor-open command.

Runs the real ChargingController task on simulated hardware in one asyncio loop and measures,
with ``time.perf_counter``, how long it takes from the moment an event happens on the bench
(a fault input, the EV going C->B, the EV being unplugged) until the controller commands the
contactor open. Simulated time runs fast (``--speed``) only to shorten the waits *between*
events (the EV's request delay, the 300 ms F hold); the measured path is real time.

    .venv/bin/python bench/reaction.py [--events 1000] [--speed 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from collections.abc import Callable

from firmware.charging.connector import Status
from firmware.charging.controller import ChargingController, ControllerSettings
from firmware.limits.arbiter import Arbiter
from hal.clock import ScaledClock
from hal.sim import EVParams, SimBench


class Recorder:
    """Wraps the simulated contactor's command() to timestamp every open command."""

    def __init__(self, bench: SimBench) -> None:
        self.opened_at: float | None = None
        original = bench.contactor.command

        def command(closed: bool) -> None:
            if not closed and bench.contactor.commanded:
                self.opened_at = time.perf_counter()
            original(closed)

        bench.contactor.command = command  # type: ignore[method-assign]


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError("bench did not reach the expected state")
        await asyncio.sleep(0.0005)


async def measure(events: int, speed: float) -> dict[str, list[float]]:
    clock = ScaledClock(speed)
    bench = SimBench(clock, ev=EVParams(request_delay_s=1.0, current_onset_s=0.5))
    ctl = ChargingController(bench.hardware(), Arbiter(), clock, ControllerSettings(tick_s=0.005))
    rec = Recorder(bench)

    async def tick() -> None:
        while True:
            bench.tick()
            await asyncio.sleep(0.002)

    tasks = [asyncio.create_task(ctl.run()), asyncio.create_task(tick())]

    async def charging() -> None:
        if not bench.ev.plugged:
            bench.plug()
        bench.ev_request(True)
        await wait_for(lambda: ctl.connector.status in (Status.PREPARING, Status.SUSPENDED_EV, Status.CHARGING))
        if not ctl.connector.authorized:
            ctl.connector.authorize("BENCH")
            ctl.wake()
        await wait_for(lambda: bench.contactor.commanded and ctl.connector.status is Status.CHARGING)

    scenarios: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
        "fault (rcd) -> open": (lambda: bench.inject("rcd"), lambda: bench.clear("rcd")),
        "C->B -> open": (lambda: bench.ev_request(False), lambda: bench.ev_request(True)),
        "unplug -> open": (bench.unplug, bench.plug),
    }
    results: dict[str, list[float]] = {name: [] for name in scenarios}
    try:
        for name, (cause, undo) in scenarios.items():
            for _ in range(events):
                await charging()
                rec.opened_at = None
                t0 = time.perf_counter()
                cause()
                await wait_for(lambda: rec.opened_at is not None)
                assert rec.opened_at is not None
                results[name].append((rec.opened_at - t0) * 1000.0)
                undo()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return results


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    logging.disable(logging.CRITICAL)  # the measured path must not include log output
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1000, help="events per scenario (default 1000)")
    parser.add_argument("--speed", type=float, default=1000.0, help="simulated-time speed-up between events")
    args = parser.parse_args()
    started = time.perf_counter()
    results = asyncio.run(measure(args.events, args.speed))
    print(f"reaction time, event -> contactor-open command ({args.events} events each, real control loop, sim hw)")
    print(f"{'scenario':<22} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'mean ms':>8}")
    worst = 0.0
    for name, values in results.items():
        p99 = percentile(values, 99)
        worst = max(worst, p99)
        print(f"{name:<22} {percentile(values, 50):8.3f} {p99:8.3f} {max(values):8.3f} {statistics.fmean(values):8.3f}")
    print(f"worst p99 {worst:.3f} ms (goal <= 10 ms); run took {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
