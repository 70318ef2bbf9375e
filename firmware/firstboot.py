"""First boot: apply the installer's ``evse-setup.toml`` from the SD card's boot partition to the charger.

Flashing the image and editing that one file is all an installer does, so this program must never leave a
half-configured charger: every value is checked (the charger's own config rules via `firmware.config`, plus the
Wi-Fi and system keys here) before anything is written. On a problem nothing changes, the setup file stays, and
``evse-setup.error.txt`` beside it names each bad key. On success the charger id, CSMS URL and key are edited into
config.toml as text (its comments and every other key are kept), the Wi-Fi becomes a NetworkManager keyfile, and
the setup file is renamed ``evse-setup.applied.toml`` with its secrets removed. Without a setup file it does
nothing, so the unit can run at every boot.

Run by ``evse-firstboot.service`` as
``/opt/evse/venv/bin/python -m firmware.firstboot --boot /boot/firmware --config /etc/evse/config.toml``.
Exit codes as for ``evse``: 0 applied or nothing to do, 1 a write failed, 2 a bad value in the setup file.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import re
import sys
import tempfile
import tomllib
import uuid
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware.config import ConfigError, load_settings

SETUP_NAME = "evse-setup.toml"
APPLIED_NAME = "evse-setup.applied.toml"
ERROR_NAME = "evse-setup.error.txt"
KEYFILE = Path("etc/NetworkManager/system-connections/evse-wifi.nmconnection")
CONNECTION_ID = "evse-wifi"
SCRUB_NOTE = "# evse-setup.toml was applied; its text is not kept (a secret matched other text in it)\n"

Value = str | int
KeyPath = tuple[str, ...]

#: What evse-setup.toml may contain, and the type of each key.
SETUP_KEYS: Mapping[str, Mapping[str, type]] = {
    "charger": {"id": str},
    "ocpp": {"url": str, "authorization_key": str, "security_profile": int},
    "wifi": {"country": str, "ssid": str, "psk": str},
    "system": {"hostname": str, "timezone": str},
}
#: The keys merged into config.toml; the others configure the operating system.
CONFIG_KEYS: frozenset[KeyPath] = frozenset(
    {("charger", "id"), ("ocpp", "url"), ("ocpp", "authorization_key"), ("ocpp", "security_profile")}
)
#: Removed from the applied copy left on the (world-readable, FAT) boot partition.
SECRET_KEYS: frozenset[KeyPath] = frozenset({("ocpp", "authorization_key"), ("wifi", "psk")})


class SetupError(Exception):
    """Every problem at once, each line starting with its dotted key (as `firmware.config.ConfigError`)."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


# ── TOML text editing ────────────────────────────────────────────────────────────────────────────────────
# Re-serialising config.toml would drop its comments, which document every key for the technician. So the
# text is edited in place: a small scanner finds where each key's value starts and ends (strings of all four
# kinds, arrays over several lines, inline tables), the value is replaced, and the result is parsed again and
# compared with what was intended, so an edit can never silently change anything else.

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_string(value: str) -> str:
    """A TOML basic string for any text: quotes, backslashes and control characters escaped."""
    out = []
    for char in value:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        elif 0xD800 <= ord(char) <= 0xDFFF:
            raise ValueError("a lone surrogate cannot be written as TOML")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def toml_value(value: Value) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"only strings and integers are edited, not {type(value).__name__}")
    return toml_string(value) if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class _Entry:
    """One `key = value` statement: its full dotted path and where its line and value lie in the text."""

    path: KeyPath
    line_start: int
    value_start: int
    value_end: int


@dataclass(frozen=True)
class _Header:
    path: KeyPath
    array: bool
    line_end: int  # just after the header line's newline


def _skip_string(text: str, i: int) -> int:
    """The index just after the string starting at text[i]."""
    for quote in ('"""', "'''"):
        if text.startswith(quote, i):
            j = i + 3
            while True:
                if quote == '"""' and text[j] == "\\":
                    j += 2
                    continue
                if text.startswith(quote, j):
                    j += 3
                    extra = 0
                    while extra < 2 and j < len(text) and text[j] == quote[0]:  # """a"""" ends with a quote
                        j += 1
                        extra += 1
                    return j
                j += 1
    quote = text[i]
    j = i + 1
    while text[j] != quote:
        j += 2 if quote == '"' and text[j] == "\\" else 1
    return j + 1


def _skip_value(text: str, i: int) -> int:
    """The index just after the value starting at text[i] (the text is valid TOML)."""
    char = text[i]
    if char in "\"'":
        return _skip_string(text, i)
    if char in "[{":
        depth = 0
        j = i
        while True:
            c = text[j]
            if c in "\"'":
                j = _skip_string(text, j)
                continue
            if c == "#":
                j = text.find("\n", j)
                continue
            if c in "[{":
                depth += 1
            elif c in "]}":
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
    end = len(text)
    for stop in ("#", "\n"):
        found = text.find(stop, i)
        if found != -1:
            end = min(end, found)
    return len(text[:end].rstrip()) if end > i else end


def _parse_key(text: str, i: int, stop: str) -> tuple[KeyPath, int]:
    """A dotted key starting at text[i] and ending at `stop` (``=`` or ``]``): its parts and the stop's index."""
    parts: list[str] = []
    while True:
        while text[i] in " \t":
            i += 1
        if text[i] in "\"'":
            end = _skip_string(text, i)
            parts.append(tomllib.loads(f"k = {text[i:end]}")["k"])
            i = end
        else:
            match = _BARE_KEY.match(text, i)
            if match is None:
                raise ValueError(f"cannot read a key at offset {i}")
            parts.append(match.group())
            i = match.end()
        while text[i] in " \t":
            i += 1
        if text[i] == ".":
            i += 1
            continue
        if not text.startswith(stop, i):
            raise ValueError(f"expected {stop!r} at offset {i}")
        return tuple(parts), i


def _scan(text: str) -> tuple[list[_Entry], list[_Header]]:
    """Every top-level statement of a valid TOML document (values inside inline tables are not entries)."""
    entries: list[_Entry] = []
    headers: list[_Header] = []
    table: KeyPath = ()
    i = 0
    while i < len(text):
        line_start = i
        while i < len(text) and text[i] in " \t\r":
            i += 1
        if i >= len(text):
            break
        if text[i] in "#\n":
            newline = text.find("\n", i)
            i = len(text) if newline == -1 else newline + 1
            continue
        if text[i] == "[":
            array = text.startswith("[[", i)
            table, close = _parse_key(text, i + (2 if array else 1), "]")
            close += 2 if array else 1
        else:
            key, equals = _parse_key(text, i, "=")
            start = equals + 1
            while text[start] in " \t":
                start += 1
            end = _skip_value(text, start)
            entries.append(_Entry(table + key, line_start, start, end))
            close = end
        newline = text.find("\n", close)
        i = len(text) if newline == -1 else newline + 1
        if text[line_start:].lstrip(" \t\r").startswith("["):
            headers.append(_Header(table, array, i))
    return entries, headers


def _set_in(data: dict[str, Any], path: KeyPath, value: Value) -> None:
    for part in path[:-1]:
        data = data.setdefault(part, {})
    data[path[-1]] = value


def set_keys(text: str, values: Mapping[KeyPath, Value]) -> str:
    """`text` with each ``section.key`` set to its value, comments and all other keys unchanged.

    A key that exists gets its value replaced in place (a comment after it stays); a missing key goes right
    under its table's header, and a missing table is appended. Raises ValueError when the result would not parse
    to exactly the intended document (e.g. the table is written as an inline table).
    """
    want = copy.deepcopy(tomllib.loads(text))
    for path, value in values.items():
        if len(path) != 2:
            raise ValueError(f"only section.key paths are edited, not {'.'.join(path)}")
        _set_in(want, path, value)
        entries, headers = _scan(text)
        found = [e for e in entries if e.path == path]
        line = f"{path[1] if _BARE_KEY.fullmatch(path[1]) else toml_string(path[1])} = {toml_value(value)}\n"
        if found:
            entry = found[-1]
            text = text[: entry.value_start] + toml_value(value) + text[entry.value_end :]
            continue
        header = [h for h in headers if h.path == path[:1] and not h.array]
        if header:
            at = header[0].line_end
            prefix = "" if at == 0 or text[at - 1] == "\n" else "\n"
            text = text[:at] + prefix + line + text[at:]
        else:
            text = (text if not text or text.endswith("\n") else text + "\n") + f"\n[{path[0]}]\n{line}"
    try:
        got = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"editing the TOML text broke it ({exc})") from None
    if got != want:
        raise ValueError("editing the TOML text would change more than the keys asked for")
    return text


def remove_keys(text: str, paths: Sequence[KeyPath], note: str = "removed after applying") -> str:
    """`text` with each key's statement replaced by a comment saying so (the other lines are kept)."""
    for path in paths:
        for entry in reversed([e for e in _scan(text)[0] if e.path == path]):
            end = text.find("\n", entry.value_end)
            end = len(text) if end == -1 else end
            text = text[: entry.line_start] + f"# {'.'.join(path)}: {note}" + text[end:]
    return text


# ── the setup file ───────────────────────────────────────────────────────────────────────────────────────
_COUNTRY = re.compile(r"[A-Z]{2}")
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_HEX64 = re.compile(r"[0-9A-Fa-f]{64}")


def _check_system(setup: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Rules for the keys that do not go into config.toml (messages never show a secret's value)."""
    errors: list[str] = []
    wifi = setup.get("wifi", {})
    ssid, psk, country = wifi.get("ssid"), wifi.get("psk"), wifi.get("country")
    if ssid is not None and not 1 <= len(ssid.encode()) <= 32:
        errors.append(f"wifi.ssid: must be 1 to 32 bytes long (got {len(ssid.encode())})")
    if psk is not None:
        if ssid is None:
            errors.append("wifi.psk: given without wifi.ssid")
        if not (_HEX64.fullmatch(psk) or (8 <= len(psk) <= 63 and all(" " <= c <= "~" for c in psk))):
            errors.append("wifi.psk: must be 8 to 63 printable ASCII characters (or 64 hex digits)")
    if country is not None and not _COUNTRY.fullmatch(country):
        errors.append(f'wifi.country: {country!r} is not a two-letter country code such as "DE"')
    if ssid is not None and country is None:
        errors.append('wifi.country: needed with wifi.ssid (the radio stays off without it), e.g. "DE"')
    system = setup.get("system", {})
    hostname = system.get("hostname")
    if hostname is not None and not _HOSTNAME.fullmatch(hostname):
        errors.append(f"system.hostname: {hostname!r} must be 1 to 63 letters, digits and inner '-'")
    zone = system.get("timezone")
    if zone is not None:
        try:
            if ".." in zone or zone.startswith("/"):
                raise ValueError(zone)
            zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            errors.append(f'system.timezone: {zone!r} is not a known IANA time zone (e.g. "Europe/Berlin")')
    return errors


def read_setup(path: Path) -> dict[str, dict[str, Any]]:
    """The setup file's values, each checked for its type and, for Wi-Fi and system, its value."""
    setup, errors = _read_setup(path)
    if errors:
        raise SetupError(errors)
    return setup


def _read_setup(path: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The well-typed values and the problems; raises SetupError only when the file is not TOML at all."""
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SetupError([f"{SETUP_NAME}: not valid TOML: {exc}"]) from None
    errors: list[str] = []
    setup: dict[str, dict[str, Any]] = {}
    for section, table in data.items():
        if section not in SETUP_KEYS:
            errors.append(f"{section}: unknown section (known: {', '.join(SETUP_KEYS)})")
            continue
        if not isinstance(table, dict):
            errors.append(f"{section}: expected a table")
            continue
        for key, value in table.items():
            kind = SETUP_KEYS[section].get(key)
            if kind is None:
                errors.append(f"{section}.{key}: unknown key (known: {', '.join(SETUP_KEYS[section])})")
            elif isinstance(value, bool) or not isinstance(value, kind):
                errors.append(f"{section}.{key}: expected {'a string' if kind is str else 'an integer'}")
            else:
                setup.setdefault(section, {})[key] = value
    errors.extend(_check_system(setup))
    return setup, errors


def scrubbed(text: str, setup: Mapping[str, Mapping[str, Any]]) -> str:
    """The setup file's text without its secrets; re-written plainly if a secret would survive the text edit."""
    secrets = [setup[s][k] for s, k in SECRET_KEYS if setup.get(s, {}).get(k)]
    try:
        out = remove_keys(text, sorted(SECRET_KEYS))
        data = tomllib.loads(out)
    except (ValueError, tomllib.TOMLDecodeError, IndexError):
        out, data = "", {"x": {"psk": None}}
    if any(k in data.get(s, {}) for s, k in SECRET_KEYS) or any(secret in out for secret in secrets):
        lines = ["# evse-setup.toml as applied (secrets removed)"]
        for section, table in setup.items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in table.items() if (section, k) not in SECRET_KEYS]
        out = "\n".join(lines) + "\n"
    if any(secret in out for secret in secrets):  # a secret that is also a section name, an SSID, ...
        out = SCRUB_NOTE
    return out


# ── writing ──────────────────────────────────────────────────────────────────────────────────────────────
def _keyfile_value(value: str) -> str:
    """A GLib key-file value: backslashes escaped, and edge spaces as \\s (GLib strips them otherwise)."""
    value = value.replace("\\", "\\\\")
    lead = len(value) - len(value.lstrip(" "))
    value = "\\s" * lead + value[lead:]
    trail = len(value) - len(value.rstrip(" "))
    return value[: len(value) - trail] + "\\s" * trail if trail else value


def nm_keyfile(ssid: str, psk: str | None) -> str:
    """A NetworkManager keyfile for a WPA-PSK (or open) network that connects automatically."""
    # NetworkManager reads "ssid=" as text, or as bytes when written "65;66;". Anything outside a plain set
    # of characters is written as bytes, so no SSID can be misread.
    plain = re.fullmatch(r"[A-Za-z0-9_.-][A-Za-z0-9 _.-]*[A-Za-z0-9_.-]|[A-Za-z0-9_.-]", ssid)
    ssid_value = ssid if plain else "".join(f"{b};" for b in ssid.encode())
    lines = [
        "[connection]",
        f"id={CONNECTION_ID}",
        f"uuid={uuid.uuid5(uuid.NAMESPACE_URL, 'pievse:' + CONNECTION_ID)}",
        "type=wifi",
        "autoconnect=true",
        "",
        "[wifi]",
        "mode=infrastructure",
        f"ssid={ssid_value}",
        "",
    ]
    if psk is not None:
        lines += ["[wifi-security]", "key-mgmt=wpa-psk", f"psk={_keyfile_value(psk)}", ""]
    lines += ["[ipv4]", "method=auto", "", "[ipv6]", "addr-gen-mode=default", "method=auto", ""]
    return "\n".join(lines)


def _write(path: Path, text: str, mode: int | None = None) -> None:
    """Atomic replace; keeps the old file's mode and owner unless a mode is given (a crash leaves old or new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.stat() if path.exists() else None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        elif old is not None:  # best effort: FAT (the boot partition) refuses most mode changes
            with contextlib.suppress(OSError):
                os.chmod(tmp, old.st_mode & 0o7777)
        if old is not None and os.geteuid() == 0:
            with contextlib.suppress(OSError):
                os.chown(tmp, old.st_uid, old.st_gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _cmdline_with_country(cmdline: str, country: str) -> str:
    """cmdline.txt (one line) with cfg80211.ieee80211_regdom set: Raspberry Pi OS keeps Wi-Fi off without it."""
    words = [w for w in cmdline.split() if not w.startswith("cfg80211.ieee80211_regdom=")]
    return " ".join([*words, f"cfg80211.ieee80211_regdom={country}"]) + "\n"


def _hosts_with(hosts: str, hostname: str) -> str:
    lines = [line for line in hosts.splitlines() if not line.startswith("127.0.1.1")]
    return "\n".join([*lines, f"127.0.1.1\t{hostname}"]) + "\n"


def _check_config(text: str, config: Path) -> list[str]:
    """The config rules' errors for the merged text, checked from a file beside the real one."""
    fd, tmp = tempfile.mkstemp(dir=config.parent, prefix=f".{config.name}.", suffix=".check")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        load_settings(tmp)
    except ConfigError as exc:
        return [line.replace(tmp, str(config)) for line in exc.errors]
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return []


def _merged_config(setup: Mapping[str, Mapping[str, Any]], config: Path) -> str:
    """config.toml's text with the setup's values in it; raises SetupError naming the keys when it is invalid."""
    values: dict[KeyPath, Value] = {
        (s, k): v for s, table in setup.items() for k, v in table.items() if (s, k) in CONFIG_KEYS
    }
    try:
        with config.open(encoding="utf-8-sig", newline="") as f:  # keeps CRLF lines as they are
            text = f.read()
    except OSError as exc:
        raise SetupError([f"config: {config}: cannot read ({exc.strerror or exc})"]) from None
    try:
        merged = set_keys(text, values)
    except (ValueError, IndexError, tomllib.TOMLDecodeError) as exc:  # TOMLDecodeError: the file was broken
        raise SetupError([f"config: {config}: cannot edit it safely: {exc}"]) from None
    errors = _check_config(merged, config)
    ocpp = tomllib.loads(merged).get("ocpp", {})
    if setup.get("ocpp", {}).get("authorization_key") and ocpp.get("security_profile", 0) not in (1, 2):
        errors.append("ocpp.authorization_key: only used with ocpp.security_profile = 1 or 2; set it too")
    if errors:
        raise SetupError(errors)
    return merged


def apply(boot: Path, config: Path, root: Path) -> int:
    """Applies boot/evse-setup.toml; see the module doc. Returns the exit code."""
    setup_file, error_file = boot / SETUP_NAME, boot / ERROR_NAME
    if not setup_file.exists():
        print(f"firstboot: no {setup_file}: nothing to apply")
        return 0
    try:
        setup, errors = _read_setup(setup_file)
        if not setup and not errors:  # the unedited template: keep it for the installer
            print(f"firstboot: {setup_file} sets no value: nothing to apply")
            return 0
        merged = ""
        try:  # the config's own rules too, so the installer sees every problem in one go
            merged = _merged_config(setup, config)
        except SetupError as exc:
            errors += exc.errors
        if errors:
            raise SetupError(errors)
    except SetupError as exc:
        report = (
            f"{SETUP_NAME} was NOT applied and nothing was changed. Fix these keys in {SETUP_NAME}, then restart:\n"
            + "".join(f"  {line}\n" for line in exc.errors)
        )
        _write(error_file, report)
        print(report, end="", file=sys.stderr)
        return 2

    wifi, system = setup.get("wifi", {}), setup.get("system", {})
    if "ssid" in wifi:
        _write(root / KEYFILE, nm_keyfile(wifi["ssid"], wifi.get("psk")), mode=0o600)
    if "country" in wifi and (boot / "cmdline.txt").exists():
        _write(boot / "cmdline.txt", _cmdline_with_country((boot / "cmdline.txt").read_text(), wifi["country"]))
    if "hostname" in system:
        _write(root / "etc/hostname", system["hostname"] + "\n", mode=0o644)
        hosts = root / "etc/hosts"
        _write(
            hosts, _hosts_with(hosts.read_text() if hosts.exists() else "127.0.0.1\tlocalhost\n", system["hostname"])
        )
    if "timezone" in system:
        _write(root / "etc/timezone", system["timezone"] + "\n", mode=0o644)
        localtime = root / "etc/localtime"
        with contextlib.suppress(FileNotFoundError):
            localtime.unlink()
        localtime.symlink_to(Path("/usr/share/zoneinfo") / system["timezone"])
    _write(config, merged)
    _write(boot / APPLIED_NAME, scrubbed(setup_file.read_text(encoding="utf-8-sig"), setup))
    setup_file.unlink()
    with contextlib.suppress(FileNotFoundError):
        error_file.unlink()
    applied = ", ".join(f"{s}.{k}" for s, table in setup.items() for k in table)
    print(f"firstboot: applied {applied or 'nothing (empty file)'}; left {boot / APPLIED_NAME}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firmware.firstboot", description=__doc__.split("\n")[0])
    parser.add_argument("--boot", type=Path, default=Path("/boot/firmware"), help="the FAT boot partition")
    parser.add_argument("--config", type=Path, default=Path("/etc/evse/config.toml"), help="the charger's config")
    parser.add_argument("--root", type=Path, default=Path("/"), help="where etc/NetworkManager, etc/hostname live")
    args = parser.parse_args(argv)
    try:
        return apply(args.boot, args.config, args.root)
    except OSError as exc:
        print(f"firstboot: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
