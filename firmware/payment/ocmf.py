"""OCMF (Open Charge Metering Format) records: what a signing meter hands over, built, parsed and verified.

A record is ``OCMF|{payload JSON}|{signature JSON}`` (SAFE e.V. OCMF; standards.md §4.2). The payload names the
meter (MV/MM/MS/MF), the pagination counter (PG ``T<n>``, one count per signed record), the driver's
identification (IS/IT/ID, optionally IL/IF), the charge point (CT/CI) and the readings RD[] with TM
``YYYY-MM-DDThh:mm:ss,fff+zzzz S``, TX (B = transaction begin, E = end), RV in kWh, RI (OBIS
``01-00:01.08.00*FF``, the import register), RU ``kWh``, RT ``AC`` and ST ``G``. The signature is ECDSA over the
exact payload bytes: SA ``ECDSA-secp256r1-SHA256``, SD the DER signature in hex; the public key (DER
SubjectPublicKeyInfo, hex) travels separately, as OCMF requires.

The charger's duty is to forward the meter's records untouched (never re-serialize a parsed record: the signature
covers the original bytes; :attr:`OcmfRecord.text` keeps them). :func:`parse` reads a record without checking the
signature (for the ledger and pairing), :class:`OcmfVerifier` checks it, :func:`check_pair` says whether a begin and
an end record make a billable pair, and :class:`OcmfSigner` is the signing half of a meter, for the simulated meter
(:mod:`hal.sim.signing_meter`) and tests.

The signer and verifier need the ``cryptography`` package; it is imported only when they are used, so parsing and
forwarding work without it. A ``|`` inside a payload string is written as ``\\u007c`` so records always split
cleanly on ``|``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey, EllipticCurvePublicKey

HEADER: Final = "OCMF"
FORMAT_VERSION: Final = "1.0"
SIGNATURE_ALGORITHM: Final = "ECDSA-secp256r1-SHA256"
#: OBIS code of the active-energy import register (the billing register).
OBIS_IMPORT: Final = "01-00:01.08.00*FF"
#: TX values that end a transaction: E end, L local / R remote termination, A abort, P power failure.
END_REASONS: Final = frozenset({"E", "L", "R", "A", "P"})
#: Every TX value: B begin, C charging, X exception, E end, L/R/A/P other ends, S suspended, T tariff change.
TX_REASONS: Final = frozenset({"B", "C", "X", "E", "L", "R", "A", "P", "S", "T"})
TIME_STATUSES: Final = frozenset({"U", "I", "S", "R"})

_TM = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}),(\d{3})([+-])(\d{2})(\d{2}) ([A-Z])")
_PAGINATION = re.compile(r"([TF])(0|[1-9][0-9]*)")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_INHERITED = ("TM", "TX", "RI", "RU", "RT", "EF", "ST")


class OcmfError(ValueError):
    """A record that is not well-formed OCMF, or whose signature does not match."""


# ── time stamps ────────────────────────────────────────────────────────────────────────────────────────────────


def format_tm(at: datetime, status: str = "S", tz: tzinfo | None = None) -> str:
    """OCMF TM: ``2026-11-27T10:24:00,123+0100 S`` (milliseconds after a comma, offset without a colon).

    ``tz`` is the zone the meter shows (default: ``at``'s own). Status: S synchronized, I informative, R relative,
    U unknown.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"OCMF time must be timezone-aware, got {at!r}")
    if status not in TIME_STATUSES:
        raise ValueError(f"time status must be one of {sorted(TIME_STATUSES)}, got {status!r}")
    local = at.astimezone(tz) if tz is not None else at
    offset = local.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    hh, mm = divmod(abs(minutes), 60)
    stamp = local.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp},{local.microsecond // 1000:03d}{sign}{hh:02d}{mm:02d} {status}"


def parse_tm(text: str) -> tuple[datetime, str]:
    """(instant, time status) from an OCMF TM; :class:`OcmfError` if it is not in that exact form."""
    m = _TM.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise OcmfError(f"TM {text!r} is not 'YYYY-MM-DDThh:mm:ss,fff+zzzz S'")
    stamp, millis, sign, hh, mm, status = m.groups()
    if status not in TIME_STATUSES:
        raise OcmfError(f"TM {text!r}: time status {status!r} is not one of U, I, S, R")
    offset = timedelta(hours=int(hh), minutes=int(mm)) * (1 if sign == "+" else -1)
    try:
        local = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S")
        return local.replace(microsecond=int(millis) * 1000, tzinfo=timezone(offset)), status
    except ValueError as e:
        raise OcmfError(f"TM {text!r}: {e}") from None


# ── JSON with exact numbers ────────────────────────────────────────────────────────────────────────────────────


def encode_json(value: object) -> str:
    """Compact JSON, keys in the given order, Decimals written exactly (no exponent), ``|`` escaped."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} cannot be written as a JSON number")
        return format(value, "f")
    if isinstance(value, str):
        return json.dumps(value).replace("|", "\\u007c")
    if isinstance(value, Mapping):
        items = (f"{encode_json(str(k))}:{encode_json(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(encode_json(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} into OCMF (floats are refused: use Decimal)")


# ── parsed records ─────────────────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class MeterIdentity:
    """The signing meter: vendor (MV), model (MM), serial (MS, identifies the signer) and firmware (MF)."""

    vendor: str
    model: str
    serial: str
    firmware: str = ""


@dataclass(frozen=True)
class OcmfReading:
    at: datetime
    time_status: str
    #: TX: B begin, C charging, X exception, E end, L/R/A/P other ends (see END_REASONS), T tariff change, S suspended.
    tx: str | None
    value: Decimal
    obis: str
    unit: str
    status: str
    current_type: str | None = None
    error_flags: str = ""


@dataclass(frozen=True)
class OcmfRecord:
    """One parsed record; ``text`` is the original string, the only form to forward or store."""

    text: str
    payload_json: str
    payload: Mapping[str, Any]
    readings: tuple[OcmfReading, ...]
    pagination: str
    meter: MeterIdentity
    identified: bool
    id_type: str | None
    id_tag: str | None
    charge_point_id: str | None
    signature_algorithm: str
    signature_der: bytes

    @property
    def reading(self) -> OcmfReading:
        """The first reading (a begin or end record from a meter holds exactly one)."""
        return self.readings[0]


def _text(payload: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    value = payload.get(key)
    if value is None:
        if required:
            raise OcmfError(f"payload has no {key}")
        return None
    if not isinstance(value, str):
        raise OcmfError(f"payload {key} must be a string, got {type(value).__name__}")
    return value


def _readings(raw: object) -> tuple[OcmfReading, ...]:
    if not isinstance(raw, list) or not raw:
        raise OcmfError("payload RD must be a non-empty list of readings")
    out = []
    inherited: dict[str, Any] = {}
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise OcmfError(f"RD[{i}] must be an object")
        rd = {**inherited, **item}  # OCMF: TM, TX, RI, RU, RT, EF, ST carry over from the previous reading
        inherited = {k: rd[k] for k in _INHERITED if k in rd}
        at, status = parse_tm(rd.get("TM", ""))
        value = rd.get("RV")
        if isinstance(value, bool) or not isinstance(value, int | Decimal) or not Decimal(value).is_finite():
            raise OcmfError(f"RD[{i}].RV must be a number")
        fields = {}
        for key in ("RI", "RU", "ST"):
            v = rd.get(key)
            if not isinstance(v, str) or not v:
                raise OcmfError(f"RD[{i}].{key} is missing")
            fields[key] = v
        tx, rt, ef = rd.get("TX"), rd.get("RT"), rd.get("EF", "")
        if not all(v is None or isinstance(v, str) for v in (tx, rt)) or not isinstance(ef, str):
            raise OcmfError(f"RD[{i}]: TX, RT and EF must be strings")
        out.append(OcmfReading(at, status, tx, Decimal(value), fields["RI"], fields["RU"], fields["ST"], rt, ef))
    return tuple(out)


def parse(text: str) -> OcmfRecord:
    """A record's content, without checking the signature; :class:`OcmfError` if it is not well-formed OCMF.

    Plain text (``OCMF|...``) or its hex encoding. A fourth ``|`` section (a public key glued on) is refused:
    keys are transmitted separately.
    """
    if not isinstance(text, str):
        raise OcmfError(f"an OCMF record is a string, got {type(text).__name__}")
    raw = text.strip()
    if not raw.startswith(HEADER + "|") and _HEX.fullmatch(raw):
        try:
            raw = bytes.fromhex(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise OcmfError("hex-encoded record is not UTF-8") from None
    parts = raw.split("|")
    if len(parts) != 3 or parts[0] != HEADER:
        raise OcmfError("expected 'OCMF|{payload}|{signature}' (three sections)")
    payload_json, signature_json = parts[1], parts[2]
    try:
        payload = json.loads(payload_json, parse_float=Decimal)
        signature = json.loads(signature_json, parse_float=Decimal)
    except (ValueError, RecursionError) as e:
        raise OcmfError(f"section is not JSON: {e}") from None
    if not isinstance(payload, Mapping) or not isinstance(signature, Mapping):
        raise OcmfError("payload and signature must be JSON objects")
    pagination = _text(payload, "PG", required=True) or ""
    if not _PAGINATION.fullmatch(pagination):
        raise OcmfError(f"PG {pagination!r} must be T or F followed by a number")
    identified = payload.get("IS")
    if not isinstance(identified, bool):
        raise OcmfError("payload IS (identification status) must be true or false")
    meter = MeterIdentity(
        _text(payload, "MV") or "", _text(payload, "MM") or "", _text(payload, "MS", required=True) or "",
        _text(payload, "MF") or "",
    )  # fmt: skip
    algorithm = _text(signature, "SA") or SIGNATURE_ALGORITHM
    encoding = _text(signature, "SE") or "hex"
    sd = _text(signature, "SD", required=True) or ""
    if encoding != "hex" or not _HEX.fullmatch(sd):
        raise OcmfError("signature SD must be hex (SE 'hex')")
    return OcmfRecord(
        text=text,
        payload_json=payload_json,
        payload=payload,
        readings=_readings(payload.get("RD")),
        pagination=pagination,
        meter=meter,
        identified=identified,
        id_type=_text(payload, "IT"),
        id_tag=_text(payload, "ID"),
        charge_point_id=_text(payload, "CI"),
        signature_algorithm=algorithm,
        signature_der=bytes.fromhex(sd),
    )


def check_pair(begin: OcmfRecord, end: OcmfRecord) -> list[str]:
    """What stops ``begin`` and ``end`` from being one billable transaction; empty = a good pair.

    The same meter (MS), the same register (RI, RU), begin TX B and end TX E (or another end reason), status G on
    both, the end not before the begin in time or value, pagination in the same context and counting up, the
    same identification.
    """
    problems = []
    b, e = begin.reading, end.reading
    if b.tx != "B":
        problems.append(f"begin record has TX {b.tx!r}, not 'B'")
    if e.tx not in END_REASONS:
        problems.append(f"end record has TX {e.tx!r}, not an end reason (E, L, R, A, P)")
    if begin.meter.serial != end.meter.serial:
        problems.append(f"different meters: {begin.meter.serial!r} and {end.meter.serial!r}")
    if (b.obis, b.unit) != (e.obis, e.unit):
        problems.append(f"different registers: {b.obis} {b.unit} and {e.obis} {e.unit}")
    for name, r in (("begin", b), ("end", e)):
        if r.status != "G":
            problems.append(f"{name} reading status is {r.status!r}, not 'G'")
        if "E" in r.error_flags:
            problems.append(f"{name} reading has the energy error flag")
    if e.value < b.value:
        problems.append(f"end value {e.value} is below begin value {b.value}")
    if e.at < b.at:
        problems.append(f"end time {e.at.isoformat()} is before begin time {b.at.isoformat()}")
    if begin.pagination[0] != end.pagination[0] or int(end.pagination[1:]) <= int(begin.pagination[1:]):
        problems.append(f"pagination {begin.pagination} -> {end.pagination} does not count up in one context")
    if (begin.id_type, begin.id_tag) != (end.id_type, end.id_tag):
        problems.append(f"identification differs: {begin.id_tag!r} and {end.id_tag!r}")
    return problems


def energy_wh(begin: OcmfRecord, end: OcmfRecord) -> Decimal:
    """The signed energy of a pair in Wh (end minus begin of the register, converted from RU)."""
    scale = {"kWh": Decimal(1000), "Wh": Decimal(1)}
    b, e = begin.reading, end.reading
    if b.unit not in scale or e.unit not in scale:
        raise OcmfError(f"unit {b.unit!r}/{e.unit!r} is not an energy unit (kWh, Wh)")
    return e.value * scale[e.unit] - b.value * scale[b.unit]


# ── signing and verifying ──────────────────────────────────────────────────────────────────────────────────────


def _id_type(id_tag: str | None) -> str:
    """OCMF IT from the idTag's form: a 4/7-byte UID is ISO 14443, 8 bytes ISO 15693, anything else CENTRAL."""
    if not id_tag:
        return "NONE"
    if re.fullmatch(r"[0-9A-Fa-f]{8}|[0-9A-Fa-f]{14}", id_tag):
        return "ISO14443"
    if re.fullmatch(r"[0-9A-Fa-f]{16}", id_tag):
        return "ISO15693"
    return "CENTRAL"


class OcmfSigner:
    """The signing half of a meter: an ECDSA secp256r1 key, the meter's identity and its pagination counter."""

    def __init__(self, private_key: EllipticCurvePrivateKey, meter: MeterIdentity, *, next_page: int = 1) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        if not isinstance(private_key.curve, ec.SECP256R1):
            raise ValueError(f"the key must be on secp256r1, got {private_key.curve.name}")
        if next_page < 0:
            raise ValueError("the pagination counter cannot be negative")
        self._key = private_key
        self.meter = meter
        self.next_page = next_page

    @classmethod
    def generate(cls, meter: MeterIdentity) -> OcmfSigner:
        """A signer with a fresh key (tests and the simulator; a real meter's key never leaves it)."""
        from cryptography.hazmat.primitives.asymmetric import ec

        return cls(ec.generate_private_key(ec.SECP256R1()), meter)

    @classmethod
    def from_pem(cls, pem: bytes, meter: MeterIdentity) -> OcmfSigner:
        """A signer from a PEM private key (a fixed test key)."""
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        key = load_pem_private_key(pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("not an elliptic-curve private key")
        return cls(key, meter)

    @property
    def public_key(self) -> EllipticCurvePublicKey:
        return self._key.public_key()

    @property
    def public_key_hex(self) -> str:
        """The public key as OCMF tools take it: DER SubjectPublicKeyInfo, hex."""
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        return self.public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo).hex()

    def payload(
        self,
        tx: str,
        value_kwh: Decimal,
        at: datetime,
        *,
        id_tag: str | None,
        identified: bool,
        charge_point_id: str | None = None,
        id_flags: Sequence[str] = (),
        id_level: str | None = None,
        time_status: str = "S",
        tz: tzinfo | None = None,
    ) -> dict[str, Any]:
        """The payload of the next record (consumes a pagination number)."""
        if tx not in TX_REASONS:
            raise ValueError(f"TX must be one of {', '.join(sorted(TX_REASONS))}, got {tx!r}")
        if not isinstance(value_kwh, Decimal) or not value_kwh.is_finite() or value_kwh < 0:
            raise TypeError(f"RV must be a finite non-negative Decimal (kWh), got {value_kwh!r}")
        payload: dict[str, Any] = {
            "FV": FORMAT_VERSION,
            "PG": f"T{self.next_page}",
            "MV": self.meter.vendor,
            "MM": self.meter.model,
            "MS": self.meter.serial,
        }
        if self.meter.firmware:
            payload["MF"] = self.meter.firmware
        payload["IS"] = identified
        if id_level is not None:
            payload["IL"] = id_level
        if id_flags:
            payload["IF"] = list(id_flags)
        payload["IT"] = _id_type(id_tag)
        if id_tag:
            payload["ID"] = id_tag
        if charge_point_id:
            payload["CT"] = "CBIDC"  # charge box identification: the OCPP chargePointId
            payload["CI"] = charge_point_id
        payload["RD"] = [
            {
                "TM": format_tm(at, time_status, tz),
                "TX": tx,
                "RV": value_kwh,
                "RI": OBIS_IMPORT,
                "RU": "kWh",
                "RT": "AC",
                "ST": "G",
            }
        ]
        self.next_page += 1
        return payload

    def sign_payload(self, payload: Mapping[str, Any]) -> str:
        """The OCMF string for ``payload``: its compact JSON, signed as written."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        payload_json = encode_json(payload)
        der = self._key.sign(payload_json.encode("utf-8"), ec.ECDSA(hashes.SHA256()))
        signature_json = encode_json({"SA": SIGNATURE_ALGORITHM, "SD": der.hex()})
        return f"{HEADER}|{payload_json}|{signature_json}"

    def sign(self, tx: str, value_kwh: Decimal, at: datetime, **identification: Any) -> str:
        """One signed record with one reading (see :meth:`payload` for the keywords)."""
        return self.sign_payload(self.payload(tx, value_kwh, at, **identification))


class OcmfVerifier:
    """Checks records against a meter's public key (DER SubjectPublicKeyInfo, hex, or a key object)."""

    def __init__(self, public_key: str | EllipticCurvePublicKey) -> None:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import load_der_public_key

        if isinstance(public_key, str):
            try:
                key = load_der_public_key(bytes.fromhex(public_key))
            except (ValueError, UnsupportedAlgorithm) as e:
                raise OcmfError(f"public key is not hex DER: {e}") from None
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise OcmfError("public key is not an elliptic-curve key")
            public_key = key
        if not isinstance(public_key.curve, ec.SECP256R1):
            raise OcmfError(f"public key is on {public_key.curve.name}, not secp256r1")
        self._key = public_key

    def verify(self, text: str) -> OcmfRecord:
        """The parsed record if its signature matches; :class:`OcmfError` otherwise."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        record = parse(text)
        if record.signature_algorithm != SIGNATURE_ALGORITHM:
            raise OcmfError(f"signature algorithm {record.signature_algorithm!r} is not {SIGNATURE_ALGORITHM}")
        try:
            self._key.verify(record.signature_der, record.payload_json.encode("utf-8"), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise OcmfError("signature does not match the payload") from None
        return record

    def is_valid(self, text: str) -> bool:
        try:
            self.verify(text)
        except OcmfError:
            return False
        return True


__all__ = [
    "END_REASONS",
    "OBIS_IMPORT",
    "SIGNATURE_ALGORITHM",
    "TX_REASONS",
    "MeterIdentity",
    "OcmfError",
    "OcmfReading",
    "OcmfRecord",
    "OcmfSigner",
    "OcmfVerifier",
    "check_pair",
    "encode_json",
    "energy_wh",
    "format_tm",
    "parse",
    "parse_tm",
]
