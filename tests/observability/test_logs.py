"""Log monitors (llama-swap.md §5.1): bounded histories, live subscribers that
never block a writer (a slow one loses bytes and is told so with a marker),
``logToStdout`` routing, and the ``[<time> ][LEVEL] message`` proxy lines."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import sys
import time
from datetime import datetime
from typing import TYPE_CHECKING

import pytest

from controller.observability.logs import (
    HISTORY_BYTES,
    TIME_FORMATS,
    LogMonitor,
    Logs,
    ProxyLogHandler,
    Subscription,
    install,
    timestamp,
)

if TYPE_CHECKING:
    from collections.abc import Iterator


def marker(n: int) -> bytes:
    return f"\n— {n} bytes dropped —\n".encode()


async def drain(sub: Subscription) -> list[bytes]:
    """Everything the subscription yields until it is closed."""
    async with asyncio.timeout(2):
        return [chunk async for chunk in sub]


# -- subscribers -----------------------------------------------------------------------


async def test_slow_reader_never_blocks_the_writer_and_is_told_what_it_lost() -> None:
    monitor = LogMonitor("m")
    sub = monitor.subscribe(limit=100)
    line = b"x" * 9 + b"\n"  # 10 bytes
    began = time.monotonic()
    for _ in range(10_000):  # 100 KB into a 100-byte backlog nobody reads
        monitor.write(line)
    assert time.monotonic() - began < 2  # a plain call each time, never a wait
    assert monitor.history() == line * 10_000  # the history keeps it all
    monitor.unsubscribe(sub)
    got = await drain(sub)
    assert got == [line] * 10 + [marker(99_900)]


async def test_drop_marker_sits_where_the_bytes_went_missing() -> None:
    monitor = LogMonitor("m")
    sub = monitor.subscribe(limit=10)
    monitor.write(b"AAAAAA")  # kept (6)
    monitor.write(b"BBBBBB")  # 12 > 10: dropped
    monitor.write(b"CCC")  # fits again (9)
    monitor.unsubscribe(sub)
    assert b"".join(await drain(sub)) == b"AAAAAA" + marker(6) + b"CCC"


async def test_reader_that_catches_up_gets_everything_after_the_marker() -> None:
    monitor = LogMonitor("m")
    sub = monitor.subscribe(limit=8)
    reader = sub.__aiter__()
    monitor.write(b"1234")
    monitor.write(b"56789")  # dropped
    assert await anext(reader) == b"1234"
    assert await anext(reader) == marker(5)
    # Delivery resumed: no marker again, nothing lost.
    for chunk in (b"abcd", b"efgh", b"ijkl"):
        monitor.write(chunk)
        assert await anext(reader) == chunk
    monitor.unsubscribe(sub)
    with pytest.raises(StopAsyncIteration):
        await anext(reader)


async def test_live_reader_sees_writes_in_order_and_history_is_separate() -> None:
    monitor = LogMonitor("m")
    monitor.write(b"before\n")
    sub = monitor.subscribe()
    lines = [f"line {i}\n".encode() for i in range(100)]

    async def write_all() -> None:
        for line in lines:
            monitor.write(line)
            await asyncio.sleep(0)
        monitor.unsubscribe(sub)

    writer = asyncio.create_task(write_all())
    got = await drain(sub)
    await writer
    assert b"".join(got) == b"".join(lines)  # no history in a subscription
    assert monitor.history() == b"before\n" + b"".join(lines)


async def test_close_subscribers_ends_every_reader() -> None:
    monitor = LogMonitor("m")
    subs = [monitor.subscribe() for _ in range(3)]
    monitor.write(b"last\n")
    monitor.close_subscribers()
    for sub in subs:
        assert await drain(sub) == [b"last\n"]
    monitor.write(b"nobody\n")  # no subscriber left: still fine


def test_history_keeps_the_newest_100_kb() -> None:
    monitor = LogMonitor("m")
    chunks = [f"{i:09d}\n".encode() for i in range(15_000)]  # 150 KB
    for chunk in chunks:
        monitor.write(chunk)
    history = monitor.history()
    assert len(history) == HISTORY_BYTES
    assert history.endswith(chunks[-1])
    assert history == b"".join(chunks)[-HISTORY_BYTES:]
    assert monitor.tail(2) == [f"{14_998:09d}", f"{14_999:09d}"]


def test_a_chunk_bigger_than_the_history_is_kept_whole() -> None:
    monitor = LogMonitor("m", limit=10)
    monitor.write(b"small")
    monitor.write(b"y" * 50)
    assert monitor.history() == b"y" * 50


def test_empty_writes_are_ignored() -> None:
    monitor = LogMonitor("m")
    seen: list[bytes] = []
    monitor.add_listener(seen.append)
    monitor.write(b"")
    assert monitor.history() == b"" and seen == []


# -- logToStdout -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "proxy_out", "upstream_out"),
    [
        ("proxy", True, False),
        ("upstream", False, True),
        ("both", True, True),
        ("none", False, False),
    ],
)
def test_log_to_stdout_modes(mode: str, proxy_out: bool, upstream_out: bool) -> None:
    stdout = io.StringIO()
    logs = Logs(log_to_stdout=mode, stdout=stdout)
    logs.proxy.write(b"[INFO] from swapvisor\n")
    logs.model("a").write(b"from model a\n")
    expected = ("[INFO] from swapvisor\n" if proxy_out else "") + (
        "from model a\n" if upstream_out else ""
    )
    assert stdout.getvalue() == expected
    assert logs.mux.history().decode() == expected  # GET /logs
    # Per-source histories are kept whatever reaches stdout.
    assert logs.proxy.history() == b"[INFO] from swapvisor\n"
    assert logs.upstream.history() == b"from model a\n"
    assert logs.model("a").history() == b"from model a\n"


def test_models_write_through_to_upstream_and_find_names() -> None:
    logs = Logs(log_to_stdout="none", stdout=io.StringIO())
    a, b = logs.model("a"), logs.model("b")
    assert logs.model("a") is a
    a.write(b"a1\n")
    b.write(b"b1\n")
    a.write(b"a2\n")
    assert logs.upstream.history() == b"a1\nb1\na2\n"
    assert b.history() == b"b1\n"
    assert logs.find("proxy") is logs.proxy
    assert logs.find("upstream") is logs.upstream
    assert logs.find("a") is a
    assert logs.find("mux") is None and logs.find("zzz") is None


def test_closed_stdout_does_not_break_logging() -> None:
    stdout = io.StringIO()
    logs = Logs(log_to_stdout="both", stdout=stdout)
    stdout.close()
    logs.proxy.write(b"still kept\n")
    assert logs.mux.history() == b"still kept\n"


# -- proxy log lines -------------------------------------------------------------------


@pytest.fixture
def tz() -> Iterator[None]:
    """Run in UTC+05:30 (a POSIX TZ string: no tz database needed)."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "IST-05:30"
    time.tzset()
    yield
    if saved is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = saved
    time.tzset()


@pytest.fixture
def utc() -> Iterator[None]:
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "UTC0"
    time.tzset()
    yield
    if saved is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = saved
    time.tzset()


# 2024-03-05 09:07:08.120 UTC
WHEN = datetime.fromisoformat("2024-03-05T09:07:08.120+00:00").timestamp()


@pytest.mark.usefixtures("utc")
@pytest.mark.parametrize(
    ("name", "expected"),
    [  # Go's layouts, printed by Go for that instant in UTC
        ("rfc3339", "2024-03-05T09:07:08Z"),
        ("rfc3339nano", "2024-03-05T09:07:08.12Z"),
        ("ansic", "Tue Mar  5 09:07:08 2024"),
        ("unixdate", "Tue Mar  5 09:07:08 UTC 2024"),
        ("rubydate", "Tue Mar 05 09:07:08 +0000 2024"),
        ("rfc822", "05 Mar 24 09:07 UTC"),
        ("rfc822z", "05 Mar 24 09:07 +0000"),
        ("rfc850", "Tuesday, 05-Mar-24 09:07:08 UTC"),
        ("rfc1123", "Tue, 05 Mar 2024 09:07:08 UTC"),
        ("rfc1123z", "Tue, 05 Mar 2024 09:07:08 +0000"),
        ("kitchen", "9:07AM"),
        ("stamp", "Mar  5 09:07:08"),
        ("stampmilli", "Mar  5 09:07:08.120"),
        ("stampmicro", "Mar  5 09:07:08.120000"),
        ("stampnano", "Mar  5 09:07:08.120000000"),
    ],
)
def test_time_formats_print_like_go(name: str, expected: str) -> None:
    assert timestamp(name, WHEN) == expected


def test_every_time_format_is_covered() -> None:
    assert len(TIME_FORMATS) == 15


@pytest.mark.usefixtures("tz")
def test_rfc3339_offset_has_a_colon() -> None:
    assert timestamp("rfc3339", WHEN) == "2024-03-05T14:37:08+05:30"
    assert timestamp("rfc3339nano", WHEN) == "2024-03-05T14:37:08.12+05:30"
    whole = datetime.fromisoformat("2024-03-05T09:07:08+00:00").timestamp()
    assert timestamp("rfc3339nano", whole) == "2024-03-05T14:37:08+05:30"


def _record(level: int, msg: str, *args: object) -> logging.LogRecord:
    record = logging.LogRecord("swapvisor.x", level, __file__, 1, msg, args, None)
    record.created = WHEN
    return record


@pytest.mark.parametrize(
    ("level", "name"),
    [
        (logging.DEBUG, "DEBUG"),
        (logging.INFO, "INFO"),
        (logging.WARNING, "WARN"),
        (logging.ERROR, "ERROR"),
        (logging.CRITICAL, "ERROR"),
    ],
)
def test_proxy_lines_carry_llama_swap_levels(level: int, name: str) -> None:
    monitor = LogMonitor("proxy")
    ProxyLogHandler(monitor).emit(_record(level, "swap: %s to %s", "a", "b"))
    assert monitor.history() == f"[{name}] swap: a to b\n".encode()


@pytest.mark.usefixtures("utc")
@pytest.mark.parametrize("spelling", ["rfc3339", " RFC3339 "])
def test_proxy_lines_with_a_time_format(spelling: str) -> None:
    monitor = LogMonitor("proxy")
    ProxyLogHandler(monitor, spelling).emit(_record(logging.INFO, "hello"))
    assert monitor.history() == b"2024-03-05T09:07:08Z [INFO] hello\n"


def test_unknown_time_format_means_no_timestamp() -> None:
    monitor = LogMonitor("proxy")
    ProxyLogHandler(monitor, "iso8601").emit(_record(logging.INFO, "hello"))
    assert monitor.history() == b"[INFO] hello\n"


def test_exceptions_are_logged_with_their_traceback() -> None:
    monitor = LogMonitor("proxy")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "swapvisor.x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    ProxyLogHandler(monitor).emit(record)
    text = monitor.history().decode()
    assert text.startswith("[ERROR] failed\nTraceback")
    assert "ValueError: boom" in text


@pytest.fixture
def swapvisor_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger("swapvisor")
    saved = (root.level, root.propagate, list(root.handlers))
    yield root
    root.handlers[:] = saved[2]
    root.setLevel(saved[0])
    root.propagate = saved[1]


@pytest.mark.parametrize(
    ("level", "shown"),
    [
        ("debug", ["DEBUG", "INFO", "WARN", "ERROR"]),
        ("info", ["INFO", "WARN", "ERROR"]),
        ("warn", ["WARN", "ERROR"]),
        ("error", ["ERROR"]),
        ("bogus", ["INFO", "WARN", "ERROR"]),
    ],
)
def test_install_applies_the_log_level(
    swapvisor_logger: logging.Logger, level: str, shown: list[str]
) -> None:
    logs = Logs(log_to_stdout="none", stdout=io.StringIO())
    install(logs, level, "")
    log = logging.getLogger("swapvisor.router")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    got = re.findall(r"^\[(\w+)\]", logs.proxy.history().decode(), re.MULTILINE)
    assert got == shown


def test_install_again_replaces_the_handler(
    swapvisor_logger: logging.Logger,
) -> None:
    first = Logs(log_to_stdout="none", stdout=io.StringIO())
    second = Logs(log_to_stdout="none", stdout=io.StringIO())
    install(first, "info", "")
    install(second, "info", "")  # a config reload, or a second app
    logging.getLogger("swapvisor.x").info("once")
    assert first.proxy.history() == b""
    assert second.proxy.history() == b"[INFO] once\n"
    handlers = [h for h in swapvisor_logger.handlers if isinstance(h, ProxyLogHandler)]
    assert len(handlers) == 1
