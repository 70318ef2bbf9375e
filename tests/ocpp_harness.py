"""The whole charge point in-process, on a FakeClock, against a test central system (shared by the OCPP tests)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from firmware.app import ChargePointApp, demo_settings
from firmware.config import Settings, default_settings
from firmware.ocpp.connection import Backoff
from hal.clock import FakeClock


class CentralSystem(Protocol):
    """What the harness needs of a test central system."""

    @property
    def url(self) -> str: ...

    async def wait_for(self, predicate: Callable[[], object], timeout: float = ...) -> Any: ...


CsmsT = TypeVar("CsmsT", bound=CentralSystem)


def settings_for(url: str, work: Path, charger_id: str, mode: str = "ocpp") -> Settings:
    s = demo_settings(default_settings(), work)
    return replace(
        s,
        charger=replace(s.charger, id=charger_id),
        ocpp=replace(s.ocpp, url=url),
        auth=replace(s.auth, mode=mode),
    )


class OcppHarness(Generic[CsmsT]):
    """``ChargePointApp`` on a ``FakeClock`` with fast sim/meter ticks and a short reconnect backoff.

    ``start()`` runs the app and waits until it is online (and, if given, until ``ready()`` holds);
    ``close_timeout_s`` bounds ``close()`` and swallows the app's exit error instead of raising it.
    """

    def __init__(
        self,
        csms: CsmsT,
        charger_id: str,
        *,
        response_timeout_s: float = 2.0,
        work: Path | None = None,
        work_prefix: str = "evse-ocpp-",
        auth_mode: str = "ocpp",
        serve_api: bool = True,
        ready: Callable[[], object] | None = None,
        close_timeout_s: float | None = None,
        adjust: Callable[[Settings], Settings] | None = None,
    ) -> None:
        self.csms = csms
        self.charger_id = charger_id
        self.work = work or Path(tempfile.mkdtemp(prefix=work_prefix, dir="/tmp"))
        self.clock = FakeClock()
        settings = settings_for(csms.url, self.work, charger_id, auth_mode)
        self.app = ChargePointApp(
            adjust(settings) if adjust is not None else settings,
            clock=self.clock,
            sim_tick_s=0.005,
            meter_interval_s=0.01,
            ocpp_response_timeout_s=response_timeout_s,
            ocpp_backoff=Backoff(initial_s=0.02, maximum_s=0.1),
        )
        self.serve_api = serve_api
        self.ready = ready
        self.close_timeout_s = close_timeout_s
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @property
    def sim(self) -> Any:
        assert self.app.sim is not None
        return self.app.sim

    async def start(self) -> None:
        self.task = asyncio.create_task(self.app.run(self.stop, serve_api=self.serve_api))
        await self.csms.wait_for(lambda: self.app.ocpp.service.online)
        # What a start queues (the StartupOfTheDevice security event) is delivered before a test begins.
        await self.csms.wait_for(lambda: len(self.app.ocpp.outbox) == 0)
        if self.ready is not None:
            await self.csms.wait_for(self.ready)

    async def close(self) -> None:
        self.stop.set()
        if self.task is None:
            return
        if self.close_timeout_s is None:
            done, _ = await asyncio.wait({self.task}, timeout=20)
            if not done:  # debugging aid: show where shutdown is stuck
                import sys

                for t in asyncio.all_tasks():
                    print("TASK", t.get_name(), file=sys.stderr)
                    t.print_stack(file=sys.stderr)
                raise AssertionError("app did not stop within 20 s")
            await self.task
        else:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, self.close_timeout_s)

    async def advance(self, seconds: float, dt: float = 0.1) -> None:
        for _ in range(round(seconds / dt)):
            self.clock.advance(dt)
            self.sim.tick()
            self.app.controller.wake()
            await asyncio.sleep(0.002)
