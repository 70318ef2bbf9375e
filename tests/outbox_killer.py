"""Child process for the kill -9 test: writes to the outbox as fast as it can until SIGKILLed.

Prints (flushing) one line per fact the parent may rely on: ``committed <id>`` only after enqueue returned,
``inflight <id>`` after mark_sent returned, then ``running`` before the endless write loop.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from firmware.ocpp.outbox import Outbox
from firmware.store import Store


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(db_path: str, meter_values: int) -> None:
    store = Store(db_path)
    outbox = Outbox(store)
    ref = outbox.begin_transaction(1, "04A1B2C3", 1000.0, datetime.now(UTC))
    head = outbox.enqueue(
        "StartTransaction", {"connectorId": 1, "idTag": "04A1B2C3", "meterStart": 1000}, transaction_ref=ref
    )
    say(f"committed {head}")
    for n in range(meter_values):
        say(f"committed {outbox.enqueue('MeterValues', {'connectorId': 1, 'n': n}, transaction_ref=ref)}")
    outbox.mark_sent(head)
    say(f"inflight {head}")
    say("running")
    n = meter_values
    while True:
        msg_id = outbox.enqueue("MeterValues", {"connectorId": 1, "n": n, "pad": "x" * 200}, transaction_ref=ref)
        say(f"committed {msg_id}")
        n += 1


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
