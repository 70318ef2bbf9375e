"""Meter register maps as data, and the decoding of Modbus registers into numbers.

A map says, per quantity, where the value lives (register address), how its bits are laid out
(type, word order, byte order) and how to scale it into V, A, W or kWh. The shipped maps are TOML
files in ``maps/``; adding a meter is adding a file. A ``custom`` map is the same shape as a
plain dict (as ``tomllib`` or a ``[meter.custom_map]`` table in config.toml would give it)::

    {
        "name": "My meter",                  # optional, for messages; default "custom"
        "function_code": 4,                  # 3 = holding registers, 4 = input registers
        "max_gap": 0,                        # optional: unused registers a single request may span (default 0)
        "max_registers_per_read": 125,       # optional: 1..125, the meter's request size limit (default 125)
        "unavailable_all_ones": False,       # optional: a per-phase value with all bits set reads as None
        "defaults": {                        # optional: applies to every register unless it says otherwise
            "type": "float32",               # int16 uint16 int32 uint32 int64 uint64 float32 float64
            "word_order": "big",             # "big" = most significant register first, "little" = LSW first
            "byte_order": "big",             # within one register; "big" is the Modbus norm
            "scale": 1.0,                    # raw value x scale = V, A, W or kWh
        },
        "registers": {                       # quantity -> {"address": int, and any of the keys of "defaults"}
            "voltage_l1": {"address": 0},    # voltage_l1..l3 (V), current_l1..l3 (A), power_l1..l3 (W)
            "total_power": {"address": 52},  # W, signed; optional if any power_lN is mapped (then their sum)
            "energy_import": {"address": 72},  # kWh (scale it so), required
        },
    }

Addresses are PDU addresses (0-based: input register "30001" is 0). Unknown keys are errors, so a
typo in a map fails at start-up rather than reading the wrong register.
"""

from __future__ import annotations

import math
import struct
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, cast, get_args

RegisterType = Literal["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]
Order = Literal["big", "little"]

#: The quantities a map may locate, in :class:`hal.interfaces.MeterReading` terms.
QUANTITIES: Final = (
    "voltage_l1",
    "voltage_l2",
    "voltage_l3",
    "current_l1",
    "current_l2",
    "current_l3",
    "power_l1",
    "power_l2",
    "power_l3",
    "total_power",
    "energy_import",
)
#: Registers per value of each type.
REGISTER_COUNT: Final[Mapping[RegisterType, int]] = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "int64": 4,
    "uint64": 4,
    "float32": 2,
    "float64": 4,
}
#: The Modbus limit for one FC 0x03/0x04 request (125 registers fit a 256-byte RTU frame).
MAX_REGISTERS_PER_READ: Final = 125
MAPS_DIR: Final = Path(__file__).with_name("maps")

_TOP_KEYS: Final = frozenset(
    {"name", "aliases", "function_code", "max_gap", "max_registers_per_read", "unavailable_all_ones"}
    | {"defaults", "registers"}
)
_LAYOUT_KEYS: Final = frozenset({"type", "word_order", "byte_order", "scale"})


@dataclass(frozen=True, slots=True)
class Register:
    """Where one quantity lives and how to turn its registers into a number."""

    address: int
    type: RegisterType = "float32"
    word_order: Order = "big"
    byte_order: Order = "big"
    scale: float = 1.0

    @property
    def count(self) -> int:
        return REGISTER_COUNT[self.type]


@dataclass(frozen=True, slots=True)
class Block:
    """One contiguous read request: ``count`` registers from ``start``."""

    start: int
    count: int

    def __contains__(self, register: object) -> bool:
        return (
            isinstance(register, Register)
            and self.start <= register.address
            and register.address + register.count <= self.start + self.count
        )


@dataclass(frozen=True, slots=True)
class MeterMap:
    """A meter model's register map plus the read requests planned from it."""

    name: str
    function_code: int
    registers: Mapping[str, Register]
    blocks: tuple[Block, ...]
    unavailable_all_ones: bool = False


class MapError(ValueError):
    """A register map is malformed; the message names the offending key."""


def decode(regs: Sequence[int], type_: RegisterType, word_order: Order = "big", byte_order: Order = "big") -> float:
    """The number held in ``regs`` (16-bit register values as read, first register first)."""
    if len(regs) != REGISTER_COUNT[type_]:
        raise ValueError(f"{type_} needs {REGISTER_COUNT[type_]} registers, got {len(regs)}")
    words = list(regs) if word_order == "big" else list(reversed(regs))
    raw = b"".join(word.to_bytes(2, byte_order) for word in words)
    if type_ == "float32":
        return cast(float, struct.unpack(">f", raw)[0])
    if type_ == "float64":
        return cast(float, struct.unpack(">d", raw)[0])
    return int.from_bytes(raw, "big", signed=not type_.startswith("u"))


def encode(value: float, type_: RegisterType, word_order: Order = "big", byte_order: Order = "big") -> list[int]:
    """The registers holding ``value``: the inverse of :func:`decode` (for tests and simulators)."""
    size = 2 * REGISTER_COUNT[type_]
    if type_ == "float32":
        raw = struct.pack(">f", value)
    elif type_ == "float64":
        raw = struct.pack(">d", value)
    else:
        if not float(value).is_integer():
            raise ValueError(f"{type_} holds integers, got {value!r}")
        raw = int(value).to_bytes(size, "big", signed=not type_.startswith("u"))
    words = [int.from_bytes(raw[i : i + 2], byte_order) for i in range(0, size, 2)]
    return words if word_order == "big" else list(reversed(words))


def is_all_ones(regs: Sequence[int]) -> bool:
    """True when every bit is set: the ABB "not available" marker."""
    return all(word == 0xFFFF for word in regs)


def plan_blocks(
    registers: Sequence[Register], max_gap: int = 0, max_count: int = MAX_REGISTERS_PER_READ
) -> list[Block]:
    """Merge the registers into as few requests as the meter allows, to keep bus time low.

    Two values share a request when at most ``max_gap`` unused registers lie between them and the
    request stays within ``max_count`` registers (a register that partly overlaps a full request
    gets a request of its own, overlapping it). Only set ``max_gap`` for meters that answer the
    registers in between (many answer exception 02 for an undefined address inside a request).
    """
    blocks: list[Block] = []
    for reg in sorted(registers, key=lambda r: (r.address, r.count)):
        end = reg.address + reg.count
        if blocks:
            last = blocks[-1]
            last_end = last.start + last.count
            if reg.address <= last_end + max_gap and max(end, last_end) - last.start <= max_count:
                blocks[-1] = Block(last.start, max(end, last_end) - last.start)
                continue
        if reg.count > max_count:
            raise MapError(f"a {reg.type} at {reg.address:#06x} does not fit a {max_count}-register request")
        blocks.append(Block(reg.address, reg.count))
    return blocks


def parse_map(data: Mapping[str, object], *, default_name: str = "custom") -> MeterMap:
    """Validate a map in the documented dict shape and plan its read requests."""
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise MapError(f"unknown map keys: {', '.join(sorted(unknown))}")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise MapError("name: must be a non-empty string")
    aliases = data.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise MapError(f"{name}: aliases must be a list of strings")
    function_code = _int(data.get("function_code"), f"{name}: function_code", choices=(3, 4))
    max_gap = _int(data.get("max_gap", 0), f"{name}: max_gap", low=0, high=MAX_REGISTERS_PER_READ)
    max_count = _int(
        data.get("max_registers_per_read", MAX_REGISTERS_PER_READ),
        f"{name}: max_registers_per_read",
        low=1,
        high=MAX_REGISTERS_PER_READ,
    )
    all_ones = data.get("unavailable_all_ones", False)
    if not isinstance(all_ones, bool):
        raise MapError(f"{name}: unavailable_all_ones must be true or false")
    defaults = _table(data.get("defaults", {}), f"{name}: defaults")
    unknown = set(defaults) - _LAYOUT_KEYS
    if unknown:
        raise MapError(f"{name}: unknown defaults keys: {', '.join(sorted(unknown))}")
    table = _table(data.get("registers"), f"{name}: registers")
    registers: dict[str, Register] = {}
    for quantity, spec in table.items():
        if quantity not in QUANTITIES:
            raise MapError(f"{name}: unknown quantity {quantity!r} (known: {', '.join(QUANTITIES)})")
        registers[quantity] = _register(defaults, _table(spec, f"{name}: registers.{quantity}"), f"{name}: {quantity}")
    if "energy_import" not in registers:
        raise MapError(f"{name}: registers.energy_import is required")
    if "total_power" not in registers and not any(f"power_l{n}" in registers for n in (1, 2, 3)):
        raise MapError(f"{name}: needs registers.total_power or at least one power_lN")
    blocks = plan_blocks(list(registers.values()), max_gap, max_count)
    return MeterMap(name, function_code, registers, tuple(blocks), all_ones)


def load_map_file(path: Path) -> tuple[MeterMap, list[str]]:
    """A shipped map file and the model names it answers to (file stem plus its aliases)."""
    with path.open("rb") as f:
        data = tomllib.load(f)
    meter_map = parse_map(data, default_name=path.stem)
    aliases = cast(list[str], data.get("aliases", []))
    return meter_map, [path.stem, *aliases]


def builtin_maps(directory: Path = MAPS_DIR) -> dict[str, MeterMap]:
    """Every shipped map by model name (lower case), aliases included."""
    found: dict[str, MeterMap] = {}
    for path in sorted(directory.glob("*.toml")):
        meter_map, names = load_map_file(path)
        for model in names:
            key = model.lower()
            if key in found or key == "custom":
                raise MapError(f"{path.name}: model name {model!r} is already taken")
            found[key] = meter_map
    return found


def iter_values(meter_map: MeterMap, blocks: Sequence[Sequence[int]]) -> Iterator[tuple[str, Register, list[int]]]:
    """Each quantity with its raw registers, cut out of the blocks as read (in ``meter_map.blocks`` order)."""
    if len(blocks) != len(meter_map.blocks):
        raise ValueError(f"expected {len(meter_map.blocks)} blocks, got {len(blocks)}")
    for quantity, reg in meter_map.registers.items():
        for block, values in zip(meter_map.blocks, blocks, strict=True):
            if reg in block:
                offset = reg.address - block.start
                yield quantity, reg, list(values[offset : offset + reg.count])
                break
        else:  # pragma: no cover - plan_blocks covers every register
            raise AssertionError(f"{quantity} is in no block")


def scaled(reg: Register, regs: Sequence[int]) -> float:
    """The register's value in V, A, W or kWh."""
    return decode(regs, reg.type, reg.word_order, reg.byte_order) * reg.scale


def _register(defaults: Mapping[str, object], spec: Mapping[str, object], where: str) -> Register:
    unknown = set(spec) - _LAYOUT_KEYS - {"address"}
    if unknown:
        raise MapError(f"{where}: unknown keys: {', '.join(sorted(unknown))}")
    merged = {**defaults, **spec}
    address = _int(merged.get("address"), f"{where}: address", low=0, high=0xFFFF)
    type_ = merged.get("type", "float32")
    if type_ not in get_args(RegisterType):
        raise MapError(f"{where}: type must be one of {', '.join(get_args(RegisterType))}, got {type_!r}")
    orders: dict[str, Order] = {}
    for key in ("word_order", "byte_order"):
        value = merged.get(key, "big")
        if value not in ("big", "little"):
            raise MapError(f"{where}: {key} must be 'big' or 'little', got {value!r}")
        orders[key] = value
    scale = merged.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) or scale == 0:
        raise MapError(f"{where}: scale must be a finite non-zero number, got {scale!r}")
    reg = Register(address, cast(RegisterType, type_), orders["word_order"], orders["byte_order"], float(scale))
    if address + reg.count > 0x10000:
        raise MapError(f"{where}: a {type_} at {address:#06x} runs past register 0xFFFF")
    return reg


def _int(value: object, where: str, *, low: int = 0, high: int = 0xFFFF, choices: tuple[int, ...] = ()) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MapError(f"{where}: must be an integer, got {value!r}")
    if choices and value not in choices:
        raise MapError(f"{where}: must be one of {', '.join(map(str, choices))}, got {value}")
    if not low <= value <= high:
        raise MapError(f"{where}: must be {low} to {high}, got {value}")
    return value


def _table(value: object, where: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise MapError(f"{where}: must be a table")
    return cast(Mapping[str, object], value)
