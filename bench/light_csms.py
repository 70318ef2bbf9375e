"""A light OCPP 1.6J central system for load runs, in its own process (``python bench/light_csms.py``).

Built on the ``ocpp`` package in the central-system role: accepts every boot (heartbeat 60 s), sets
MeterValueSampleInterval on each charger after its first boot, accepts cards except 7-byte UIDs starting
FF (the fleet scenario's unknown cards), and counts every CALL it receives per action. It prints its port
on the first stdout line and, on SIGTERM/SIGINT, the counts as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import signal
import sys
from collections import Counter
from datetime import UTC, datetime
from typing import Any, ClassVar

import websockets
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint, call, call_result

COUNTS: Counter[str] = Counter()
TRANSACTION_IDS = itertools.count(1)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _id_tag_info(id_tag: str) -> dict[str, str]:
    return {"status": "Invalid" if id_tag.upper().startswith("FF") and len(id_tag) == 14 else "Accepted"}


class Charger(ChargePoint):  # type: ignore[misc]
    heartbeat_s = 60
    sample_interval_s = 10
    configured: ClassVar[set[str]] = set()

    async def route_message(self, raw_msg: str) -> None:
        if raw_msg.startswith("[2,"):
            parts = raw_msg.split('"', 4)
            if len(parts) > 3:
                COUNTS[parts[3]] += 1
        await super().route_message(raw_msg)

    @on("BootNotification")
    def on_boot(self, **_: Any) -> Any:
        return call_result.BootNotification(current_time=_now(), interval=self.heartbeat_s, status="Accepted")

    @after("BootNotification")
    async def after_boot(self, **_: Any) -> None:
        if self.id in self.configured:
            return
        self.configured.add(self.id)
        await asyncio.sleep(1.0)
        try:
            await self.call(call.ChangeConfiguration(key="MeterValueSampleInterval", value=str(self.sample_interval_s)))
        except Exception as exc:  # the charger went away
            logging.getLogger("light_csms").warning("%s: ChangeConfiguration failed: %s", self.id, exc)

    @on("Heartbeat")
    def on_heartbeat(self, **_: Any) -> Any:
        return call_result.Heartbeat(current_time=_now())

    @on("StatusNotification")
    def on_status(self, **_: Any) -> Any:
        return call_result.StatusNotification()

    @on("Authorize")
    def on_authorize(self, id_tag: str, **_: Any) -> Any:
        return call_result.Authorize(id_tag_info=_id_tag_info(id_tag))

    @on("StartTransaction")
    def on_start(self, id_tag: str, **_: Any) -> Any:
        return call_result.StartTransaction(transaction_id=next(TRANSACTION_IDS), id_tag_info=_id_tag_info(id_tag))

    @on("StopTransaction")
    def on_stop(self, **_: Any) -> Any:
        return call_result.StopTransaction()

    @on("MeterValues")
    def on_meter_values(self, **_: Any) -> Any:
        return call_result.MeterValues()

    @on("DataTransfer")
    def on_data_transfer(self, **_: Any) -> Any:
        return call_result.DataTransfer(status="Accepted")

    @on("SecurityEventNotification")
    def on_security_event(self, **_: Any) -> Any:
        return call_result.SecurityEventNotification()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--heartbeat", type=int, default=60)
    parser.add_argument("--sample-interval", type=int, default=10)
    args = parser.parse_args()
    Charger.heartbeat_s, Charger.sample_interval_s = args.heartbeat, args.sample_interval

    async def handler(ws: Any) -> None:
        charger = Charger(ws.request.path.rstrip("/").rsplit("/", 1)[-1], ws)
        with contextlib.suppress(websockets.ConnectionClosed):
            await charger.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with websockets.serve(handler, "127.0.0.1", args.port, subprotocols=["ocpp1.6"], max_queue=64) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(json.dumps({"port": port}), flush=True)
        await stop.wait()
    print(json.dumps({"received": dict(sorted(COUNTS.items()))}), flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(asyncio.run(main()))
