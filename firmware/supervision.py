"""Duties a real pilot/relay board adds to the control loop: the watchdog latch and the RCD self-test.

Python must never be the only thing between a fault and an open contactor: the board's watchdog latch drops the
relay unless it is kicked, and it is kicked only while the control loop keeps stepping. The RCD / 6 mA DC module is
tested before each session; while the test runs a 0 A claim keeps the contactor open, and a failed test is a trip
fault that stands until the daemon restarts: a broken RCD needs a technician, not a retry. Typed against a small
Protocol so the firmware never imports a hal backend.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from firmware.charging.connector import Status, StatusChanged
from firmware.charging.controller import HEALTHY_S, ChargingController, ControllerEvent
from firmware.limits.arbiter import Arbiter
from hal.clock import Clock

log = logging.getLogger("firmware.supervision")

CLAIM = "rcd-test"
FAULT = "rcd-selftest"


class SelfTest(Protocol):
    @property
    def passed(self) -> bool: ...

    @property
    def reason(self) -> str: ...


class Watchdog(Protocol):
    def kick(self) -> None: ...


class RcdModule(Protocol):
    def self_test(self) -> SelfTest: ...


class Board(Protocol):
    @property
    def watchdog(self) -> Watchdog: ...

    @property
    def rcd(self) -> RcdModule: ...

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None: ...

    def close(self) -> None: ...


class BoardSupervisor:
    def __init__(
        self,
        board: Board,
        controller: ChargingController,
        arbiter: Arbiter,
        clock: Clock,
        *,
        kick_s: float,
        rcd_test: bool = True,
    ) -> None:
        self.board = board
        self.controller = controller
        self.arbiter = arbiter
        self.clock = clock
        self.kick_s = kick_s
        self.rcd_test = rcd_test
        self.kicks = 0
        self._tests: set[asyncio.Task[bool]] = set()
        controller.add_listener(self._on_event)

    def start(self) -> None:
        """Prime the pilot ADC and start sampling: before the control loop's first step reads the pilot."""
        self.board.start()

    async def run(self) -> None:
        """Kick the latch while the control loop is healthy (then stop kicking: the board drops the relay)."""
        kicking = False
        while True:
            healthy = self.controller.healthy()
            if healthy:
                self.board.watchdog.kick()
                self.kicks += 1
            elif kicking:  # once per stall, not every kick period
                log.critical("control loop silent for over %.1f s: watchdog latch no longer kicked", HEALTHY_S)
            kicking = healthy
            await asyncio.sleep(self.kick_s)

    def _on_event(self, event: ControllerEvent) -> None:
        if self.rcd_test and isinstance(event, StatusChanged) and event.status is Status.PREPARING:
            task = asyncio.get_running_loop().create_task(self.test_rcd())
            self._tests.add(task)
            task.add_done_callback(self._tests.discard)

    async def test_rcd(self) -> bool:
        """Self-test before a session: hold the current at 0 A meanwhile; a failure trips the charger."""
        self.arbiter.submit(CLAIM, 0.0, self.clock.monotonic(), reason="RCD self-test before the session")
        try:
            result = await asyncio.to_thread(self.board.rcd.self_test)
        except Exception as exc:
            log.error("RCD self-test could not run: %s", exc)
            self.controller.set_device_fault(FAULT, True)
            return False
        finally:
            self.arbiter.withdraw(CLAIM)
        if not result.passed:
            log.error("RCD self-test failed: %s", result.reason)
            self.controller.set_device_fault(FAULT, True)
            return False
        log.info("RCD self-test passed: %s", result.reason)
        self.controller.set_device_fault(FAULT, False)
        return True

    def close(self) -> None:
        self.board.close()
