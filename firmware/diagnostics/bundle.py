"""A diagnostics bundle: one ``.tar.gz`` with the logs, the journal, the redacted config and the session ledger.

Why tar.gz and not zip: the bundle is written and read on Linux (``tar xzf`` is on every charger, backend and
laptop), gzip compresses the text members as a whole stream (logs compress ~10x), and ``tarfile`` keeps file
modes and times; nobody needs zip's random access for a few small members.

Everything sits under one directory named like the file, with ``manifest.json`` listing every other member
with its size and sha256. The file is written under a temporary dot-name and renamed when complete, so a
file with the final name is always whole. Secrets never leave: the config goes through ``config.masked`` and
every text member is scrubbed of the literal secret values (AuthorizationKey, MQTT password).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from firmware import config as config_module
from firmware import logs as logs_module
from firmware import version as package_version
from firmware.config import Settings
from firmware.diagnostics import ledger

KINDS: Final = ("diagnostics", "securitylog")
JOURNAL_UNIT: Final = "evse.service"
JOURNAL_TIMEOUT_S: Final = 20.0

# Security-relevant records (SecurityLog): the connection to the CSMS (connect, TLS, Basic auth, drops), local
# authorization, firmware updates and signatures, certificates and keys. Matched against the whole line, so it
# works for our own log lines (``... INFO firmware.ocpp.connection: ...``) and journal lines alike.
SECURITY_PATTERN: Final = re.compile(
    r"\bfirmware\.(?:ocpp\.connection|auth|update|ocpp\.firmware|ocpp\.security)\b"
    r"|\b(?:TLS|SSL|certificates?|AuthorizationKey|authorization key|security profile|SecurityProfile"
    r"|Basic auth|unauthori[sz]ed|forbidden|signature|(?:Signed)?UpdateFirmware|firmware update|SecurityEvent)\b",
    re.IGNORECASE,
)


class BundleError(Exception):
    """The bundle could not be written (output directory missing or not writable, disk full)."""


@dataclass(frozen=True)
class TimeWindow:
    """Records from ``start`` to ``stop`` (both inclusive, aware datetimes); None = unbounded on that side."""

    start: datetime | None = None
    stop: datetime | None = None

    def __post_init__(self) -> None:
        for bound in (self.start, self.stop):
            if bound is not None and bound.tzinfo is None:
                raise ValueError("time window bounds must carry a time zone")

    @property
    def unbounded(self) -> bool:
        return self.start is None and self.stop is None

    def contains(self, when: datetime) -> bool:
        return (self.start is None or when >= self.start) and (self.stop is None or when <= self.stop)

    def as_dict(self) -> dict[str, str | None]:
        return {
            "start": None if self.start is None else _iso(self.start),
            "stop": None if self.stop is None else _iso(self.stop),
        }


def parse_timestamp(text: str) -> datetime:
    """An OCPP dateTime (RFC 3339: ``2026-11-27T05:00:00Z``, ``...+01:00``) as an aware UTC datetime.

    A time without a zone is taken as UTC (OCPP times are UTC). Anything else raises ValueError.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty timestamp")
    raw = text.strip()
    if raw[-1:] in ("Z", "z"):
        raw = raw[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"not an ISO 8601 timestamp: {text[:40]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError(f"timestamp out of range: {text[:40]!r}") from None


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def bundle_name(charger_id: str, now: datetime, kind: str = "diagnostics") -> str:
    """``<chargerid>-diagnostics-<UTC timestamp>.tar.gz`` (or ``-securitylog-``), the usual OCPP practice."""
    if kind not in KINDS:
        raise ValueError(f"unknown bundle kind {kind!r}")
    return f"{charger_id}-{kind}-{now.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}.tar.gz"


# --- log selection (pure) -------------------------------------------------------------------------------------


def select_records(
    lines: Iterable[str], window: TimeWindow, keep: Callable[[str], bool] | None = None
) -> Iterator[str]:
    """The lines of the records inside ``window`` (and accepted by ``keep``, tested on a record's first line).

    A record starts with an ISO 8601 timestamp; continuation lines (tracebacks) follow their record's verdict.
    Lines before the first timestamp are kept only when nothing restricts the selection.
    """
    verdict = window.unbounded and keep is None
    for line in lines:
        stamp = logs_module.line_time(line)
        if stamp is not None:
            verdict = window.contains(stamp) and (keep is None or keep(line))
        if verdict:
            yield line


def is_security_record(line: str) -> bool:
    """Whether a log or journal line belongs in a SecurityLog bundle (see :data:`SECURITY_PATTERN`)."""
    return SECURITY_PATTERN.search(line) is not None


def newest(lines: Iterable[str], max_bytes: int) -> tuple[bytes, bool]:
    """The newest whole lines that fit in ``max_bytes`` (UTF-8, newline-terminated), and whether any were cut."""
    kept: collections.deque[bytes] = collections.deque()
    total = 0
    cut = False
    for line in lines:
        data = (line + "\n").encode("utf-8", errors="replace")
        kept.append(data)
        total += len(data)
        while total > max_bytes and kept:
            total -= len(kept.popleft())
            cut = True
    return b"".join(kept), cut


def scrub(data: bytes, secrets: Sequence[str]) -> bytes:
    """``data`` with every literal occurrence of a secret replaced by the mask (longest secrets first)."""
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        data = data.replace(secret.encode("utf-8"), config_module.MASK.encode("ascii"))
    return data


# --- sources (I/O) --------------------------------------------------------------------------------------------


def journal_lines(
    window: TimeWindow, *, max_lines: int, unit: str = JOURNAL_UNIT, timeout_s: float = JOURNAL_TIMEOUT_S
) -> tuple[Iterator[str] | None, str | None]:
    """The unit's newest ``max_lines`` journal lines (UTC ISO timestamps), or None and why not.

    Never raises: the journal is optional (absent in containers, not readable without the right group).
    """
    exe = shutil.which("journalctl")
    if exe is None:
        return None, "journal: journalctl not available"
    argv = [exe, "--unit", unit, "--no-pager", "--quiet", "--utc", "--output", "short-iso-precise"]
    argv += ["--lines", str(max_lines)]
    if window.start is not None:
        argv += ["--since", window.start.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")]
    if window.stop is not None:
        argv += ["--until", window.stop.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")]
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout_s, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"journal: journalctl failed: {type(exc).__name__}: {exc}"
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", errors="replace").strip().splitlines()
        return None, f"journal: journalctl exited {proc.returncode}" + (f": {err[-1][:200]}" if err else "")
    text = proc.stdout.decode("utf-8", errors="replace")
    return iter(text.splitlines()), None


def versions() -> dict[str, Any]:
    """Package, Python and OS versions, for the bundle and for bug reports."""
    info: dict[str, Any] = {
        "pievse": package_version(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "kernel": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
    }
    with contextlib.suppress(OSError):
        os_release = platform.freedesktop_os_release()
        info["os"] = os_release.get("PRETTY_NAME") or os_release.get("NAME")
    for dist in ("ocpp", "websockets"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version as dist_version

            info[dist] = dist_version(dist)
    return info


# --- the bundle -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    sha256: str


@dataclass
class Bundle:
    """A finished bundle on disk."""

    path: Path
    size: int
    members: list[Member]
    notes: list[str] = field(default_factory=list)


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=False, default=str) + "\n").encode("utf-8")


def collect(
    settings: Settings,
    *,
    now: datetime,
    window: TimeWindow,
    kind: str,
    journal: bool,
) -> tuple[dict[str, bytes], list[str], dict[str, Any]]:
    """The member contents (name -> bytes, in order), notes about what is missing, and extra manifest facts."""
    cap = settings.diagnostics.max_log_kib * 1024
    keep = is_security_record if kind == "securitylog" else None
    members: dict[str, bytes] = {}
    notes: list[str] = []
    facts: dict[str, Any] = {}
    store_dir = Path(settings.store.dir)

    secrets = [settings.ocpp.authorization_key, settings.sharing.password]
    db_path = store_dir / ledger.DB_FILE_NAME
    ledger_csv: str | None = None
    status: dict[str, Any] = {"store": str(db_path)}
    try:
        with ledger.read_only(db_path) as conn:
            stored_key = ledger.stored_authorization_key(conn)
            if stored_key:
                secrets.append(stored_key)
            status["outbox"] = ledger.outbox_depth(conn)
            status["schema_version"] = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if kind == "diagnostics":
                ledger_csv = ledger.sessions_csv(conn)
    except (ledger.LedgerError, OSError) as exc:
        notes.append(f"store: {exc}")
    except Exception as exc:  # a damaged database must not stop the rest of the bundle
        notes.append(f"store: {type(exc).__name__}: {exc}")

    log_name = "logs/security.log" if kind == "securitylog" else "logs/evse.log"
    files = logs_module.log_files(store_dir)
    if files:
        data, cut = newest(select_records(logs_module.read_logs(store_dir), window, keep), cap)
        members[log_name] = data
        facts["log_files"] = [p.name for p in files]
        if cut:
            notes.append(f"{log_name}: cut to the newest {settings.diagnostics.max_log_kib} KiB")
    else:
        notes.append(f"logs: no {logs_module.LOG_FILE_NAME} files in {store_dir}")

    if journal:
        lines, why = journal_lines(window, max_lines=max(1000, cap // 40))
        if lines is None:
            notes.append(why or "journal: unavailable")
        else:
            data, cut = newest(select_records(lines, window, keep), cap)
            members["journal.txt"] = data
            if not data:
                notes.append(f"journal: no entries for {JOURNAL_UNIT} (or no right to read the system journal)")
            if cut:
                notes.append(f"journal.txt: cut to the newest {settings.diagnostics.max_log_kib} KiB")

    if kind == "diagnostics":
        members["config.json"] = _json(config_module.masked(settings))
        if ledger_csv is not None:
            members["sessions.csv"] = ledger_csv.encode("utf-8")
        members["status.json"] = _json(status)
    members["versions.json"] = _json(versions())
    for name in list(members):
        members[name] = scrub(members[name], secrets)
    return members, notes, facts


def write_bundle(
    settings: Settings,
    out_dir: str | Path,
    *,
    now: datetime,
    window: TimeWindow | None = None,
    kind: str = "diagnostics",
    name: str | None = None,
    journal: bool = True,
) -> Bundle:
    """Collect and write the bundle into ``out_dir``; returns it. Blocking: call it in a thread from asyncio.

    ``name`` (default :func:`bundle_name`) is fixed by the caller when it must be announced before the bundle
    exists (GetDiagnostics answers with the file name at once).
    """
    window = window or TimeWindow()
    name = name or bundle_name(settings.charger.id, now, kind)
    if not name.endswith(".tar.gz") or "/" in name or name.startswith("."):
        raise ValueError(f"bad bundle name {name!r}")
    top = name.removesuffix(".tar.gz")
    members, notes, facts = collect(settings, now=now, window=window, kind=kind, journal=journal)
    listed = [Member(n, len(d), hashlib.sha256(d).hexdigest()) for n, d in members.items()]
    manifest = {
        "format": 1,
        "charger_id": settings.charger.id,
        "kind": kind,
        "created_at": _iso(now),
        "window": window.as_dict(),
        "max_log_kib": settings.diagnostics.max_log_kib,
        **facts,
        "members": [{"name": m.name, "size": m.size, "sha256": m.sha256} for m in listed],
        "notes": notes,
    }
    out = Path(out_dir)
    mtime = now.timestamp()
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=out)
    except OSError as exc:
        raise BundleError(f"cannot write in {out}: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            with tarfile.open(fileobj=handle, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
                for member_name, data in [("manifest.json", _json(manifest)), *members.items()]:
                    info = tarfile.TarInfo(f"{top}/{member_name}")
                    info.size, info.mtime, info.mode = len(data), int(mtime), 0o644
                    info.uname = info.gname = "evse"
                    tar.addfile(info, io.BytesIO(data))
            handle.flush()
            os.fsync(handle.fileno())
        final = out / name
        os.replace(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BundleError(f"cannot write {out / name}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename itself is durable once the directory is synced
        dir_fd = os.open(out, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return Bundle(final, final.stat().st_size, listed, notes)
