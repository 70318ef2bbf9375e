"""Billing-grade metering with a signing meter: the meter's OCMF begin/end records travel untouched in MeterValues
(Transaction.Begin) and StopTransaction transactionData (Transaction.End), are kept in the ledger, and verify with
the PyPI package pyocmf against the meter's public key. Checked by the strict schema-validating central system."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from csms.fixtures import strict_csms_fixture  # noqa: F401
from csms.strict import StrictCentralSystem
from ocpp_harness import OcppHarness
from pyocmf import OCMF

from firmware.charging.connector import Status
from firmware.config import Settings
from firmware.payment.ocmf import check_pair, energy_wh, parse
from hal.interfaces import SigningMeter

CP = "CP-OCMF"


def signing(settings: Settings) -> Settings:
    return replace(settings, meter=replace(settings.meter, model="sim-signing"))


@pytest.fixture
async def harness(strict_csms: StrictCentralSystem) -> AsyncIterator[OcppHarness[StrictCentralSystem]]:
    h = OcppHarness(strict_csms, CP, adjust=signing, work_prefix="evse-ocmf-")
    await h.start()
    yield h
    await h.close()


def _signed(values: list[dict[str, Any]], context: str) -> list[str]:
    return [
        v["value"]
        for mv in values
        for v in mv["sampledValue"]
        if v.get("format") == "SignedData" and v.get("context") == context
    ]


async def test_signed_begin_and_end_records_on_the_wire_verify_with_pyocmf(
    harness: OcppHarness[StrictCentralSystem],
) -> None:
    csms, app = harness.csms, harness.app
    meter = app.hardware.meter
    assert isinstance(meter, SigningMeter)
    harness.sim.plug()
    harness.sim.tap(bytes.fromhex("04A1B2C3"))
    await harness.advance(3.0)
    assert app.controller.connector.status is Status.CHARGING
    await harness.advance(600.0, dt=1.0)  # ten simulated minutes of charging
    harness.sim.tap(bytes.fromhex("04A1B2C3"))
    await harness.advance(1.0)
    await csms.wait_for(lambda: csms.count("StopTransaction") == 1, 5.0)
    await csms.wait_for(
        lambda: any(_signed(p["meterValue"], "Transaction.Begin") for p in csms.received("MeterValues"))
    )

    assert csms.violations == []
    start = csms.received("StartTransaction")[0]
    (begin,) = [r for p in csms.received("MeterValues") for r in _signed(p["meterValue"], "Transaction.Begin")]
    stop = csms.received("StopTransaction")[0]
    (end,) = _signed(stop["transactionData"], "Transaction.End")

    # pyocmf: strict parse, the meter's signature, and an Eichrecht-valid begin/end pair.
    key = meter.public_key_hex
    ocmf_begin, ocmf_end = OCMF.from_string(begin, strict=True), OCMF.from_string(end, strict=True)
    assert ocmf_begin.verify_signature(key) and ocmf_end.verify_signature(key)
    tampered = begin.replace('"RV":', '"RV":1', 1) if '"RV":' in begin else begin + "x"
    with pytest.raises(Exception):  # noqa: B017 - pyocmf refuses it one way or another
        assert OCMF.from_string(tampered, strict=True).verify_signature(key)
    assert check_pair(parse(begin), parse(end)) == []
    signed_wh = energy_wh(parse(begin), parse(end))
    # Billing-grade: meterStart/meterStop are the import register; the signed records sign that register (kWh, to
    # the Wh, truncated), so the signed energy matches meterStop - meterStart to within the 1 Wh display steps.
    assert abs(float(signed_wh) - (stop["meterStop"] - start["meterStart"])) <= 2.0
    assert float(signed_wh) > 1000.0  # ten minutes at 16-32 A: several kWh, not a rounding artefact

    # The ledger keeps both records exactly as they travelled.
    await harness.close()
    conn = sqlite3.connect(harness.work / "evse.db")
    (row,) = conn.execute("SELECT signed_start, signed_stop, energy_wh FROM sessions").fetchall()
    assert row[0] == begin and row[1] == end and row[2] > 1000.0
