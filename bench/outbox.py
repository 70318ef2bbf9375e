"""Replay rate of the durable OCPP outbox vs. the raw rate of the ``ocpp`` package.

After an offline period the charger has a backlog of transaction-related messages on disk
(StartTransaction, many MeterValues, StopTransaction) that must be replayed to the CSMS in order.
This bench measures how fast that backlog drains over a real OCPP 1.6J websocket, and compares it
with what the ``ocpp`` package alone can do over the same connection:

1. **enqueue**: a fresh :class:`~firmware.store.Store` (WAL, ``synchronous=FULL``) in a temp dir, one
   transaction begun, then 1 StartTransaction + (N-2) MeterValues + 1 StopTransaction enqueued — one
   durable commit (fsync) per message, as the firmware does. Reported in messages/s.
2. **replay**: a charge point (the firmware's own ``CentralSystemLink``, an ``ocpp.v16.ChargePoint``)
   connects to the test central system (``tests/csms/central.py``, in this process, ``delay`` = 0) and
   drains the outbox exactly like ``OcppService._send_queued``: ``next_due`` → payload built with
   ``snake_keys`` → ``mark_sent`` → ``call(suppress=False)`` → ``delivered``. Timed from the
   first ``next_due`` to the empty queue. Also broken down per step.
3. **raw**: another connection sends the same number of MeterValues CALLs back to back with
   ``ChargePoint.call(suppress=False)``, no store involved (payloads built before the clock starts).

Both measurements use the ``ocpp`` package's default schema validation (``skip_schema_validation``
False on both sides, central system included), the same payload shape and the same central system.
Raw and replay alternate for ``--rounds`` rounds (fresh store and connection each) and the medians
are reported, so that background load drifting during the run hits both alike. The ratio replay/raw
should be ≥ 0.8. With ``--profile`` (or automatically when the ratio is below
0.8) the replay is run once more under cProfile and the top functions are printed.

    .venv/bin/python bench/outbox.py [--messages 10000] [--rounds 3] [--dir /path/on/the/real/disk] [--profile]

Note: ``--dir`` decides what an fsync costs; the default is the system temp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for extra in (ROOT, ROOT / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from csms.central import TestCentralSystem  # noqa: E402
from ocpp.charge_point import camel_to_snake_case, snake_to_camel_case  # noqa: E402
from ocpp.v16 import ChargePoint, call  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from firmware.ocpp.outbox import Outbox  # noqa: E402
from firmware.ocpp.v16.link import CentralSystemLink  # noqa: E402
from firmware.ocpp.v16.meter_values import iso  # noqa: E402
from firmware.ocpp.v16.meter_values import meter_value as encode_meter_value  # noqa: E402
from firmware.ocpp.v16.service import snake_keys  # noqa: E402
from firmware.store import Store  # noqa: E402
from hal.interfaces import MeterReading  # noqa: E402

CONNECTOR = 1
ID_TAG = "BENCH-TAG-0001"
STARTED = datetime(2025, 1, 1, 8, 0, tzinfo=UTC)


MEASURANDS = ("Energy.Active.Import.Register", "Power.Active.Import", "Current.Import")


def meter_value(i: int) -> dict[str, Any]:
    """One realistic MeterValue, built by the firmware's own encoder: energy register, power, 3 phase currents."""
    amps = 16.0 + (i % 7) * 0.01
    reading = MeterReading(
        voltage_v=(230.0, 230.0, 230.0),
        current_a=(amps, amps, amps),
        power_w=(230.0 * amps,) * 3,
        total_power_w=3 * 230.0 * amps,
        energy_import_wh=1000.0 + 183.9 * i,
    )
    value = encode_meter_value(reading, MEASURANDS, STARTED + timedelta(seconds=60 * i))
    assert value is not None
    return value


def fill(outbox: Outbox, n: int) -> float:
    """Begin one transaction and enqueue Start + (n-2) MeterValues + Stop; returns the seconds taken."""
    t0 = time.perf_counter()
    ref = outbox.begin_transaction(CONNECTOR, ID_TAG, 1000.0, STARTED)
    outbox.enqueue(
        "StartTransaction",
        {"connectorId": CONNECTOR, "idTag": ID_TAG, "meterStart": 1000, "timestamp": iso(STARTED)},
        transaction_ref=ref,
    )
    for i in range(1, n - 1):
        outbox.enqueue(
            "MeterValues",
            {"connectorId": CONNECTOR, "transactionId": 0, "meterValue": [meter_value(i)]},
            transaction_ref=ref,
        )
    stopped = STARTED + timedelta(seconds=60 * n)
    outbox.end_transaction(ref, 1000.0 + 183.9 * n, stopped, "EVDisconnected")
    outbox.enqueue(
        "StopTransaction",
        {
            "transactionId": 0,
            "meterStop": round(1000.0 + 183.9 * n),
            "timestamp": iso(stopped),
            "reason": "EVDisconnected",
            "idTag": ID_TAG,
        },
        transaction_ref=ref,
    )
    return time.perf_counter() - t0


class Steps:
    """Accumulated wall time per step of the send loop."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def table(self, total: float, n: int) -> list[str]:
        lines = []
        for name, s in self.seconds.items():
            lines.append(f"    {name:<22} {s * 1e6 / n:8.1f} µs/msg  {100 * s / total:5.1f} %")
        return lines


async def drain(link: ChargePoint, outbox: Outbox, steps: Steps) -> int:
    """Send the queue the way ``OcppService._send_queued`` does, until it is empty; returns messages sent."""
    sent = 0
    pc = time.perf_counter
    acc = steps.seconds
    while True:
        t0 = pc()
        msg = outbox.next_due()
        t1 = pc()
        acc["next_due"] += t1 - t0
        if msg is None:
            break
        payload_type = getattr(call, msg.action)
        payload = payload_type(**snake_keys(msg.payload))
        t2 = pc()
        acc["build payload"] += t2 - t1
        outbox.mark_sent(msg.id)
        t3 = pc()
        acc["mark_sent"] += t3 - t2
        result = await link.call(payload, suppress=False)
        t4 = pc()
        acc["call (ocpp + CSMS)"] += t4 - t3
        response = snake_to_camel_case(dataclasses.asdict(result))
        if not outbox.delivered(msg.id, response):
            raise RuntimeError(f"message #{msg.id} was not queued any more")
        acc["delivered"] += pc() - t4
        sent += 1
    return sent


async def replay(
    csms: TestCentralSystem, workdir: Path, n: int, name: str, profile: cProfile.Profile | None = None
) -> tuple[float, float, Steps]:
    """Fill a fresh store with n messages and drain it; returns (enqueue seconds, replay seconds, steps)."""
    store = Store(workdir / f"{name}.sqlite")
    try:
        outbox = Outbox(store)
        enqueue_s = fill(outbox, n)
        assert len(outbox) == n
        async with connect(f"{csms.url}/{name}", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
            # The firmware's own ChargePoint subclass; its handlers (CSMS-initiated CALLs) are not used here.
            link = CentralSystemLink(name, ws, service=None, response_timeout=30.0)  # type: ignore[arg-type]
            receiver = asyncio.create_task(link.start())
            try:
                steps = Steps()
                if profile is not None:
                    profile.enable()
                t0 = time.perf_counter()
                sent = await drain(link, outbox, steps)
                replay_s = time.perf_counter() - t0
                if profile is not None:
                    profile.disable()
            finally:
                receiver.cancel()
                await asyncio.gather(receiver, return_exceptions=True)
        if sent != n or len(outbox) != 0 or outbox.dead_letters():
            raise RuntimeError(f"replay incomplete: sent {sent} of {n}, {len(outbox)} left")
        return enqueue_s, replay_s, steps
    finally:
        store.close()


async def raw(csms: TestCentralSystem, n: int, name: str, transaction_id: int) -> float:
    """n MeterValues CALLs back to back with the plain ocpp package; returns the seconds taken."""
    # Build the payloads the same way the replay does (camelCase dict -> snake_case dataclass), but up front.
    payloads = [
        call.MeterValues(
            **camel_to_snake_case(
                {"connectorId": CONNECTOR, "transactionId": transaction_id, "meterValue": [meter_value(i)]}
            )
        )
        for i in range(1, n + 1)
    ]
    async with connect(f"{csms.url}/{name}", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
        cp = ChargePoint(name, ws, response_timeout=30.0)
        receiver = asyncio.create_task(cp.start())
        try:
            t0 = time.perf_counter()
            for payload in payloads:
                await cp.call(payload, suppress=False)
            return time.perf_counter() - t0
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)


def top_functions(profile: cProfile.Profile, limit: int = 25) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(limit)
    out.write("\n--- cumulative, outbox/store functions ---\n")
    stats.sort_stats("cumulative").print_stats(r"firmware/(ocpp/outbox|store)\.py")
    return out.getvalue()


async def main_async(args: argparse.Namespace) -> int:
    n = args.messages
    if n < 3:
        raise SystemExit("--messages must be at least 3 (Start + MeterValues + Stop)")
    csms = TestCentralSystem()
    assert csms.delay == 0 and not csms.stall
    base = Path(args.dir) if args.dir else None
    with tempfile.TemporaryDirectory(prefix="bench-outbox-", dir=base) as tmp:
        workdir = Path(tmp)
        async with csms:
            # Warm-up: first-call costs (schema loading, validator caches) out of the way.
            await raw(csms, min(200, n), "WARMUP-RAW", 1)
            await replay(csms, workdir, min(200, n), "WARMUP-REPLAY")

            # Alternate the two measurements so that drifting background load hits both alike; medians count.
            raw_runs: list[float] = []
            replay_runs: list[float] = []
            enqueue_runs: list[float] = []
            steps = Steps()
            for r in range(args.rounds):
                raw_runs.append(await raw(csms, n, f"BENCH-RAW-{r}", 1))
                enqueue_s, replay_s, round_steps = await replay(csms, workdir, n, f"BENCH-REPLAY-{r}")
                enqueue_runs.append(enqueue_s)
                replay_runs.append(replay_s)
                for name, secs in round_steps.seconds.items():
                    steps.seconds[name] += secs
                print(
                    f"  round {r + 1}/{args.rounds}: raw {n / raw_runs[-1]:.1f} msg/s, "
                    f"replay {n / replay_s:.1f} msg/s, enqueue {n / enqueue_s:.1f} msg/s",
                    flush=True,
                )

            raw_s = statistics.median(raw_runs)
            replay_s = statistics.median(replay_runs)
            enqueue_s = statistics.median(enqueue_runs)
            raw_rate = n / raw_s
            replay_rate = n / replay_s
            enqueue_rate = n / enqueue_s
            ratio = replay_rate / raw_rate

            def spread(runs: list[float]) -> str:
                return f"{n / max(runs):.0f}-{n / min(runs):.0f}"

            print()
            print(f"outbox bench: {n} messages x {args.rounds} rounds (median), store in {workdir} (synchronous=FULL)")
            print(
                f"central system {csms.url} in this process (delay 0); python {sys.version.split()[0]}; "
                f"ocpp schema validation: package default (on) in both; load avg {os.getloadavg()[0]:.2f}"
            )
            print()
            print(f"  {'measurement':<34} {'msgs':>7} {'seconds':>9} {'msg/s':>9} {'range msg/s':>13}")
            print(f"  {'-' * 34} {'-' * 7} {'-' * 9} {'-' * 9} {'-' * 13}")
            print(f"  {'raw ocpp ChargePoint.call':<34} {n:>7} {raw_s:>9.3f} {raw_rate:>9.1f} {spread(raw_runs):>13}")
            print(
                f"  {'outbox replay (_send_queued path)':<34} {n:>7} {replay_s:>9.3f} {replay_rate:>9.1f} "
                f"{spread(replay_runs):>13}"
            )
            print(
                f"  {'enqueue (durable, fsync each)':<34} {n:>7} {enqueue_s:>9.3f} {enqueue_rate:>9.1f} "
                f"{spread(enqueue_runs):>13}"
            )
            print()
            verdict = "OK" if ratio >= 0.8 else "BELOW GOAL"
            print(f"  ratio replay/raw = {ratio:.3f}  (goal >= 0.8: {verdict})")
            print()
            total = sum(replay_runs)
            print(f"  replay time per step (all {args.rounds} rounds):")
            for line in steps.table(total, n * args.rounds):
                print(line)

            if args.profile or ratio < 0.8:
                prof = cProfile.Profile()
                await replay(csms, workdir, n, "BENCH-PROFILE", profile=prof)
                print()
                print("cProfile of one more replay (all code on the event loop, central system included):")
                print(top_functions(prof))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10000, help="queued messages (Start + MeterValues + Stop)")
    parser.add_argument("--dir", default=None, help="directory for the SQLite file (default: system temp dir)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating raw/replay rounds; medians reported")
    parser.add_argument("--profile", action="store_true", help="also profile the replay with cProfile")
    args = parser.parse_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
