"""Counts and latencies of the fleet's OCPP traffic, seen from the chargers (one shared recorder)."""

from __future__ import annotations

import math
from array import array
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of already sorted values; None for no values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class TrafficRecorder:
    """Implements the OCPP service's CallObserver for every charger of the fleet at once.

    Latencies live in ``array('d')`` (8 bytes each), not in Python floats: a five-minute run of a
    thousand chargers records tens of thousands of them.
    """

    sent: Counter[str] = field(default_factory=Counter)
    answered: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    csms_calls: Counter[str] = field(default_factory=Counter)
    latencies: defaultdict[str, array[float]] = field(default_factory=lambda: defaultdict(lambda: array("d")))

    # ---- CallObserver ---------------------------------------------------------------------
    def sent_call(self, action: str) -> None:
        self.sent[action] += 1

    def answered_call(self, action: str, latency_s: float) -> None:
        self.answered[action] += 1
        self.latencies[action].append(latency_s)

    def failed_call(self, action: str, kind: str) -> None:
        self.failures[f"{action}: {kind}"] += 1

    def received_call(self, action: str) -> None:
        self.csms_calls[action] += 1

    # ---- figures ------------------------------------------------------------------------
    def total_sent(self) -> int:
        return sum(self.sent.values())

    def latency_ms(self, action: str, since: int = 0) -> dict[str, float | None]:
        values = sorted(self.latencies[action][since:]) if action in self.latencies else []
        return {
            f"p{q}_ms": None if (v := percentile(values, q)) is None else round(v * 1000.0, 2) for q in (50, 90, 99)
        } | {"max_ms": round(values[-1] * 1000.0, 2) if values else None}

    def marks(self) -> dict[str, int]:
        """Where each latency series ends now: pass to :meth:`latency_ms` later for a window's figures."""
        return {action: len(values) for action, values in self.latencies.items()}

    def per_action(self) -> dict[str, dict[str, Any]]:
        actions = sorted(set(self.sent) | set(self.answered))
        table: dict[str, dict[str, Any]] = {}
        for action in actions:
            failed = sum(n for kind, n in self.failures.items() if kind.startswith(action + ": "))
            table[action] = {
                "sent": self.sent[action],
                "answered": self.answered[action],
                "failed": failed,
                **self.latency_ms(action),
            }
        return table


class ChargerObserver:
    """Adapts the shared recorder to one charger's OcppService (the service calls sent/answered/failed)."""

    __slots__ = ("recorder",)

    def __init__(self, recorder: TrafficRecorder) -> None:
        self.recorder = recorder

    def sent(self, action: str) -> None:
        self.recorder.sent_call(action)

    def answered(self, action: str, latency_s: float) -> None:
        self.recorder.answered_call(action, latency_s)

    def failed(self, action: str, kind: str) -> None:
        self.recorder.failed_call(action, kind)

    def received(self, action: str) -> None:
        self.recorder.received_call(action)
