"""The README's tables are documentation installers rely on: they must match the code."""

from __future__ import annotations

from pathlib import Path

from firmware.ocpp.v16.configuration import KEYS, KeySpec

README = Path(__file__).resolve().parents[1] / "README.md"


def row(k: KeySpec) -> str:
    kind = f"{k.kind} ({k.unit})" if k.unit else k.kind
    access = "W" if k.secret else ("R" if k.readonly else "RW")
    default = "" if k.secret else ('""' if k.default == "" else f"`{k.default}`")
    return f"| {k.name} | {kind} | {access} | {default} | {k.profile} |"


def test_ocpp_configuration_key_table_matches_the_keys() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index("| key | type | R/RW | default | profile |") + 2
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    assert table == [row(k) for k in KEYS]


def test_configuration_section_table_lists_every_section_and_key() -> None:
    """Each config.toml section has a row in the README's section table naming every one of its keys."""
    import dataclasses
    import re
    import typing

    from firmware.config import Settings

    rows: dict[str, str] = {}
    for line in README.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\| ((?:`\[\w+\]`(?:, )?)+) \| (.*) \|$", line)
        if match:
            for name in re.findall(r"`\[(\w+)\]`", match.group(1)):
                rows[name] = match.group(2)
    hints = typing.get_type_hints(Settings)
    for section in dataclasses.fields(Settings):
        assert section.name in rows, f"[{section.name}] has no row in the README's configuration table"
        cls = next(t for t in (*typing.get_args(hints[section.name]), hints[section.name]) if t is not type(None))
        for key in dataclasses.fields(cls):
            assert f"`{key.name}`" in rows[section.name], f"{section.name}.{key.name} missing from its README row"
