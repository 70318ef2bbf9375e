"""``evse fleet``: N real charge points on simulated hardware in one process and one event loop.

One loop was measured against the alternatives: a charger idles at well under a millisecond of CPU per
second, so a thousand fit in one core's budget, and one process keeps the report exact (one recorder, no
merging). Each charger's log lines carry its id through a context variable set around its tasks.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from firmware.aio import wait_event
from firmware.config import Settings
from firmware.fleet.charger import FleetCharger, charger_settings
from firmware.fleet.scenario import Scenario
from firmware.fleet.stats import TrafficRecorder

log = logging.getLogger("firmware.fleet")
CHARGER_ID: contextvars.ContextVar[str] = contextvars.ContextVar("charger_id", default="-")


class ChargerIdFilter(logging.Filter):
    """Puts the charger's id on every record logged from that charger's tasks."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.charger_id = CHARGER_ID.get()
        return True


def setup_fleet_logging(level: int = logging.WARNING) -> None:
    """Warnings and worse to stderr, each line with the id of the charger it came from."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ChargerIdFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(charger_id)s] %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def rss_mb() -> float:
    """Resident set size now (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class FleetOptions:
    count: int
    url: str
    id_prefix: str = "CP-"
    duration_s: float = 300.0
    work_dir: Path = Path("fleet-work")
    progress_s: float = 2.0


class Fleet:
    def __init__(self, base: Settings, scenario: Scenario, options: FleetOptions) -> None:
        if options.count < 1:
            raise ValueError("count must be at least 1")
        self.options = options
        self.scenario = scenario
        self.recorder = TrafficRecorder()
        width = max(4, len(str(options.count)))
        self.chargers: list[FleetCharger] = []
        rss_before = rss_mb()
        for index in range(options.count):
            charger_id = f"{options.id_prefix}{index + 1:0{width}d}"
            store_dir = options.work_dir / charger_id
            store_dir.mkdir(parents=True, exist_ok=True)
            settings = charger_settings(base, charger_id, options.url, store_dir)
            self.chargers.append(FleetCharger(index, settings, scenario, self.recorder))
        self.rss_start_mb = rss_before
        self.rss_built_mb = rss_mb()
        self.peak_rss_mb = self.rss_built_mb
        self.started_at = 0.0
        self.cpu_start = 0.0

    # ---- figures ------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {
            "connected": sum(c.connected for c in self.chargers),
            "booted": sum(c.booted for c in self.chargers),
            "charging": sum(c.charging for c in self.chargers),
            "queued": sum(c.queued for c in self.chargers),
            "sent": self.recorder.total_sent(),
            "failures": sum(self.recorder.failures.values()),
        }

    def report(self, elapsed_s: float, cpu_used_s: float, snap: dict[str, Any]) -> dict[str, Any]:
        """``snap`` is the state at the end of the run, taken before the chargers stopped."""
        n = len(self.chargers)
        sessions_completed = sum(c.counts.sessions_completed for c in self.chargers)
        energy_wh = sum(c.counts.energy_wh for c in self.chargers)
        expected = {a: self.recorder.csms_calls[a] for a in self.scenario.expect_csms_actions}
        return {
            "chargers": n,
            "duration_s": round(elapsed_s, 1),
            "url": self.options.url,
            "end": snap,
            "messages": self.recorder.per_action(),
            "messages_sent_total": self.recorder.total_sent(),
            "failures": dict(sorted(self.recorder.failures.items())),
            "csms_calls": dict(sorted(self.recorder.csms_calls.items())),
            "expected_csms_actions_missing": sorted(a for a, seen in expected.items() if seen == 0),
            "sessions": {
                "arrivals": sum(c.counts.arrivals for c in self.chargers),
                "rejected": sum(c.counts.rejected for c in self.chargers),
                "started": sum(c.counts.sessions_started for c in self.chargers),
                "completed": sessions_completed,
                "energy_kwh": round(energy_wh / 1000.0, 3),
            },
            "process": {
                "cpu_percent": round(100.0 * cpu_used_s / elapsed_s, 1) if elapsed_s > 0 else None,
                "rss_mb": round(rss_mb(), 1),
                "peak_rss_mb": round(self.peak_rss_mb, 1),
                "rss_before_chargers_mb": round(self.rss_start_mb, 1),
                "rss_per_charger_mb": round((self.peak_rss_mb - self.rss_start_mb) / n, 3),
            },
        }

    # ---- running ------------------------------------------------------------------------------
    async def run(
        self, stop: asyncio.Event | None = None, progress: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """Run for ``duration_s`` (or until ``stop``), then stop every charger safely and report."""
        stop = stop or asyncio.Event()
        tasks = []
        for charger in self.chargers:
            context = contextvars.copy_context()
            context.run(CHARGER_ID.set, charger.id)
            delay = self.scenario.boot_delay_s(charger.rng)
            tasks.append(asyncio.create_task(charger.run(stop, delay), name=f"{charger.id}-run", context=context))
        self.started_at = time.monotonic()
        self.cpu_start = cpu_s()
        deadline = self.started_at + self.options.duration_s
        last = (self.started_at, self.recorder.total_sent(), self.recorder.marks())
        try:
            while not stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if await wait_event(stop, min(self.options.progress_s, remaining)):
                    break
                failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
                if failed:
                    raise RuntimeError(f"charger task {failed[0].get_name()} failed") from failed[0].exception()
                self.peak_rss_mb = max(self.peak_rss_mb, rss_mb())
                now = time.monotonic()
                sent = self.recorder.total_sent()
                if progress is not None:
                    window = {a: self.recorder.latency_ms(a, since=last[2].get(a, 0)) for a in self.recorder.latencies}
                    progress(
                        self.snapshot()
                        | {
                            "elapsed_s": now - self.started_at,
                            "msgs_per_s": (sent - last[1]) / max(now - last[0], 1e-6),
                            "latency": window,
                        }
                    )
                last = (now, sent, self.recorder.marks())
        finally:
            self.peak_rss_mb = max(self.peak_rss_mb, rss_mb())
            elapsed, cpu_used = time.monotonic() - self.started_at, cpu_s() - self.cpu_start
            end = self.snapshot()
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        return self.report(elapsed, cpu_used, end)


def progress_printer(stream: TextIO = sys.stderr) -> Callable[[dict[str, Any]], None]:
    """One status line per update: rewritten in place on a terminal, appended otherwise."""
    tty = stream.isatty()

    def show(p: dict[str, Any]) -> None:
        lat = p["latency"]
        worst = sorted(
            ((a, v["p50_ms"], v["p99_ms"]) for a, v in lat.items() if v["p50_ms"] is not None),
            key=lambda x: -(x[2] or 0),
        )[:3]
        latency = " ".join(f"{a} {p50:.0f}/{p99:.0f}ms" for a, p50, p99 in worst)
        line = (
            f"{p['elapsed_s']:6.0f}s connected {p['connected']} booted {p['booted']} charging {p['charging']} "
            f"queued {p['queued']} | {p['msgs_per_s']:.0f} msg/s | p50/p99 {latency or '-'} | errors {p['failures']}"
        )
        stream.write(("\r\x1b[K" + line) if tty else line + "\n")
        stream.flush()

    return show


def format_report(report: dict[str, Any]) -> str:
    """The report as a text table for the terminal (the JSON carries the same figures)."""
    lines = [
        f"fleet: {report['chargers']} chargers for {report['duration_s']:.0f} s against {report['url']}",
        "",
        f"{'action':<32}{'sent':>8}{'answered':>10}{'failed':>8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}",
    ]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    for action, row in report["messages"].items():
        lines.append(
            f"{action:<32}{row['sent']:>8}{row['answered']:>10}{row['failed']:>8}"
            f"{ms(row['p50_ms']):>9}{ms(row['p90_ms']):>9}{ms(row['p99_ms']):>9}{ms(row['max_ms']):>9}"
        )
    lines.append(f"{'total':<32}{report['messages_sent_total']:>8}")
    s = report["sessions"]
    lines += [
        "",
        f"sessions: {s['arrivals']} arrivals, {s['rejected']} refused, {s['started']} started, "
        f"{s['completed']} completed, {s['energy_kwh']:.1f} kWh delivered",
    ]
    if report["csms_calls"]:
        lines.append("from the CSMS: " + ", ".join(f"{a} {n}" for a, n in report["csms_calls"].items()))
    if report["expected_csms_actions_missing"]:
        lines.append("expected from the CSMS but never seen: " + ", ".join(report["expected_csms_actions_missing"]))
    failures = report["failures"]
    lines.append("failures: " + (", ".join(f"{k} x{n}" for k, n in failures.items()) if failures else "none"))
    p = report["process"]
    lines.append(
        f"process: {p['cpu_percent']} % of one core, RSS {p['rss_mb']} MB (peak {p['peak_rss_mb']} MB), "
        f"{p['rss_per_charger_mb']} MB per charger"
    )
    return "\n".join(lines)


def default_work_dir() -> Path:
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"evse-fleet-{os.getpid()}"
