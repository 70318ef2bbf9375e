"""Register maps and register decoding: known vectors, the spec's addresses, and Hypothesis round trips."""

from __future__ import annotations

import itertools
import math
import struct
from pathlib import Path
from typing import Any, get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st
from modbus_server import encode as pymodbus_encode
from pymodbus.client.mixin import ModbusClientMixin

from hal.meters import available_models, meter_map
from hal.meters.registers import (
    MAPS_DIR,
    MAX_REGISTERS_PER_READ,
    QUANTITIES,
    REGISTER_COUNT,
    MapError,
    Order,
    Register,
    RegisterType,
    builtin_maps,
    decode,
    encode,
    parse_map,
    plan_blocks,
    scaled,
)

TYPES: tuple[RegisterType, ...] = get_args(RegisterType)
ORDERS: tuple[Order, ...] = ("big", "little")
DATATYPE = ModbusClientMixin.DATATYPE


def _int_range(type_: RegisterType) -> tuple[int, int]:
    bits = 16 * REGISTER_COUNT[type_]
    return (0, 2**bits - 1) if type_.startswith("u") else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


@st.composite
def typed_values(draw: st.DrawFn) -> tuple[RegisterType, float]:
    type_ = draw(st.sampled_from(TYPES))
    if type_ == "float32":
        return type_, draw(st.floats(width=32, allow_nan=False))
    if type_ == "float64":
        return type_, draw(st.floats(allow_nan=False))
    low, high = _int_range(type_)
    return type_, draw(st.integers(low, high))


# ── known vectors ────────────────────────────────────────────────────────────────────────────────────────


def test_known_vectors() -> None:
    assert decode([0x4366, 0x0000], "float32") == 230.0  # SDM: IEEE-754, high word first
    assert decode([0x0000, 0x4366], "float32", word_order="little") == 230.0
    assert decode([0x6643, 0x0000], "float32", byte_order="little") == 230.0
    assert decode([0x08FD, 0x0000], "int32", word_order="little") == 2301  # EM340: 230.1 V, LSW first
    assert decode([0xFFFF, 0xFFFE], "int32") == -2
    assert decode([0xFFFE, 0xFFFF], "int32", word_order="little") == -2
    assert decode([0xFFFF, 0xFFFE], "uint32") == 0xFFFFFFFE
    assert decode([0x8000], "int16") == -32768
    assert decode([0x0000, 0x0000, 0x0001, 0x2345], "uint64") == 0x12345  # ABB energy
    assert decode([0x3FF0, 0, 0, 0], "float64") == 1.0
    assert encode(230.0, "float32") == [0x4366, 0x0000]
    assert encode(2301, "int32", "little") == [0x08FD, 0x0000]
    with pytest.raises(ValueError, match="holds integers"):
        encode(1.5, "int32")
    with pytest.raises(ValueError, match="needs 2 registers"):
        decode([1], "float32")


# ── property tests ───────────────────────────────────────────────────────────────────────────────────────


@given(typed_values(), st.sampled_from(ORDERS), st.sampled_from(ORDERS))
def test_encode_decode_round_trip(tv: tuple[RegisterType, float], word_order: Order, byte_order: Order) -> None:
    type_, value = tv
    regs = encode(value, type_, word_order, byte_order)
    assert len(regs) == REGISTER_COUNT[type_]
    assert all(0 <= r <= 0xFFFF for r in regs)
    assert decode(regs, type_, word_order, byte_order) == value


@given(typed_values(), st.sampled_from(ORDERS), st.sampled_from(ORDERS))
def test_decode_agrees_with_pymodbus(tv: tuple[RegisterType, float], word_order: Order, byte_order: Order) -> None:
    """An independent encoder (pymodbus, plus a plain byte swap) must decode to the same value."""
    type_, value = tv
    reg = Register(0, type_, word_order, byte_order, 1.0)
    assert decode(pymodbus_encode(reg, value), type_, word_order, byte_order) == value


@given(st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4), st.sampled_from(TYPES), st.sampled_from(ORDERS))
def test_every_bit_pattern_decodes_like_struct(words: list[int], type_: RegisterType, word_order: Order) -> None:
    regs = words[: REGISTER_COUNT[type_]]
    ordered = regs if word_order == "big" else regs[::-1]
    raw = b"".join(w.to_bytes(2, "big") for w in ordered)
    fmt = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q"}
    fmt |= {"float32": "f", "float64": "d"}
    want = struct.unpack(">" + fmt[type_], raw)[0]
    got = decode(regs, type_, word_order)
    assert got == want or (math.isnan(got) and math.isnan(want))


@pytest.mark.parametrize("model", ["sdm630", "sdm120", "sdm72", "abb-b23", "em340"])
@given(data=st.data())
def test_shipped_maps_scale_values_back(model: str, data: st.DataObject) -> None:
    """Any in-range quantity, as the meter would encode it, comes back to the register's resolution."""
    mapping = meter_map(model)
    for quantity, reg in mapping.registers.items():
        if reg.type.startswith("float"):
            value = data.draw(st.floats(-1e6, 1e6, width=32), label=quantity)
            assert scaled(reg, pymodbus_encode(reg, value)) == pytest.approx(value, rel=1e-6)
        else:
            low, high = _int_range(reg.type)
            raw = data.draw(st.integers(max(low, -(2**40)), min(high, 2**40)), label=quantity)
            value = raw * reg.scale
            assert scaled(reg, pymodbus_encode(reg, value)) == pytest.approx(value, rel=1e-9)


@given(
    st.lists(st.tuples(st.integers(0, 400), st.sampled_from(TYPES)), min_size=1, max_size=20),
    st.integers(0, 10),
    st.integers(4, MAX_REGISTERS_PER_READ),
)
def test_block_plan_covers_every_register_within_limits(
    spec: list[tuple[int, RegisterType]], max_gap: int, max_count: int
) -> None:
    registers = [Register(address, type_) for address, type_ in spec]
    blocks = plan_blocks(registers, max_gap, max_count)
    assert all(any(reg in block for block in blocks) for reg in registers)
    assert all(1 <= b.count <= max_count for b in blocks)
    # Blocks ascend and do not overlap, unless a register straddles the limit (partly overlapping registers).
    for a, b in itertools.pairwise(blocks):
        assert a.start < b.start
        end = a.start + a.count
        assert end <= b.start or any(r.address < end < r.address + r.count for r in registers)
    # Every block starts and ends on a wanted register and spans no gap wider than max_gap.
    used = {r.address + i for r in registers for i in range(r.count)}
    for block in blocks:
        assert block.start in used and block.start + block.count - 1 in used
        run = 0
        for address in range(block.start, block.start + block.count):
            run = 0 if address in used else run + 1
            assert run <= max_gap


def test_block_plan_examples() -> None:
    regs = [Register(0), Register(2), Register(4), Register(10), Register(14, "uint16")]
    assert [(b.start, b.count) for b in plan_blocks(regs)] == [(0, 6), (10, 2), (14, 1)]
    assert [(b.start, b.count) for b in plan_blocks(regs, max_gap=3)] == [(0, 6), (10, 5)]
    assert [(b.start, b.count) for b in plan_blocks(regs, max_gap=4)] == [(0, 15)]
    assert [(b.start, b.count) for b in plan_blocks(regs, max_gap=4, max_count=4)] == [(0, 4), (4, 2), (10, 2), (14, 1)]


# ── the shipped maps are the spec's numbers (standards.md §5) ────────────────────────────────────────────

SDM3 = {
    "voltage_l1": 0x00,
    "voltage_l2": 0x02,
    "voltage_l3": 0x04,
    "current_l1": 0x06,
    "current_l2": 0x08,
    "current_l3": 0x0A,
    "power_l1": 0x0C,
    "power_l2": 0x0E,
    "power_l3": 0x10,
    "total_power": 0x34,
    "energy_import": 0x48,
}
SPEC: dict[str, tuple[int, dict[str, tuple[int, RegisterType, Order, float]]]] = {
    "sdm630": (4, {q: (a, "float32", "big", 1.0) for q, a in SDM3.items()}),
    "sdm72": (4, {q: (a, "float32", "big", 1.0) for q, a in SDM3.items()}),
    "sdm120": (
        4,
        {q: (SDM3[q], "float32", "big", 1.0) for q in ("voltage_l1", "current_l1", "power_l1", "energy_import")},
    ),
    "abb-b23": (
        3,
        {
            "voltage_l1": (0x5B00, "uint32", "big", 0.1),
            "voltage_l2": (0x5B02, "uint32", "big", 0.1),
            "voltage_l3": (0x5B04, "uint32", "big", 0.1),
            "current_l1": (0x5B0C, "uint32", "big", 0.01),
            "current_l2": (0x5B0E, "uint32", "big", 0.01),
            "current_l3": (0x5B10, "uint32", "big", 0.01),
            "total_power": (0x5B14, "int32", "big", 0.01),
            "power_l1": (0x5B16, "int32", "big", 0.01),
            "power_l2": (0x5B18, "int32", "big", 0.01),
            "power_l3": (0x5B1A, "int32", "big", 0.01),
            "energy_import": (0x5000, "uint64", "big", 0.01),
        },
    ),
    "em340": (
        4,
        {
            "voltage_l1": (0x00, "int32", "little", 0.1),
            "voltage_l2": (0x02, "int32", "little", 0.1),
            "voltage_l3": (0x04, "int32", "little", 0.1),
            "current_l1": (0x0C, "int32", "little", 0.001),
            "current_l2": (0x0E, "int32", "little", 0.001),
            "current_l3": (0x10, "int32", "little", 0.001),
            "power_l1": (0x12, "int32", "little", 0.1),
            "power_l2": (0x14, "int32", "little", 0.1),
            "power_l3": (0x16, "int32", "little", 0.1),
            "total_power": (0x28, "int32", "little", 0.1),
            "energy_import": (0x34, "int32", "little", 0.1),
        },
    ),
}


@pytest.mark.parametrize("model", sorted(SPEC))
def test_shipped_maps_match_the_spec(model: str) -> None:
    function_code, registers = SPEC[model]
    mapping = meter_map(model)
    assert mapping.function_code == function_code
    got = {q: (r.address, r.type, r.word_order, r.scale) for q, r in mapping.registers.items()}
    assert got == registers
    assert all(r.byte_order == "big" for r in mapping.registers.values())
    assert mapping.unavailable_all_ones == (model == "abb-b23")


def test_every_map_file_loads_and_config_models_exist() -> None:
    maps = builtin_maps()
    files = {p.stem for p in MAPS_DIR.glob("*.toml")}
    assert files <= set(maps)
    # The [meter] model choices of config.toml, except auto/sim which are not Modbus drivers.
    assert {"sdm630", "sdm120", "sdm72", "abb-b23", "em340", "custom"} <= set(available_models())
    assert meter_map("abb-b24") is meter_map("abb-b23")
    assert meter_map("SDM72D-M") is meter_map("sdm72")


def test_a_new_map_file_is_a_new_model(tmp_path: Path) -> None:
    (tmp_path / "tiny.toml").write_text(
        'name = "Tiny"\nfunction_code = 3\n[registers]\n'
        'power_l1 = { address = 1, type = "int16" }\nenergy_import = { address = 2, type = "uint32", scale = 0.001 }\n'
    )
    maps = builtin_maps(tmp_path)
    assert list(maps) == ["tiny"]
    assert maps["tiny"].registers["energy_import"] == Register(2, "uint32", "big", "big", 0.001)
    assert [(b.start, b.count) for b in maps["tiny"].blocks] == [(1, 3)]


# ── map validation ───────────────────────────────────────────────────────────────────────────────────────

GOOD: dict[str, Any] = {
    "function_code": 4,
    "registers": {"energy_import": {"address": 72}, "power_l1": {"address": 12}},
}


def test_minimal_custom_map() -> None:
    mapping = parse_map(GOOD)
    assert mapping.name == "custom"
    assert mapping.registers["energy_import"] == Register(72)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "unknown map keys: colour"),
        ({"function_code": 6}, "function_code: must be one of 3, 4"),
        ({"function_code": True}, "function_code: must be an integer"),
        ({"max_gap": -1}, "max_gap: must be 0 to 125"),
        ({"max_registers_per_read": 126}, "max_registers_per_read: must be 1 to 125"),
        ({"unavailable_all_ones": "yes"}, "unavailable_all_ones"),
        ({"defaults": {"typ": "int16"}}, "unknown defaults keys: typ"),
        ({"registers": {"energy_import": {"address": 1}, "power_l4": {"address": 3}}}, "unknown quantity 'power_l4'"),
        ({"registers": {"power_l1": {"address": 3}}}, "energy_import is required"),
        ({"registers": {"energy_import": {"address": 3}}}, "total_power or at least one power_lN"),
        ({"registers": {"energy_import": {"address": 3, "type": "float16"}, "total_power": {"address": 0}}}, "type"),
        ({"registers": {"energy_import": {"address": 3, "word_order": "middle"}, "total_power": {"address": 0}}}, "w"),
        ({"registers": {"energy_import": {"address": 3, "scale": 0}, "total_power": {"address": 0}}}, "scale"),
        ({"registers": {"energy_import": {"address": 3, "scale": "1"}, "total_power": {"address": 0}}}, "scale"),
        ({"registers": {"energy_import": {"address": 0xFFFF}, "total_power": {"address": 0}}}, "runs past"),
        ({"registers": {"energy_import": {"address": "72"}, "total_power": {"address": 0}}}, "address: must be an int"),
        ({"registers": {"energy_import": {"adress": 72}, "total_power": {"address": 0}}}, "unknown keys: adress"),
        ({"registers": {"energy_import": 72, "total_power": {"address": 0}}}, "must be a table"),
        ({"registers": None}, "registers: must be a table"),
    ],
)
def test_malformed_maps_are_rejected(change: dict[str, Any], message: str) -> None:
    with pytest.raises(MapError, match=message):
        parse_map({**GOOD, **change})


def test_quantities_cover_the_meter_reading() -> None:
    assert set(QUANTITIES) == {f"{k}_l{n}" for k in ("voltage", "current", "power") for n in (1, 2, 3)} | {
        "total_power",
        "energy_import",
    }
