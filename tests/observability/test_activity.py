"""controller.observability.activity: the activity store and its APIs (llama-swap.md §5.2)."""

from __future__ import annotations

import calendar
import os
import sqlite3
import time
from typing import TYPE_CHECKING

import pytest

from controller.config.rules import validate_store_path
from controller.errors import BadRequest
from controller.observability.activity import (
    PRUNE_EVERY,
    SORT_COLUMNS,
    ActivityEntry,
    ActivityStore,
    TokenStats,
    format_timestamp,
    histogram,
    percentile,
    total_pages,
)
from controller.observability.usage import UsageResult

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

T0 = calendar.timegm((2026, 8, 22, 12, 0, 0))


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def store() -> Iterator[ActivityStore]:
    s = ActivityStore()
    yield s
    s.close()


def entry(model: str = "m", ts: float = T0, **kw: object) -> ActivityEntry:
    return ActivityEntry(model=model, timestamp=ts, **kw)  # type: ignore[arg-type]


def q(**params: str | list[str]) -> dict[str, list[str]]:
    return {k: v if isinstance(v, list) else [v] for k, v in params.items()}


def ids(page: dict[str, object]) -> list[int]:
    data = page["data"]
    assert isinstance(data, list)
    return [row["id"] for row in data]


# --------------------------------------------------------------- rows ---


def test_entry_json_shape_omits_empty_error_and_metadata(utc: None) -> None:
    e = entry(
        req_path="/v1/chat/completions", resp_status_code=200, duration_ms=12, id=3
    )
    e.resp_content_type = "application/json"
    assert e.to_json() == {
        "id": 3,
        "timestamp": "2026-08-22T12:00:00Z",
        "model": "m",
        "req_path": "/v1/chat/completions",
        "resp_content_type": "application/json",
        "resp_status_code": 200,
        "tokens": {
            "cache_tokens": -1,
            "draft_tokens": -1,
            "draft_acc_tokens": -1,
            "input_tokens": 0,
            "output_tokens": 0,
            "prompt_per_second": -1.0,
            "tokens_per_second": -1.0,
        },
        "duration_ms": 12,
        "has_capture": False,
    }


def test_entry_json_with_error_and_metadata() -> None:
    e = entry(error_msg="502 Bad Gateway", metadata={"fifo_priority": "0"})
    out = e.to_json()
    assert out["error_msg"] == "502 Bad Gateway"
    assert out["metadata"] == {"fifo_priority": "0"}


def test_timestamp_second_precision_local_offset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    try:
        assert format_timestamp(T0 + 0.9) == "2026-08-22T05:00:00-07:00"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_entry_from_usage() -> None:
    u = UsageResult(
        input_tokens=5,
        output_tokens=6,
        cache_tokens=1,
        prompt_per_second=9.5,
        tokens_per_second=3.0,
        timings_ms=700,
        parsed=True,
    )
    e = ActivityEntry.from_usage(
        "m", "/v1/x", "text/event-stream", 200, u, 500, {"k": "v"}
    )
    assert e.tokens == TokenStats(1, -1, -1, 5, 6, 9.5, 3.0)
    assert (e.duration_ms, e.metadata, e.resp_content_type) == (
        700,
        {"k": "v"},
        "text/event-stream",
    )
    failed = ActivityEntry.from_usage(
        "m", "/v1/x", "", 502, UsageResult(error_msg="boom"), 9
    )
    assert (failed.error_msg, failed.duration_ms, failed.metadata) == ("boom", 9, {})


def test_add_assigns_ids_and_round_trips(store: ActivityStore) -> None:
    e = entry(
        tokens=TokenStats(3, 4, 2, 10, 20, 1.5, 2.5), error_msg="x", metadata={"a": "1"}
    )
    assert store.add(e) == 1 and e.id == 1
    assert store.add(entry()) == 2
    got = store.get(1)
    assert got is not None
    assert got.to_json() == e.to_json()
    assert store.get(99) is None


# ------------------------------------------------------------- query ---


def test_query_defaults_newest_first(store: ActivityStore) -> None:
    for _ in range(30):
        store.add(entry())
    page = store.query({})
    assert ids(page)[:3] == [30, 29, 28] and len(ids(page)) == 25
    assert {k: page[k] for k in ("page", "limit", "total", "total_pages")} == {
        "page": 1,
        "limit": 25,
        "total": 30,
        "total_pages": 2,
    }


def test_query_paging_math(store: ActivityStore) -> None:
    for _ in range(7):
        store.add(entry())
    assert ids(store.query(q(limit="3", page="3"))) == [1]
    assert ids(store.query(q(limit="3", page="4"))) == []
    page = store.query(q(limit="3", page="4"))
    assert (page["total"], page["total_pages"], page["page"]) == (7, 3, 4)
    assert (
        total_pages(0, 25) == 0
        and total_pages(25, 25) == 1
        and total_pages(26, 25) == 2
    )


def test_query_empty_store(store: ActivityStore) -> None:
    assert store.query({}) == {
        "data": [],
        "page": 1,
        "limit": 25,
        "total": 0,
        "total_pages": 0,
    }


def test_query_model_repeatable_exact_match(store: ActivityStore) -> None:
    for m in ("a", "b", "c", "ab"):
        store.add(entry(m))
    assert ids(store.query(q(model="a"))) == [1]
    assert ids(store.query(q(model=["a", "c", " "]))) == [3, 1]
    assert ids(store.query(q(model=" b "))) == [2]
    assert ids(store.query(q(model=""))) == [4, 3, 2, 1]


def test_query_time_range_inclusive_seconds(store: ActivityStore) -> None:
    for offset in (0, 1, 2, 3):
        store.add(entry(ts=T0 + offset + 0.7))
    assert ids(
        store.query(q(start="2026-08-22T12:00:01Z", end="2026-08-22T12:00:02Z"))
    ) == [3, 2]
    assert ids(store.query(q(start="2026-08-22T12:00:02.999Z"))) == [4, 3]
    assert ids(store.query(q(end="2026-08-22T14:00:00+02:00"))) == [1]
    assert ids(store.query(q(start="2026-08-22T07:00:03-05:00"))) == [4]


def test_query_id_range(store: ActivityStore) -> None:
    for _ in range(6):
        store.add(entry())
    assert ids(store.query(q(min_id="2", max_id="4"))) == [4, 3, 2]
    assert ids(store.query(q(min_id="5"))) == [6, 5]
    assert ids(store.query(q(max_id="1"))) == [1]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": "ten"}, "invalid limit"),
        ({"limit": "1.5"}, "invalid limit"),
        ({"limit": "0"}, "limit must be between 1 and 999"),
        ({"limit": "1000"}, "limit must be between 1 and 999"),
        ({"limit": "-3"}, "limit must be between 1 and 999"),
        ({"start": "yesterday"}, "invalid 'start' timestamp, use RFC3339 format"),
        ({"start": "2026-08-22"}, "invalid 'start' timestamp, use RFC3339 format"),
        (
            {"start": "2026-02-30T00:00:00Z"},
            "invalid 'start' timestamp, use RFC3339 format",
        ),
        ({"end": "2026-08-22T12:00:00"}, "invalid 'end' timestamp, use RFC3339 format"),
        (
            {"end": "2026-08-22 12:00:00Z"},
            "invalid 'end' timestamp, use RFC3339 format",
        ),
        (
            {"start": "2026-08-22T12:00:00.5Z", "end": "2026-08-22T12:00:00.4Z"},
            "start must be before end",
        ),
        ({"min_id": "0"}, "min_id must be >= 1"),
        ({"min_id": "x"}, "min_id must be >= 1"),
        ({"max_id": "-1"}, "max_id must be >= 1"),
        ({"min_id": "5", "max_id": "4"}, "min_id must be <= max_id"),
        ({"page": "0"}, "page must be >= 1"),
        ({"page": "one"}, "page must be >= 1"),
        ({"page": "99999999999999999999"}, "page must be >= 1"),
        ({"sort": "tokens"}, "invalid sort column"),
        ({"sort": "src"}, "invalid sort column"),
        ({"order": "up"}, "order must be asc or desc"),
    ],
)
def test_query_errors(
    store: ActivityStore, params: dict[str, str], message: str
) -> None:
    with pytest.raises(BadRequest) as err:
        store.query(q(**params))
    assert err.value.message == message and err.value.status == 400


def test_query_validation_order_matches_llama_swap(store: ActivityStore) -> None:
    with pytest.raises(BadRequest, match="invalid 'start'"):
        store.query(q(start="x", limit="0", sort="bad"))
    with pytest.raises(BadRequest, match="min_id"):
        store.query(q(min_id="0", limit="0"))
    with pytest.raises(BadRequest, match="invalid limit"):
        store.query(q(limit="x", page="0"))


def test_query_accepts_edge_values(store: ActivityStore) -> None:
    store.add(entry())
    page = store.query(
        q(
            limit=" 999 ",
            page="+1",
            order="ASC",
            start="2026-08-22T12:00:00Z",
            end="2026-08-22T12:00:00Z",
        )
    )
    assert (ids(page), page["limit"]) == ([1], 999)


def sortable_store() -> ActivityStore:
    s = ActivityStore()
    rows = [  # model, path, status, ctype, tokens(cache, draft, input, output, pps, tps), duration
        ("b", "/v1/b", 200, "text/event-stream", (5, 1, 30, 7, 10.0, 2.0), 300),
        ("a", "/v1/c", 502, "application/json", (1, 9, 10, 9, 30.0, 1.0), 100),
        ("c", "/v1/a", 200, "application/json", (5, 4, 20, 8, 20.0, 3.0), 200),
    ]
    for i, (model, path, status, ctype, t, dur) in enumerate(rows):
        tokens = TokenStats(t[0], t[1], 0, t[2], t[3], t[4], t[5])
        s.add(
            entry(
                model,
                ts=T0 - i,
                req_path=path,
                resp_status_code=status,
                resp_content_type=ctype,
                tokens=tokens,
                duration_ms=dur,
            )
        )
    return s


@pytest.mark.parametrize(
    ("sort", "asc"),
    [
        ("id", [1, 2, 3]),
        ("time", [3, 2, 1]),
        ("model", [2, 1, 3]),
        ("req_path", [3, 1, 2]),
        ("resp_status_code", [1, 3, 2]),
        ("resp_content_type", [2, 3, 1]),
        ("cached", [2, 1, 3]),
        ("prompt", [2, 3, 1]),
        ("generated", [1, 3, 2]),
        ("drafted", [1, 3, 2]),
        ("prompt_speed", [1, 3, 2]),
        ("gen_speed", [2, 1, 3]),
        ("duration", [2, 3, 1]),
    ],
)
def test_sort_columns(sort: str, asc: list[int]) -> None:
    s = sortable_store()
    try:
        assert ids(s.query(q(sort=sort, order="asc"))) == asc
        desc = ids(s.query(q(sort=sort)))
        assert desc == ids(s.query(q(sort=sort, order="desc"))) == asc[::-1]
    finally:
        s.close()


def test_sort_ties_break_by_id_in_the_same_direction() -> None:
    s = sortable_store()
    try:
        assert ids(s.query(q(sort="cached", order="asc"))) == [2, 1, 3]
        assert ids(s.query(q(sort="cached", order="desc"))) == [3, 1, 2]
        assert ids(s.query(q(sort="resp_status_code"))) == [2, 3, 1]
    finally:
        s.close()


def test_sort_keys_are_llama_swaps() -> None:
    assert set(SORT_COLUMNS) == {
        "id",
        "time",
        "model",
        "req_path",
        "resp_status_code",
        "resp_content_type",
        "cached",
        "prompt",
        "generated",
        "drafted",
        "prompt_speed",
        "gen_speed",
        "duration",
    }


def test_has_capture_comes_from_the_callback(store: ActivityStore) -> None:
    for _ in range(3):
        store.add(entry(has_capture=True))
    rows = store.query({}, has_capture=lambda i: i == 2)["data"]
    assert [r["has_capture"] for r in rows] == [False, True, False]
    assert not any(r["has_capture"] for r in store.query({})["data"])


# ---------------------------------------------------------- storage ---


def test_in_memory_store_prunes_to_max_rows_in_batches() -> None:
    s = ActivityStore(metrics_max_in_memory=3)
    for _ in range(PRUNE_EVERY):
        s.add(entry())
    assert s.in_memory
    top = PRUNE_EVERY
    assert ids(s.query({})) == [top, top - 1, top - 2]
    assert s.query({})["total"] == 3
    s.add(entry())  # between batches a few more rows may stay
    assert s.query({})["total"] == 4
    s.close()


def has_database(s: ActivityStore) -> bool:
    return s._db is not None


def test_in_memory_store_makes_its_database_at_the_first_read() -> None:
    """Rows wait in a list; SQLite (and its ~2 MiB) comes with the first
    read, which sees every row with the ids the writes were given."""
    s = ActivityStore()
    given = s.add_many([entry(), entry(model="n")])
    assert not has_database(s)
    assert s.get(given[1]) is not None
    assert has_database(s)
    assert ids(s.query({})) == list(reversed(given))
    assert s.stats()["total_requests"] == 2
    s.close()


def test_in_memory_store_never_read_closes_without_a_database() -> None:
    s = ActivityStore()
    s.add(entry())
    s.close()
    assert not has_database(s)


def test_a_reopen_to_memory_keeps_ids_growing(tmp_path: Path) -> None:
    s = ActivityStore(str(tmp_path / "a.db"))
    first = s.add(entry())
    s.reopen(None)
    assert not has_database(s)
    assert s.add(entry()) == first + 1
    assert ids(s.query({})) == [first + 1]  # rows are not copied across
    s.close()


@pytest.mark.parametrize("configured", [0, -5])
def test_non_positive_max_rows_means_1000(configured: int) -> None:
    s = ActivityStore(metrics_max_in_memory=configured)
    assert s.max_rows == 1000
    s.close()


def test_file_store_persists_across_reopen_and_is_not_pruned(tmp_path: Path) -> None:
    path = str(tmp_path / "activity.db")
    s = ActivityStore(path, metrics_max_in_memory=2)
    for m in ("a", "b", "c"):
        s.add(entry(m, metadata={"selector": m}))
    assert not s.in_memory
    s.close()
    s = ActivityStore(path)
    page = s.query({})
    assert ids(page) == [3, 2, 1] and page["data"][0]["metadata"] == {"selector": "c"}
    assert s.add(entry()) == 4
    s.close()


def test_file_store_uses_wal_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    ActivityStore(str(path)).close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {r[1] for r in db.execute("PRAGMA index_list(activity)")}
        assert {"idx_activity_created_id", "idx_activity_model_created_id"} <= indexes
        cols = [r[1] for r in db.execute("PRAGMA table_info(activity)")]
        assert (
            cols[:3] == ["id", "ts_created", "model_id"] and cols[-1] == "metadata_json"
        )
    finally:
        db.close()


def test_busy_timeout_is_set(tmp_path: Path) -> None:
    s = ActivityStore(str(tmp_path / "b.db"))
    assert s._conn().execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    s.close()


# ------------------------------------------------------------ stats ---


def test_stats_totals_and_histograms(store: ActivityStore) -> None:
    speeds = [(10.0, 1.0), (20.0, -1.0), (30.0, 0.0), (-1.0, 4.0), (40.0, 5.0)]
    for i, (pps, tps) in enumerate(speeds):
        cache = [5, -1, 0, 7, 2][i]
        tokens = TokenStats(cache, -1, -1, 10 * (i + 1), i, pps, tps)
        store.add(entry("a" if i < 4 else "b", tokens=tokens))
    stats = store.stats()
    assert {
        k: stats[k]
        for k in (
            "total_requests",
            "total_input_tokens",
            "total_output_tokens",
            "total_cache_tokens",
        )
    } == {
        "total_requests": 5,
        "total_input_tokens": 150,
        "total_output_tokens": 10,
        "total_cache_tokens": 14,
    }
    # 4 positive prompt speeds: Sturges gives 3 bins, clamped up to 5 of width 6
    assert stats["prompt_histogram"] == {
        "bins": [1, 1, 0, 1, 1],
        "min": 10.0,
        "max": 40.0,
        "binSize": 6.0,
        "p50": 25.0,
        "p95": pytest.approx(38.5),
        "p99": pytest.approx(39.7),
    }
    gen = stats["gen_histogram"]
    assert (gen["min"], gen["max"], gen["bins"]) == (1.0, 5.0, [1, 0, 0, 1, 1])


def test_stats_model_filter_and_empty(store: ActivityStore) -> None:
    store.add(entry("a", tokens=TokenStats(input_tokens=3, prompt_per_second=7.0)))
    store.add(entry("b", tokens=TokenStats(input_tokens=4)))
    a = store.stats(" a ")
    assert (a["total_requests"], a["total_input_tokens"]) == (1, 3)
    assert a["prompt_histogram"] == {
        "bins": [1],
        "min": 7.0,
        "max": 7.0,
        "binSize": 0.0,
        "p50": 7.0,
        "p95": 7.0,
        "p99": 7.0,
    }
    assert a["gen_histogram"] is None
    none = store.stats("zzz")
    assert none == {
        "total_requests": 0,
        "total_input_tokens": 0,
        "total_output_tokens": 0,
        "total_cache_tokens": 0,
        "prompt_histogram": None,
        "gen_histogram": None,
    }
    assert store.stats("")["total_requests"] == 2


@pytest.mark.parametrize(
    ("n", "bins"), [(2, 5), (16, 5), (17, 6), (100, 8), (1000, 11), (10**6, 20)]
)
def test_histogram_sturges_bin_count_clamped(n: int, bins: int) -> None:
    h = histogram([float(i) for i in range(n)])
    assert h is not None and len(h["bins"]) == bins and sum(h["bins"]) == n


def test_histogram_known_data() -> None:
    h = histogram([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    assert h == {
        "bins": [2, 2, 2, 2, 2],
        "min": 1.0,
        "max": 10.0,
        "binSize": 1.8,
        "p50": 5.5,
        "p95": pytest.approx(9.55),
        "p99": pytest.approx(9.91),
    }
    assert histogram([]) is None


def test_percentile_linear_interpolation() -> None:
    assert percentile([], 50) == 0.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile([0.0, 10.0, 20.0, 30.0], 95) == pytest.approx(28.5)


# ------------------------------------------------------- store.path ---


def test_store_path_empty() -> None:
    for p in ("", "   "):
        with pytest.raises(ValueError, match=r"^store\.path must not be empty$"):
            validate_store_path(p)


def test_store_path_ok(tmp_path: Path) -> None:
    validate_store_path(str(tmp_path / "new.db"))
    (tmp_path / "old.db").write_bytes(b"")
    validate_store_path(str(tmp_path / "old.db"))


def test_store_path_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        validate_store_path(str(tmp_path))
    assert str(err.value) == f"store.path: {tmp_path} is a directory, not a file"


def test_store_path_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        validate_store_path(str(tmp_path / "nope" / "a.db"))
    assert str(err.value) == (
        f"store.path: directory {tmp_path / 'nope'} is not writable: no such file or directory"
    )


def test_store_path_not_writable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    existing = tmp_path / "a.db"
    existing.write_bytes(b"")
    monkeypatch.setattr(os, "access", lambda *_: False)
    with pytest.raises(ValueError) as err:
        validate_store_path(str(existing))
    assert (
        str(err.value) == f"store.path: {existing} is not writable: permission denied"
    )
    with pytest.raises(ValueError) as err:
        validate_store_path(str(tmp_path / "b.db"))
    assert (
        str(err.value)
        == f"store.path: directory {tmp_path} is not writable: permission denied"
    )


def test_store_path_relative_file_checks_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    seen: list[str] = []

    def access(path: str, _mode: int) -> bool:
        seen.append(path)
        return False

    monkeypatch.setattr(os, "access", access)
    with pytest.raises(ValueError, match=r"directory \. is not writable"):
        validate_store_path("activity.db")
    assert seen == ["."]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_store_path_really_not_writable(tmp_path: Path) -> None:  # pragma: no cover
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(ValueError, match="is not writable: permission denied"):
        validate_store_path(str(ro / "a.db"))


def test_rows_waiting_in_memory_survive_a_failed_write(
    store: ActivityStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In memory, rows reach SQLite when read; a write that fails there
    loses none of them: the next read writes them."""
    store.add_many([entry(), entry(), entry()])
    real = store._write

    def failing(sql: str, rows: list[tuple[object, ...]]) -> tuple[int, int]:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_write", failing)
    with pytest.raises(sqlite3.OperationalError):
        store.stats()
    monkeypatch.setattr(store, "_write", real)
    store.add_many([entry()])
    assert store.stats()["total_requests"] == 4
    assert ids(store.query(q())) == [4, 3, 2, 1]
