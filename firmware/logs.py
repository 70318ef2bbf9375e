"""Logging: stderr for journald, plus a size-rotated file in the store directory that ``evse logs`` reads.

Stderr lines carry a ``<N>`` syslog priority prefix, which journald turns into the entry's priority, and no
timestamp (journald adds its own). The file exists because Raspberry Pi OS keeps the journal in RAM by
default: the file survives a reboot. Its lines start with an ISO 8601 UTC timestamp so ``evse logs --since``
can filter.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
import time as _time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import BinaryIO, TextIO

LOG_FILE_NAME = "evse.log"

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

_installed: list[logging.Handler] = []
"""Handlers this module put on the root logger, so a second :func:`setup_logging` replaces exactly them."""


def syslog_priority(levelno: int) -> int:
    """The syslog priority journald should record for a Python log level."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class JournalFormatter(logging.Formatter):
    """``<N>logger.name: message``; every line of a multi-line record (traceback) gets the prefix too,
    because journald reads the priority per line."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.name}: {super().format(record)}"
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.splitlines() or [""])


class FileFormatter(logging.Formatter):
    """``2026-11-27T05:14:26.123+00:00 INFO logger.name: message`` (UTC, so lines sort as text)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        return f"{stamp} {record.levelname} {record.name}: {super().format(record)}"


def setup_logging(
    level: str = "info",
    log_dir: str | Path | None = None,
    *,
    max_bytes: int = 1_048_576,
    backup_count: int = 5,
    stream: TextIO | None = None,
) -> None:
    """Configure the root logger; calling it again replaces the handlers an earlier call installed."""
    try:
        levelno = LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r} (use one of: {', '.join(LEVELS)})") from None
    root = logging.getLogger()
    for handler in _installed:
        root.removeHandler(handler)
        handler.close()
    _installed.clear()
    root.setLevel(levelno)

    stderr = logging.StreamHandler(stream if stream is not None else sys.stderr)
    stderr.setFormatter(JournalFormatter())
    root.addHandler(stderr)
    _installed.append(stderr)

    if log_dir is None:
        return
    directory = Path(log_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(
            directory / LOG_FILE_NAME, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8"
        )
    except OSError as exc:
        logging.getLogger(__name__).warning(
            "cannot write log files in %s (%s); logging to stderr only", directory, exc.strerror or exc
        )
        return
    file_handler.setFormatter(FileFormatter())
    root.addHandler(file_handler)
    _installed.append(file_handler)


# --- reading ------------------------------------------------------------------------------------------------


def log_files(log_dir: str | Path) -> list[Path]:
    """The existing log files, oldest first: ``evse.log.N`` ... ``evse.log.1``, ``evse.log``."""
    directory = Path(log_dir)
    rotated: list[tuple[int, Path]] = []
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return []
    for entry in entries:
        suffix = entry.name.removeprefix(LOG_FILE_NAME + ".")
        if suffix != entry.name and suffix.isdigit():
            rotated.append((int(suffix), entry))
    files = [path for _, path in sorted(rotated, reverse=True)]
    current = directory / LOG_FILE_NAME
    if current.exists():
        files.append(current)
    return files


def line_time(line: str) -> datetime | None:
    """The timestamp a record line starts with, or None for a continuation line (traceback, long text)."""
    stamp, _, _ = line.partition(" ")
    if len(stamp) < 20 or not stamp[:4].isdigit() or stamp[4] != "-":
        return None
    try:
        parsed = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


class _SinceFilter:
    """Keeps records at or after ``since``; continuation lines follow the verdict of their record."""

    def __init__(self, since: datetime | None) -> None:
        self.since = since if since is None or since.tzinfo is not None else since.astimezone()
        self.keep = since is None

    def __call__(self, line: str) -> bool:
        stamp = line_time(line)
        if stamp is not None:
            self.keep = self.since is None or stamp >= self.since
        return self.keep


def _lines(path: Path) -> Iterator[str]:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                yield line.rstrip("\r\n")
    except FileNotFoundError:
        return  # rotated away between listing and opening


def read_logs(log_dir: str | Path, since: datetime | None = None) -> Iterator[str]:
    """Yield the log lines (without newline) of all rotated files, oldest first, from ``since`` on."""
    keep = _SinceFilter(since)
    for path in log_files(log_dir):
        for line in _lines(path):
            if keep(line):
                yield line


def follow_logs(
    log_dir: str | Path,
    since: datetime | None,
    *,
    poll: float = 0.5,
    stop: Callable[[], bool] | None = None,
) -> Iterator[str]:
    """Like :func:`read_logs`, then keep yielding lines as they are written (``tail -F``), until ``stop()``.

    Survives rotation (the file renamed away and a new one created) and truncation.
    """
    keep = _SinceFilter(since)
    current = Path(log_dir) / LOG_FILE_NAME
    for path in log_files(log_dir):
        if path != current:
            for line in _lines(path):
                if keep(line):
                    yield line

    reader = _Tail(current)
    try:
        while True:
            got_any = False
            for line in reader.read():
                got_any = True
                if keep(line):
                    yield line
            if got_any:
                continue
            if stop is not None and stop():
                return
            _time.sleep(poll)
    finally:
        reader.close()


class _Tail:
    """Reads whole new lines from a file that may be rotated (renamed and recreated) or truncated."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: BinaryIO | None = None
        self._inode: int | None = None
        self._partial = b""

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _drain(self) -> list[str]:
        assert self._handle is not None
        lines: list[str] = []
        for chunk in iter(self._handle.readline, b""):
            self._partial += chunk
            if self._partial.endswith(b"\n"):
                lines.append(self._partial.decode("utf-8", errors="replace").rstrip("\r\n"))
                self._partial = b""
        return lines

    def read(self) -> list[str]:
        """The complete lines written since the last call (possibly none)."""
        if self._handle is None:
            try:
                self._handle = self.path.open("rb")
            except FileNotFoundError:
                return []
            self._inode = os.fstat(self._handle.fileno()).st_ino
        lines = self._drain()
        if lines:
            return lines
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []  # mid-rotation: the new file is not there yet
        if st.st_ino != self._inode:
            lines = self._drain()  # whatever reached the old file just before it was renamed
            if self._partial:
                lines.append(self._partial.decode("utf-8", errors="replace").rstrip("\r\n"))
                self._partial = b""
            self.close()
            return lines + self.read()
        if st.st_size < self._handle.tell():
            self._handle.seek(0)  # truncated in place
            self._partial = b""
            return self._drain()
        return []


# --- --since ------------------------------------------------------------------------------------------------

_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str, now: datetime) -> datetime:
    """Turn a ``--since`` value into an aware datetime.

    Accepts ISO 8601 (``2026-11-27``, ``2026-11-27T05:00``, with or without zone; naive means local time),
    a relative age (``30s``, ``10m``, ``2h``, ``1d``), ``today`` or ``yesterday`` (local midnight).
    """
    if now.tzinfo is None:
        now = now.astimezone()
    word = text.strip().lower()
    match = _RELATIVE.match(word)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        try:
            return now - timedelta(**{_UNITS[unit]: amount})
        except OverflowError:
            raise ValueError(f"invalid time {text!r}: too far in the past") from None
    if word in ("today", "yesterday"):
        day = now.astimezone().date()
        if word == "yesterday":
            day -= timedelta(days=1)
        return datetime.combine(day, time()).astimezone()
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: use an ISO 8601 date or time (2026-11-27, 2026-11-27T05:00, "
            "2026-11-27T05:00+01:00), an age (30s, 10m, 2h, 1d), 'today' or 'yesterday'"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.astimezone()
