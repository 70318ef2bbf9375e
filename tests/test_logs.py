"""Logging: journald-style stderr, the rotated file, reading it back by time, following it as it rotates."""

from __future__ import annotations

import io
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware import cli, logs
from firmware.logs import LOG_FILE_NAME, follow_logs, log_files, parse_since, read_logs, setup_logging

FILE_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ")
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CET = "CET-1CEST,M3.5.0,M10.5.0/3"  # a POSIX TZ rule: no tz database needed


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """setup_logging changes process-wide state; put the root logger back as pytest left it."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for handler in logs._installed:
        root.removeHandler(handler)
        handler.close()
    logs._installed.clear()
    root.setLevel(level)
    assert root.handlers == handlers


@pytest.fixture
def local_cet(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time = Central European, so 'naive means local' is tested with a non-UTC zone."""
    monkeypatch.setenv("TZ", CET)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _record_line(when: datetime, message: str, level: str = "INFO") -> str:
    return f"{when.isoformat(timespec='milliseconds')} {level} evse.test: {message}"


def _messages(lines: Iterator[str] | list[str]) -> list[str]:
    return [line.split(": ", 1)[1] for line in lines if FILE_LINE.match(line)]


# --- writing ------------------------------------------------------------------------------------------------


def test_stderr_lines_carry_syslog_priority_and_no_timestamp() -> None:
    stream = io.StringIO()
    setup_logging("debug", stream=stream)
    log = logging.getLogger("evse.test")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    log.critical("c")
    assert stream.getvalue().splitlines() == [
        "<7>evse.test: d",
        "<6>evse.test: i",
        "<4>evse.test: w",
        "<3>evse.test: e",
        "<2>evse.test: c",
    ]


def test_every_line_of_a_traceback_keeps_the_priority() -> None:
    stream = io.StringIO()
    setup_logging("info", stream=stream)
    try:
        raise ValueError("bad meter frame")
    except ValueError:
        logging.getLogger("evse.meter").exception("read failed")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "<3>evse.meter: read failed"
    assert lines[-1] == "<3>ValueError: bad meter frame"
    assert all(line.startswith("<3>") for line in lines)


def test_level_filters_and_unknown_level_is_refused() -> None:
    stream = io.StringIO()
    setup_logging("WARNING", stream=stream)
    logging.getLogger("evse.test").info("hidden")
    assert stream.getvalue() == ""
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        setup_logging("loud", stream=stream)


def test_setup_is_idempotent(tmp_path: Path) -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", tmp_path, stream=first)
    setup_logging("info", tmp_path, stream=second)
    logging.getLogger("evse.test").info("once")
    assert first.getvalue() == ""
    assert second.getvalue() == "<6>evse.test: once\n"
    assert _messages((tmp_path / LOG_FILE_NAME).read_text().splitlines()) == ["once"]
    ours = [h for h in logging.getLogger().handlers if h in logs._installed]
    assert len(ours) == 2


def test_file_lines_have_an_iso_utc_timestamp(tmp_path: Path) -> None:
    log_dir = tmp_path / "state" / "logs"  # created on demand
    setup_logging("info", log_dir, stream=io.StringIO())
    before = datetime.now(UTC).replace(microsecond=0)
    logging.getLogger("evse.test").info("plugged in, %d A", 16)
    logging.getLogger("evse.test").debug("not written at info")
    [line] = (log_dir / LOG_FILE_NAME).read_text(encoding="utf-8").splitlines()
    assert FILE_LINE.match(line), line
    assert line.endswith(" INFO evse.test: plugged in, 16 A")
    stamp = datetime.fromisoformat(line.split(" ", 1)[0])
    assert before <= stamp <= datetime.now(UTC)


def test_unwritable_log_dir_falls_back_to_stderr_with_a_warning(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    stream = io.StringIO()
    setup_logging("info", blocker / "logs", stream=stream)
    logging.getLogger("evse.test").info("still logged")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith(f"<4>firmware.logs: cannot write log files in {blocker / 'logs'} (")
    assert lines[0].endswith("); logging to stderr only")
    assert lines[1] == "<6>evse.test: still logged"


def test_rotation_and_reading_back_oldest_first(tmp_path: Path) -> None:
    setup_logging("info", tmp_path, max_bytes=300, backup_count=3, stream=io.StringIO())
    log = logging.getLogger("evse.test")
    for n in range(40):
        log.info("message %02d", n)
    names = [p.name for p in log_files(tmp_path)]
    assert names == [f"{LOG_FILE_NAME}.3", f"{LOG_FILE_NAME}.2", f"{LOG_FILE_NAME}.1", LOG_FILE_NAME]
    got = _messages(list(read_logs(tmp_path)))
    assert got == [f"message {n:02d}" for n in range(40 - len(got), 40)]
    assert 10 < len(got) < 40  # the oldest were rotated away, three backups kept


def test_backups_beyond_nine_sort_numerically(tmp_path: Path) -> None:
    for n in range(12, 0, -1):
        (tmp_path / f"{LOG_FILE_NAME}.{n}").write_text(_record_line(NOW + timedelta(minutes=12 - n), f"m{n}") + "\n")
    (tmp_path / LOG_FILE_NAME).write_text(_record_line(NOW + timedelta(minutes=12), "current") + "\n")
    (tmp_path / f"{LOG_FILE_NAME}.old").write_text("ignored\n")
    assert _messages(list(read_logs(tmp_path))) == [*(f"m{n}" for n in range(12, 0, -1)), "current"]


def test_since_keeps_later_records_with_their_continuation_lines(tmp_path: Path) -> None:
    (tmp_path / f"{LOG_FILE_NAME}.1").write_text(
        "\n".join(
            [
                _record_line(NOW - timedelta(hours=2), "old", "ERROR"),
                "Traceback (most recent call last):",
                "ValueError: old",
                _record_line(NOW - timedelta(minutes=5), "recent", "ERROR"),
                "Traceback (most recent call last):",
                "ValueError: recent",
            ]
        )
        + "\n"
    )
    (tmp_path / LOG_FILE_NAME).write_text(_record_line(NOW, "now") + "\n")
    assert list(read_logs(tmp_path, NOW - timedelta(minutes=10))) == [
        _record_line(NOW - timedelta(minutes=5), "recent", "ERROR"),
        "Traceback (most recent call last):",
        "ValueError: recent",
        _record_line(NOW, "now"),
    ]
    assert list(read_logs(tmp_path, NOW)) == [_record_line(NOW, "now")]
    assert len(list(read_logs(tmp_path))) == 7
    assert list(read_logs(tmp_path / "nowhere")) == []


# --- --since ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", NOW - timedelta(seconds=30)),
        ("10m", NOW - timedelta(minutes=10)),
        ("2h", NOW - timedelta(hours=2)),
        ("1d", NOW - timedelta(days=1)),
        (" 2H ", NOW - timedelta(hours=2)),
        ("2026-11-27T05:00+01:00", datetime(2026, 11, 27, 4, 0, tzinfo=UTC)),
        ("2026-11-27T05:00:30Z", datetime(2026, 11, 27, 5, 0, 30, tzinfo=UTC)),
        ("2026-11-27T05:00", datetime(2026, 11, 27, 4, 0, tzinfo=UTC)),  # naive = local (CET)
        ("2026-07-01T05:00", datetime(2026, 7, 1, 3, 0, tzinfo=UTC)),  # summer time
        ("2026-11-27", datetime(2026, 11, 26, 23, 0, tzinfo=UTC)),  # local midnight
        ("today", datetime(2026, 11, 26, 23, 0, tzinfo=UTC)),
        ("yesterday", datetime(2026, 11, 25, 23, 0, tzinfo=UTC)),
    ],
)
def test_parse_since(local_cet: None, text: str, expected: datetime) -> None:
    parsed = parse_since(text, NOW)
    assert parsed.tzinfo is not None
    assert parsed == expected


def test_today_is_the_local_date_not_the_utc_date(local_cet: None) -> None:
    late = datetime(2026, 11, 27, 23, 30, tzinfo=UTC)  # already 28 November in CET
    assert parse_since("today", late) == datetime(2026, 11, 27, 23, 0, tzinfo=UTC)


def test_naive_now_means_local_time(local_cet: None) -> None:
    assert parse_since("1h", datetime(2026, 11, 27, 13, 0)) == datetime(2026, 11, 27, 11, 0, tzinfo=UTC)


@pytest.mark.parametrize("text", ["", "soon", "10x", "-5m", "5 minutes", "2026-13-01", "1.5h", "tomorrow"])
def test_parse_since_rejects_with_a_clear_message(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid time .*use an ISO 8601 date or time") as caught:
        parse_since(text, NOW)
    assert repr(text) in str(caught.value)


def test_parse_since_absurd_age_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="too far in the past"):
        parse_since("99999999999d", NOW)


@given(
    amount=st.integers(min_value=0, max_value=100_000),  # up to ~270 years back in days
    unit=st.sampled_from([("s", "seconds"), ("m", "minutes"), ("h", "hours"), ("d", "days")]),
)
def test_relative_ages_parse_back_exactly(amount: int, unit: tuple[str, str]) -> None:
    suffix, name = unit
    delta = timedelta(**{name: amount})
    assert parse_since(f"{amount}{suffix}", NOW) == NOW - delta


@given(delta=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3650)))
def test_any_timedelta_rendered_in_a_whole_unit_parses_back(delta: timedelta) -> None:
    for suffix, size in (("m", timedelta(minutes=1)), ("h", timedelta(hours=1)), ("d", timedelta(days=1))):
        whole = delta // size
        assert parse_since(f"{whole}{suffix}", NOW) == NOW - whole * size


# --- following ----------------------------------------------------------------------------------------------


def _deadline(seconds: float = 5.0) -> tuple[list[bool], Callable[[], bool]]:
    """A stop callback that gives up after ``seconds`` so a broken follower fails instead of hanging."""
    done = [False]
    end = time.monotonic() + seconds

    def stop() -> bool:
        return done[0] or time.monotonic() > end

    return done, stop


def _append(path: Path, *lines: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in lines)


def test_follow_reads_then_picks_up_appends_truncation_and_rotation(tmp_path: Path) -> None:
    current = tmp_path / LOG_FILE_NAME
    _append(tmp_path / f"{LOG_FILE_NAME}.1", _record_line(NOW, "rotated earlier"))
    _append(current, _record_line(NOW, "first"))
    done, stop = _deadline()
    lines = follow_logs(tmp_path, None, poll=0.01, stop=stop)
    assert _messages([next(lines), next(lines)]) == ["rotated earlier", "first"]

    _append(current, _record_line(NOW, "appended"))
    assert _messages([next(lines)]) == ["appended"]

    # Rotation, with a last line that reached the old file just before the rename.
    _append(current, _record_line(NOW, "last in old file"))
    current.rename(tmp_path / f"{LOG_FILE_NAME}.2")
    _append(current, _record_line(NOW, "new file"))
    assert _messages([next(lines), next(lines)]) == ["last in old file", "new file"]

    # Truncation in place (copytruncate style): noticed because the file is now shorter than what was read.
    _append(current, *(_record_line(NOW, f"filler {n}") for n in range(3)))
    assert _messages([next(lines) for _ in range(3)]) == ["filler 0", "filler 1", "filler 2"]
    with current.open("w", encoding="utf-8") as handle:
        handle.write(_record_line(NOW, "after truncate") + "\n")
    assert _messages([next(lines)]) == ["after truncate"]

    # A half-written line waits for its newline.
    with current.open("a", encoding="utf-8") as handle:
        handle.write(_record_line(NOW, "half"))
        handle.flush()
        handle.write(" and whole\n")
    assert _messages([next(lines)]) == ["half and whole"]

    done[0] = True
    assert list(lines) == []


def test_follow_waits_for_the_file_and_applies_since(tmp_path: Path) -> None:
    done, stop = _deadline()
    lines = follow_logs(tmp_path, NOW, poll=0.01, stop=stop)
    _append(tmp_path / LOG_FILE_NAME, _record_line(NOW - timedelta(seconds=1), "too old"), "continued old")
    _append(tmp_path / LOG_FILE_NAME, _record_line(NOW, "fresh"), "continued fresh")
    assert [next(lines), next(lines)] == [_record_line(NOW, "fresh"), "continued fresh"]
    done[0] = True
    assert list(lines) == []


def test_follow_the_real_rotating_handler_loses_and_repeats_nothing(tmp_path: Path) -> None:
    setup_logging("info", tmp_path, max_bytes=250, backup_count=2, stream=io.StringIO())
    log = logging.getLogger("evse.test")
    log.info("message 000")
    done, stop = _deadline()
    lines = follow_logs(tmp_path, None, poll=0.01, stop=stop)
    seen = _messages([next(lines)])
    for n in range(1, 60):
        log.info("message %03d", n)
        seen += _messages([next(lines)])
    assert seen == [f"message {n:03d}" for n in range(60)]
    assert len(log_files(tmp_path)) == 3  # it really rotated
    done[0] = True
    assert list(lines) == []


# --- evse logs ----------------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, Path]:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[store]\ndir = "{store_dir}"\n')
    return cfg, store_dir


def test_evse_logs_prints_and_filters(store: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    cfg, store_dir = store
    recent = datetime.now(UTC) - timedelta(minutes=1)
    _append(
        store_dir / LOG_FILE_NAME,
        _record_line(recent - timedelta(hours=3), "old"),
        _record_line(recent, "new"),
    )
    assert cli.main(["logs", "--config", str(cfg)]) == 0
    assert _messages(capsys.readouterr().out.splitlines()) == ["old", "new"]
    assert cli.main(["logs", "--since", "1h", "--config", str(cfg)]) == 0
    assert _messages(capsys.readouterr().out.splitlines()) == ["new"]


def test_evse_logs_bad_since_is_a_usage_error(store: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _ = store
    assert cli.main(["logs", "--since", "next week", "--config", str(cfg)]) == 2
    assert "invalid time 'next week'" in capsys.readouterr().err


def test_evse_logs_without_files_says_where_it_looked(
    store: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, store_dir = store
    assert cli.main(["logs", "--config", str(cfg)]) == 1
    assert str(store_dir) in capsys.readouterr().err


def test_evse_logs_follow_ends_quietly_on_ctrl_c(
    store: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, store_dir = store

    def interrupted(log_dir: Path, since: datetime | None) -> Iterator[str]:
        assert Path(log_dir) == store_dir
        yield "one line"
        raise KeyboardInterrupt

    monkeypatch.setattr(logs, "follow_logs", interrupted)
    assert cli.main(["logs", "--follow", "--config", str(cfg)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "one line\n"
    assert captured.err == ""


def test_log_dir_listing_ignores_foreign_files(tmp_path: Path) -> None:
    for name in (
        LOG_FILE_NAME,
        f"{LOG_FILE_NAME}.1",
        f"{LOG_FILE_NAME}.x",
        "other.log",
        f"{LOG_FILE_NAME}.1.gz",
    ):
        (tmp_path / name).write_text("")
    os.mkdir(tmp_path / f"{LOG_FILE_NAME}.d")
    assert [p.name for p in log_files(tmp_path)] == [f"{LOG_FILE_NAME}.1", LOG_FILE_NAME]
