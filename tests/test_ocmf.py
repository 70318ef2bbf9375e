"""OCMF records from the simulated signing meter, checked by an independent implementation (the PyPI package pyocmf)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pyocmf = pytest.importorskip("pyocmf", reason="pyocmf (dev extra) verifies the OCMF records")
from pyocmf import OCMF, IssueSeverity, validate_transaction_pair  # noqa: E402

from firmware.payment.ocmf import (  # noqa: E402
    OBIS_IMPORT,
    SIGNATURE_ALGORITHM,
    MeterIdentity,
    OcmfError,
    OcmfSigner,
    OcmfVerifier,
    check_pair,
    energy_wh,
    format_tm,
    parse,
    parse_tm,
)
from hal.clock import FakeClock  # noqa: E402
from hal.iec61851 import duty_for_current  # noqa: E402
from hal.interfaces import DeviceError  # noqa: E402
from hal.sim import SimBench  # noqa: E402
from hal.sim.signing_meter import SimSigningMeter  # noqa: E402

METER = MeterIdentity("Pievse", "SIM-OCMF", "SIM0000042", "1.0.0")
T0 = datetime(2026, 11, 27, 10, 24, 0, 123456, tzinfo=UTC)


@pytest.fixture(autouse=True)
def spec_warnings_are_errors() -> Iterator[None]:
    """pyocmf reports spec deviations it tolerates as SpecWarning: none may appear."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", pyocmf.SpecWarning)
        yield


@pytest.fixture
def signer() -> OcmfSigner:
    return OcmfSigner.generate(METER)


def sign_pair(signer: OcmfSigner, id_tag: str = "04A1B2C3") -> tuple[str, str]:
    ident = {"id_tag": id_tag, "identified": True, "charge_point_id": "CP-1", "id_flags": ("RFID_PLAIN",)}
    begin = signer.sign("B", Decimal("1234.567"), T0, **ident)
    end = signer.sign("E", Decimal("1250.001"), T0 + timedelta(hours=2), **ident)
    return begin, end


# ── round trip through pyocmf ─────────────────────────────────────────────────────────────────────────────────


def test_pyocmf_parses_strictly_and_verifies_the_signature(signer: OcmfSigner) -> None:
    begin, end = sign_pair(signer)
    parsed = OCMF.from_string(begin, strict=True)
    assert parsed.verify_signature(signer.public_key_hex) is True
    p = parsed.payload
    assert (p.FV, p.PG, p.MV, p.MM, p.MS, p.MF) == ("1.0", "T1", "Pievse", "SIM-OCMF", "SIM0000042", "1.0.0")
    assert (p.IS, p.IT, p.ID, p.CT, p.CI) == (True, "ISO14443", "04A1B2C3", "CBIDC", "CP-1")
    assert p.IF == ["RFID_PLAIN"]
    rd = p.RD[0]
    assert (rd.TX, rd.RV, str(rd.RI), rd.RU, rd.RT, rd.ST) == ("B", Decimal("1234.567"), OBIS_IMPORT, "kWh", "AC", "G")
    assert rd.timestamp == T0.replace(microsecond=123000)
    assert rd.time_status == "S"
    assert parsed.signature.SA == SIGNATURE_ALGORITHM
    assert OCMF.from_string(end, strict=True).payload.PG == "T2"


def test_pyocmf_finds_the_pair_billable(signer: OcmfSigner) -> None:
    begin, end = (OCMF.from_string(r, strict=True) for r in sign_pair(signer))
    errors = [i for i in begin.check_eichrecht(end) if i.severity == IssueSeverity.ERROR]
    assert errors == []
    assert validate_transaction_pair(begin, end)
    assert begin.verify(signer.public_key_hex, other=end) == (True, begin.check_eichrecht(end))


def test_our_parser_reads_the_same_values(signer: OcmfSigner) -> None:
    begin, end = sign_pair(signer)
    ours, theirs = OcmfVerifier(signer.public_key_hex).verify(begin), OCMF.from_string(begin, strict=True)
    assert ours.text == begin
    assert ours.reading.value == theirs.payload.RD[0].RV
    assert ours.reading.at == theirs.payload.RD[0].timestamp
    assert (ours.meter.serial, ours.id_tag, ours.charge_point_id, ours.pagination) == (
        "SIM0000042",
        "04A1B2C3",
        "CP-1",
        "T1",
    )
    assert energy_wh(parse(begin), parse(end)) == Decimal("15434.000")


@pytest.mark.parametrize(
    ("old", "new"),
    [('"RV":1234.567', '"RV":1234.568'), ('"ID":"04A1B2C3"', '"ID":"04A1B2C4"'), ('"PG":"T1"', '"PG":"T9"')],
)
def test_tampered_payload_fails_verification(signer: OcmfSigner, old: str, new: str) -> None:
    begin, _ = sign_pair(signer)
    assert old in begin
    forged = begin.replace(old, new)
    assert OCMF.from_string(forged, strict=True).verify_signature(signer.public_key_hex) is False
    with pytest.raises(OcmfError, match="does not match"):
        OcmfVerifier(signer.public_key_hex).verify(forged)


def test_tampered_signature_and_wrong_key_fail(signer: OcmfSigner) -> None:
    begin, _ = sign_pair(signer)
    sd = json.loads(begin.rsplit("|", 1)[1])["SD"]
    flipped = sd[:20] + ("0" if sd[20] != "0" else "1") + sd[21:]
    forged = begin.replace(sd, flipped)
    assert OCMF.from_string(forged, strict=True).verify_signature(signer.public_key_hex) is False
    assert not OcmfVerifier(signer.public_key_hex).is_valid(forged)
    other = OcmfSigner.generate(METER)
    assert OCMF.from_string(begin, strict=True).verify_signature(other.public_key_hex) is False
    assert not OcmfVerifier(other.public_key_hex).is_valid(begin)
    assert OcmfVerifier(signer.public_key).is_valid(begin)


# ── begin/end pairing ─────────────────────────────────────────────────────────────────────────────────────────


def test_a_begin_and_its_end_pair(signer: OcmfSigner) -> None:
    begin, end = (parse(r) for r in sign_pair(signer))
    assert check_pair(begin, end) == []


def test_pairing_problems_are_named(signer: OcmfSigner) -> None:
    begin, end = (parse(r) for r in sign_pair(signer))
    swapped = check_pair(end, begin)
    assert any("not 'B'" in p for p in swapped) and any("below begin value" in p for p in swapped)
    assert any("before begin time" in p for p in swapped) and any("does not count up" in p for p in swapped)
    other_meter = OcmfSigner.generate(MeterIdentity("Pievse", "SIM-OCMF", "SIM0000043"))
    stranger = parse(other_meter.sign("E", Decimal("1300"), T0 + timedelta(hours=3), id_tag="ABCD", identified=True))
    problems = check_pair(begin, stranger)
    assert any("different meters" in p for p in problems) and any("identification differs" in p for p in problems)
    # An end register below the begin: neither we nor pyocmf take it as a billable pair.
    ident = {"id_tag": "04A1B2C3", "identified": True, "charge_point_id": "CP-1"}
    b = signer.sign("B", Decimal("1250"), T0, **ident)
    e = signer.sign("E", Decimal("1249.999"), T0 + timedelta(hours=1), **ident)
    assert any("below begin value" in p for p in check_pair(parse(b), parse(e)))
    assert not validate_transaction_pair(OCMF.from_string(b, strict=True), OCMF.from_string(e, strict=True))


# ── TM ─────────────────────────────────────────────────────────────────────────────────────────────────────────


def test_tm_format() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    assert format_tm(T0) == "2026-11-27T10:24:00,123+0000 S"
    assert format_tm(T0, "S", berlin) == "2026-11-27T11:24:00,123+0100 S"
    assert format_tm(datetime(2026, 7, 1, 12, tzinfo=UTC), "I", berlin) == "2026-07-01T14:00:00,000+0200 I"
    assert format_tm(datetime(2026, 7, 1, 12, tzinfo=UTC), "U", ZoneInfo("America/St_Johns")) == (
        "2026-07-01T09:30:00,000-0230 U"
    )
    with pytest.raises(ValueError, match="aware"):
        format_tm(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="time status"):
        format_tm(T0, "Q")
    for bad in ("2026-11-27T10:24:00.123+0000 S", "2026-11-27T10:24:00,123+00:00 S", "2026-11-27T10:24:00,123+0000"):
        with pytest.raises(OcmfError):
            parse_tm(bad)


@given(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)),
    st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]),
    st.sampled_from(["U", "I", "S", "R"]),
)
def test_tm_round_trips_to_the_millisecond(at: datetime, zone: str, status: str) -> None:
    text = format_tm(at, status, ZoneInfo(zone))
    back, back_status = parse_tm(text)
    assert back_status == status
    assert back == at.replace(microsecond=at.microsecond // 1000 * 1000)
    assert back.utcoffset() == at.astimezone(ZoneInfo(zone)).utcoffset()
    theirs = pyocmf.OCMFTimestamp.from_string(text)
    assert theirs.timestamp == back and str(theirs) == text


# ── any identification and value survives, and stays verifiable ────────────────────────────────────────────────


@settings(max_examples=40, deadline=None)
@given(
    st.text(min_size=1, max_size=20).filter(lambda s: s.strip() == s and "\x00" not in s),
    st.decimals(min_value=0, max_value=10**7, places=3),
    st.text(alphabet=st.characters(codec="ascii", categories=("L", "N", "P")), min_size=1, max_size=30),
)
def test_any_id_tag_value_and_charger_id_round_trip(id_tag: str, value: Decimal, charge_point_id: str) -> None:
    signer = OcmfSigner.generate(METER)
    record = signer.sign("B", value, T0, id_tag=id_tag, identified=True, charge_point_id=charge_point_id)
    theirs = OCMF.from_string(record, strict=True)
    assert theirs.verify_signature(signer.public_key_hex)
    assert (id_tag, charge_point_id, value) == (theirs.payload.ID, theirs.payload.CI, theirs.payload.RD[0].RV)
    ours = OcmfVerifier(signer.public_key_hex).verify(record)
    assert (ours.id_tag, ours.charge_point_id, ours.reading.value) == (id_tag, charge_point_id, value)


def test_floats_and_bad_records_are_refused(signer: OcmfSigner) -> None:
    with pytest.raises(TypeError):
        signer.sign("B", 12.5, T0, id_tag="A", identified=True)  # type: ignore[arg-type]
    begin, _ = sign_pair(signer)
    for bad in ("", "OCMF|{}", begin + "|3059301306", "OCMF|[]|{}", begin.replace('"IS":true', '"IS":"yes"')):
        with pytest.raises(OcmfError):
            parse(bad)
    assert parse(begin.encode().hex()).text == begin.encode().hex()  # hex-encoded records are read too


# ── the simulated signing meter ───────────────────────────────────────────────────────────────────────────────


def run(bench: SimBench, clock: FakeClock, seconds: float) -> None:
    clock.advance(seconds)
    bench.tick()


def test_simulated_meter_signs_its_own_register() -> None:
    clock = FakeClock(datetime(2026, 11, 27, 9, 0, tzinfo=UTC))
    bench = SimBench(clock)
    signer = OcmfSigner.generate(METER)
    meter = SimSigningMeter(bench, signer, charge_point_id="CP-1", tz=ZoneInfo("Europe/Berlin"))
    with pytest.raises(ValueError, match="no signed transaction"):
        meter.sign_end()
    bench.plug()
    bench.pilot.set_duty(duty_for_current(16.0))
    run(bench, clock, 1.0)
    bench.contactor.command(True)
    run(bench, clock, 60.0)
    start_wh = bench.ev.energy_wh
    begin = meter.sign_begin("04A1B2C3", id_flags=("RFID_PLAIN", "OCPP_AUTH"))
    assert meter.transaction_open
    with pytest.raises(ValueError, match="already open"):
        meter.sign_begin("04A1B2C3")
    assert asyncio.run(meter.read()).signed_data == begin
    run(bench, clock, 1800.0)
    end_wh = bench.ev.energy_wh
    end = meter.sign_end()
    assert not meter.transaction_open and asyncio.run(meter.read()).signed_data == end

    b, e = (OCMF.from_string(r, strict=True) for r in (begin, end))
    assert b.verify_signature(meter.public_key_hex) and e.verify_signature(meter.public_key_hex)
    assert validate_transaction_pair(b, e)
    truncate = Decimal("0.001")
    assert (Decimal(repr(start_wh)) / 1000).quantize(truncate, rounding="ROUND_DOWN") == b.payload.RD[0].RV
    assert (Decimal(repr(end_wh)) / 1000).quantize(truncate, rounding="ROUND_DOWN") == e.payload.RD[0].RV
    assert str(b.payload.RD[0].TM).startswith("2026-11-27T10:01:01,000+0100 S")  # bench wall time, Berlin
    assert e.payload.RD[0].TX == "E" and e.payload.ID == "04A1B2C3"
    verifier = OcmfVerifier(signer.public_key_hex)
    assert check_pair(verifier.verify(begin), verifier.verify(end)) == []
    signed = energy_wh(parse(begin), parse(end))
    assert abs(signed - (Decimal(repr(end_wh)) - Decimal(repr(start_wh)))) < 1  # 1 Wh resolution
    assert signed > 5000  # half an hour at 11 kW


def test_simulated_meter_fault_and_other_end_reasons() -> None:
    clock = FakeClock()
    bench = SimBench(clock)
    meter = SimSigningMeter(bench, OcmfSigner.generate(METER), charge_point_id="CP-1")
    meter.sign_begin(None)  # free vend: nobody identified
    assert parse(meter.last_record or "").identified is False
    free = OCMF.from_string(meter.last_record or "", strict=True).payload
    assert (free.IS, free.IT, free.ID) == (False, "NONE", None)
    with pytest.raises(ValueError, match="end reason"):
        meter.sign_end(reason="Z")
    assert parse(meter.sign_end(reason="P")).reading.tx == "P"  # power failure
    bench.inject("meter")
    with pytest.raises(DeviceError):
        meter.sign_begin("04A1B2C3")
    assert not meter.transaction_open


def test_a_fixed_pem_test_key_signs_verifiably() -> None:
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    pem = OcmfSigner.generate(METER)._key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    first, second = OcmfSigner.from_pem(pem, METER), OcmfSigner.from_pem(pem, METER)
    assert first.public_key_hex == second.public_key_hex
    record = first.sign("B", Decimal("1"), T0, id_tag="A", identified=True)
    assert OCMF.from_string(record).verify_signature(second.public_key_hex)
    with pytest.raises(ValueError):
        OcmfSigner.from_pem(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n", METER)


def test_simulated_meter_truncates_to_its_one_wh_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = SimBench(FakeClock())
    meter = SimSigningMeter(bench, OcmfSigner.generate(METER), charge_point_id="CP-1")
    real = bench.meter.reading()
    monkeypatch.setattr(bench.meter, "reading", lambda: dataclasses.replace(real, energy_import_wh=1234.9999))
    assert meter.register_kwh() == Decimal("1.234")  # a meter shows what it has counted, never more
    assert parse(meter.sign_begin("04A1B2C3")).reading.value == Decimal("1.234")


def test_a_pipe_in_any_text_cannot_break_the_sections(signer: OcmfSigner) -> None:
    record = signer.sign("B", Decimal("1"), T0, id_tag="A|B", identified=True, charge_point_id="CP|1")
    assert record.count("|") == 2
    theirs = OCMF.from_string(record, strict=True)
    assert (theirs.payload.ID, theirs.payload.CI) == ("A|B", "CP|1")
    assert theirs.verify_signature(signer.public_key_hex)
    assert OcmfVerifier(signer.public_key_hex).verify(record).id_tag == "A|B"


def test_unknown_tx_and_bad_public_keys_are_refused(signer: OcmfSigner) -> None:
    with pytest.raises(ValueError, match="TX must be"):
        signer.sign("Q", Decimal("1"), T0, id_tag="A", identified=True)
    for bad in ("zz", "3059", ""):
        with pytest.raises(OcmfError, match="public key"):
            OcmfVerifier(bad)
