"""Footprint of the daemon: RSS and CPU of ``evse run`` idling on simulated hardware.

Starts the real daemon (console script) with a private config, waits until its control socket
answers, then samples /proc/PID/status (VmRSS) and /proc/PID/stat (utime+stime) for the window.

    .venv/bin/python bench/footprint.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from firmware.apiclient import ApiClient, DaemonUnavailable


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="measuring window (default 60)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="evse-footprint-", dir="/tmp"))
    config = work / "config.toml"
    config.write_text(
        f'[hal]\nbackend = "sim"\n[store]\ndir = "{work}"\n[control]\nsocket = "{work}/control.sock"\n'
        '[auth]\nmode = "local"\n'
    )
    evse = shutil.which("evse", path=str(Path(sys.executable).parent)) or "evse"
    proc = subprocess.Popen([evse, "run", "--config", str(config)], stderr=subprocess.DEVNULL)
    try:
        client = ApiClient(str(work / "control.sock"), timeout=2.0)
        started = time.monotonic()
        while True:
            try:
                client.request("status")
                break
            except DaemonUnavailable:
                if proc.poll() is not None or time.monotonic() - started > 30:
                    print("daemon did not start", file=sys.stderr)
                    return 1
                time.sleep(0.1)
        startup_s = time.monotonic() - started
        time.sleep(2.0)  # let start-up work settle
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        peak = samples = total = 0
        while time.monotonic() - t0 < args.seconds:
            kib = rss_kib(proc.pid)
            peak, total, samples = max(peak, kib), total + kib, samples + 1
            time.sleep(1.0)
        cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0) * 100.0
        print(f"evse run, idle on simulated hardware, {args.seconds:.0f} s window (start-up {startup_s:.2f} s)")
        print(f"RSS   peak {peak / 1024:.1f} MB, mean {total / samples / 1024:.1f} MB (goal <= 40 MB)")
        print(f"CPU   {cpu:.2f} % of one core (goal <= 0.5 %)")
        return 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
