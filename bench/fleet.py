"""Fleet bench: N chargers (default 1,000) in one process against a light central system in another.

    .venv/bin/python bench/fleet.py [--count 1000] [--duration 300] [--scenario FILE] [--outage-at S --outage-s S]

Prints the fleet's report (messages per action, CSMS latency percentiles, sessions, energy), the fleet
process's CPU % of one core and RSS (and per charger), and the central system's own per-action counts
beside the fleet's. ``--outage-at`` stops the central system (SIGSTOP) for ``--outage-s`` seconds mid-run:
the chargers' transaction messages then queue in their SQLite stores, and the RSS figures show whether
memory stayed bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from firmware.config import Settings  # noqa: E402
from firmware.fleet.runner import (  # noqa: E402
    Fleet,
    FleetOptions,
    format_report,
    progress_printer,
    rss_mb,
    setup_fleet_logging,
)
from firmware.fleet.scenario import load_scenario  # noqa: E402


async def run(args: argparse.Namespace) -> int:
    setup_fleet_logging()
    central = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "light_csms.py"), "--heartbeat", "60", "--sample-interval", "10"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert central.stdout is not None
    port = json.loads(central.stdout.readline())["port"]
    work = Path(tempfile.mkdtemp(prefix="evse-fleet-bench-"))
    try:
        scenario = load_scenario(args.scenario)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; RSS before chargers {rss_mb():.1f} MB")
        fleet = Fleet(
            Settings(),
            scenario,
            FleetOptions(count=args.count, url=f"ws://127.0.0.1:{port}/ocpp", duration_s=args.duration, work_dir=work),
        )
        print(f"{args.count} chargers built: RSS {fleet.rss_built_mb:.1f} MB")
        outage = None
        if args.outage_at is not None:

            async def stall() -> None:
                await asyncio.sleep(args.outage_at)
                print(f"\n-- central system stopped (SIGSTOP) for {args.outage_s:g} s", flush=True)
                central.send_signal(signal.SIGSTOP)
                await asyncio.sleep(args.outage_s)
                central.send_signal(signal.SIGCONT)
                print("\n-- central system continued", flush=True)

            outage = asyncio.create_task(stall())
        report = await fleet.run(progress=progress_printer(sys.stdout))
        if outage is not None:
            outage.cancel()
        print()
        print(format_report(report))
    finally:
        central.send_signal(signal.SIGCONT)
        central.terminate()
        out, _ = central.communicate(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    received = json.loads(out.strip().splitlines()[-1])["received"]
    print("\ncentral system received (fleet sent):")
    for action in sorted(set(received) | set(report["messages"])):
        sent = report["messages"].get(action, {}).get("sent", 0)
        print(f"  {action:<30}{received.get(action, 0):>8} ({sent})")
    print(json.dumps({"process": report["process"], "chargers": report["chargers"]}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--scenario", default=None)
    parser.add_argument("--outage-at", type=float, default=None)
    parser.add_argument("--outage-s", type=float, default=60.0)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
