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
