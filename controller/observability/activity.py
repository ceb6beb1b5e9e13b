"""The activity log: one row per metered request (llama-swap.md §5.2).

This module owns the activity row (:class:`ActivityEntry`, llama-swap's
``ActivityLogEntry`` JSON), its SQLite table, and the two read APIs built on
it: ``GET /api/metrics/activity`` (:meth:`ActivityStore.query`) and ``GET
/api/metrics/stats`` (:meth:`ActivityStore.stats`). It knows nothing of HTTP:
query parameters come in as a mapping of lists, invalid ones raise
:class:`controller.errors.BadRequest` with llama-swap's texts.

Storage: ``:memory:`` SQLite by default, pruned to ``metricsMaxInMemory`` rows
every ``PRUNE_EVERY`` inserts; or the file at ``store.path`` (WAL,
``busy_timeout`` 5000), never pruned. Either way the database is
llama-swap's: same tables, indexes and goose migration bookkeeping
(:func:`migrate`), so a file moves freely between the two. Rows are inserted
one transaction a batch (:meth:`ActivityStore.add_many`). Every call is a
short local SQLite statement guarded by a lock, so an asyncio caller may
call it inline or push it to a thread (``asyncio.to_thread``); the
connection is shared across threads.
"""

from __future__ import annotations

import calendar
import functools
import json
import math
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from controller.errors import BadRequest

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable, Mapping, Sequence

    from controller.observability.usage import UsageResult

__all__ = [
    "DEFAULT_LIMIT",
    "DEFAULT_MAX_IN_MEMORY",
    "GOOSE_TABLE",
    "MIGRATIONS",
    "SORT_COLUMNS",
    "ActivityEntry",
    "ActivityQuery",
    "ActivityStore",
    "TokenStats",
    "format_timestamp",
    "histogram",
    "migrate",
    "parse_query",
    "percentile",
    "total_pages",
]

DEFAULT_LIMIT = 25
DEFAULT_MAX_IN_MEMORY = 1000

SORT_COLUMNS: dict[str, str] = {
    "id": "id",
    "time": "ts_created",
    "model": "model_id",
    "req_path": "req_path",
    "resp_status_code": "resp_status_code",
    "resp_content_type": "resp_content_type",
    "cached": "cache_tokens",
    "prompt": "input_tokens",
    "generated": "output_tokens",
    "drafted": "draft_tokens",
    "prompt_speed": "prompt_per_second",
    "gen_speed": "tokens_per_second",
    "duration": "duration_ms",
}
"""API sort key -> column. Only these names ever reach SQL."""

# The schema is llama-swap's, kept the way llama-swap keeps it: its store
# (internal/store, commit 0bdb372) applies internal/store/migrations/*.sql with
# goose (pressly/goose v3.27.2, sqlite3 dialect), which records them in
# ``goose_db_version``: a row for version 0 when the table is made, then one
# per applied migration. Without that bookkeeping llama-swap runs migration 1
# again on a swapvisor file and refuses it ("partial migration error
# (type:sql,version:1): table activity already exists"). Statement texts are
# goose's (the migration file's, trimmed), so ``sqlite_master`` reads the same.
GOOSE_TABLE = "goose_db_version"
_GOOSE_CREATE = (  # goose internal/dialects/sqlite3.go CreateTable, byte for byte
    "CREATE TABLE goose_db_version (\n"
    "\t\tid INTEGER PRIMARY KEY AUTOINCREMENT,\n"
    "\t\tversion_id INTEGER NOT NULL,\n"
    "\t\tis_applied INTEGER NOT NULL,\n"
    "\t\ttstamp TIMESTAMP DEFAULT (datetime('now'))\n"
    "\t)"
)
_GOOSE_INSERT = "INSERT INTO goose_db_version (version_id, is_applied) VALUES (?, ?)"

_CREATE_ACTIVITY = """CREATE TABLE activity (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_created INTEGER NOT NULL,
    model_id TEXT NOT NULL,
    req_path TEXT NOT NULL DEFAULT '',
    resp_content_type TEXT NOT NULL DEFAULT '',
    resp_status_code INTEGER NOT NULL DEFAULT 0,
    cache_tokens INTEGER NOT NULL DEFAULT 0,
    draft_tokens INTEGER NOT NULL DEFAULT 0,
    draft_acc_tokens INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    prompt_per_second REAL NOT NULL DEFAULT 0,
    tokens_per_second REAL NOT NULL DEFAULT 0,
    duration_ms INTEGER NOT NULL DEFAULT 0,
    error_msg TEXT NOT NULL DEFAULT '',
    metadata_json TEXT NOT NULL DEFAULT ''
);"""

MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,  # 00001_create_activity.sql
        (
            _CREATE_ACTIVITY,
            (
                "CREATE INDEX idx_activity_created_id\n"
                "    ON activity (ts_created DESC, id DESC);"
            ),
            (
                "CREATE INDEX idx_activity_model_created_id\n"
                "    ON activity (model_id, ts_created DESC, id DESC);"
            ),
        ),
    ),
)
"""llama-swap's migrations (version, Up statements), oldest first."""

_INSERT_COLUMNS = (
    "ts_created, model_id, req_path, resp_content_type, resp_status_code, "
    "cache_tokens, draft_tokens, draft_acc_tokens, input_tokens, output_tokens, "
    "prompt_per_second, tokens_per_second, duration_ms, error_msg, metadata_json"
)
_COLUMNS = "id, " + _INSERT_COLUMNS
_INSERT_SQL = f"INSERT INTO activity ({_INSERT_COLUMNS}) VALUES ({', '.join('?' * 15)})"
_INSERT_WITH_ID_SQL = (
    f"INSERT INTO activity ({_COLUMNS}) VALUES ({', '.join('?' * 16)})"
)

_TOTALS_SQL = (
    "SELECT COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0),"
    " COALESCE(SUM(CASE WHEN cache_tokens > 0 THEN cache_tokens ELSE 0 END), 0)"
    " FROM activity"
)

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})",
    re.ASCII,
)
_ATOI = re.compile(r"[+-]?\d+", re.ASCII)
_INT64 = 1 << 63


# ------------------------------------------------------------------ rows ---


@dataclass(slots=True)
class TokenStats:
    """``tokens`` of a row; -1 means unknown (cache, drafts, speeds)."""

    cache_tokens: int = -1
    draft_tokens: int = -1
    draft_acc_tokens: int = -1
    input_tokens: int = 0
    output_tokens: int = 0
    prompt_per_second: float = -1.0
    tokens_per_second: float = -1.0

    def to_json(self) -> dict[str, Any]:
        return {
            "cache_tokens": self.cache_tokens,
            "draft_tokens": self.draft_tokens,
            "draft_acc_tokens": self.draft_acc_tokens,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "prompt_per_second": self.prompt_per_second,
            "tokens_per_second": self.tokens_per_second,
        }


@dataclass(slots=True)
class ActivityEntry:
    """One activity row. ``timestamp`` is Unix seconds (a float; stored and
    shown at second precision). ``id`` is 0 until :meth:`ActivityStore.add`."""

    model: str
    req_path: str = ""
    resp_content_type: str = ""
    resp_status_code: int = 0
    tokens: TokenStats = field(default_factory=TokenStats)
    duration_ms: int = 0
    has_capture: bool = False
    error_msg: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    id: int = 0
    timestamp: float = field(default_factory=time.time)

    @classmethod
    def from_usage(
        cls,
        model: str,
        req_path: str,
        resp_content_type: str,
        resp_status_code: int,
        usage: UsageResult,
        wall_ms: int,
        metadata: Mapping[str, str] | None = None,
    ) -> ActivityEntry:
        """A row from a :class:`controller.usage.UsageResult` and the wall
        time since the request reached the metrics layer."""
        tokens = TokenStats(
            cache_tokens=usage.cache_tokens,
            draft_tokens=usage.draft_tokens,
            draft_acc_tokens=usage.draft_acc_tokens,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            prompt_per_second=usage.prompt_per_second,
            tokens_per_second=usage.tokens_per_second,
        )
        return cls(
            model=model,
            req_path=req_path,
            resp_content_type=resp_content_type,
            resp_status_code=resp_status_code,
            tokens=tokens,
            duration_ms=usage.duration_ms(wall_ms),
            error_msg=usage.error_msg,
            metadata=dict(metadata or {}),
        )

    def to_json(self) -> dict[str, Any]:
        """llama-swap's JSON: ``error_msg``/``metadata`` only when non-empty."""
        out: dict[str, Any] = {
            "id": self.id,
            "timestamp": format_timestamp(self.timestamp),
            "model": self.model,
            "req_path": self.req_path,
            "resp_content_type": self.resp_content_type,
            "resp_status_code": self.resp_status_code,
            "tokens": self.tokens.to_json(),
            "duration_ms": self.duration_ms,
            "has_capture": self.has_capture,
        }
        if self.error_msg:
            out["error_msg"] = self.error_msg
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        return out


def format_timestamp(ts: float) -> str:
    """RFC 3339 at second precision in local time, ``Z`` for a zero offset
    (Go's ``time.Unix(ts, 0)`` marshalled to JSON)."""
    text = datetime.fromtimestamp(math.floor(ts)).astimezone().isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


# --------------------------------------------------------------- queries ---


@dataclass(slots=True)
class ActivityQuery:
    """Validated ``/api/metrics/activity`` parameters (times as Unix seconds,
    ids 0 when unbounded, ``order`` upper-cased for SQL)."""

    models: list[str] = field(default_factory=list)
    start: int | None = None
    end: int | None = None
    min_id: int = 0
    max_id: int = 0
    limit: int = DEFAULT_LIMIT
    page: int = 1
    sort: str = "id"
    order: str = "DESC"


def _first(params: Mapping[str, Sequence[str]], name: str) -> str:
    """``url.Values.Get``: the first value, trimmed; "" when absent."""
    values = params.get(name) or ()
    return values[0].strip() if values else ""


def _atoi(raw: str) -> int | None:
    """Go's ``strconv.Atoi``: ASCII digits with an optional sign, int64 only."""
    if not _ATOI.fullmatch(raw):
        return None
    value = int(raw)
    return value if -_INT64 <= value < _INT64 else None


def _parse_time(raw: str, name: str) -> tuple[int, int] | None:
    """An RFC 3339 parameter as (unix seconds, nanoseconds), or None."""
    if not raw:
        return None
    m = _RFC3339.fullmatch(raw)
    bad = BadRequest(f"invalid '{name}' timestamp, use RFC3339 format")
    if not m:
        raise bad
    year, month, day, hour, minute, sec = (int(g) for g in m.groups()[:6])
    frac, zone = m.group(7) or "", m.group(8)
    offset = 0
    if zone != "Z":
        oh, om = int(zone[1:3]), int(zone[4:6])
        if oh > 23 or om > 59:
            raise bad
        offset = (oh * 3600 + om * 60) * (1 if zone[0] == "+" else -1)
    try:
        datetime(year, month, day, hour, minute, sec)
    except ValueError:
        raise bad from None
    unix = calendar.timegm((year, month, day, hour, minute, sec)) - offset
    nanos = int((frac[1:] + "000000000")[:9]) if frac else 0
    return unix, nanos


def _parse_id(raw: str, name: str) -> int:
    if not raw:
        return 0
    value = _atoi(raw)
    if value is None or value < 1:
        raise BadRequest(f"{name} must be >= 1")
    return value


def _parse_limit(raw: str) -> int:
    if not raw:
        return DEFAULT_LIMIT
    value = _atoi(raw)
    if value is None:
        raise BadRequest("invalid limit")
    if not 0 < value < 1000:
        raise BadRequest("limit must be between 1 and 999")
    return value


def _parse_page(raw: str) -> int:
    if not raw:
        return 1
    value = _atoi(raw)
    if value is None or value < 1:
        raise BadRequest("page must be >= 1")
    return value


def parse_query(params: Mapping[str, Sequence[str]]) -> ActivityQuery:
    """Validate ``/api/metrics/activity`` parameters in llama-swap's order."""
    q = ActivityQuery()
    q.models = [m.strip() for m in params.get("model") or () if m.strip()]
    start = _parse_time(_first(params, "start"), "start")
    end = _parse_time(_first(params, "end"), "end")
    if start is not None and end is not None and start > end:
        raise BadRequest("start must be before end")
    q.start, q.end = (start[0] if start else None), (end[0] if end else None)
    q.min_id = _parse_id(_first(params, "min_id"), "min_id")
    q.max_id = _parse_id(_first(params, "max_id"), "max_id")
    if q.min_id and q.max_id and q.min_id > q.max_id:
        raise BadRequest("min_id must be <= max_id")
    q.limit = _parse_limit(_first(params, "limit"))
    q.page = _parse_page(_first(params, "page"))
    sort = _first(params, "sort")
    if sort and sort not in SORT_COLUMNS:
        raise BadRequest("invalid sort column")
    q.sort = sort or "id"
    order = _first(params, "order").lower()
    if order and order not in ("asc", "desc"):
        raise BadRequest("order must be asc or desc")
    q.order = (order or "desc").upper()
    return q


def _where(q: ActivityQuery) -> tuple[str, list[Any]]:
    conds: list[str] = []
    args: list[Any] = []
    if q.models:
        conds.append(f"model_id IN ({', '.join('?' * len(q.models))})")
        args.extend(q.models)
    for cond, value in (
        ("ts_created >= ?", q.start),
        ("ts_created <= ?", q.end),
        ("id >= ?", q.min_id or None),
        ("id <= ?", q.max_id or None),
    ):
        if value is not None:
            conds.append(cond)
            args.append(value)
    return (" WHERE " + " AND ".join(conds) if conds else ""), args


def _order_by(q: ActivityQuery) -> str:
    column = SORT_COLUMNS[q.sort]
    if column == "id":
        return f" ORDER BY id {q.order}"
    return f" ORDER BY {column} {q.order}, id {q.order}"


def total_pages(total: int, limit: int) -> int:
    return 0 if total == 0 or limit <= 0 else -(-total // limit)


# ------------------------------------------------------------ histograms ---


def percentile(ordered: Sequence[float], p: float) -> float:
    """Linear interpolation between the closest ranks of sorted values."""
    if not ordered:
        return 0.0
    if len(ordered) == 1:
        return ordered[0]
    rank = p / 100 * (len(ordered) - 1)
    lower, upper = math.floor(rank), math.ceil(rank)
    return ordered[lower] + (rank - lower) * (ordered[upper] - ordered[lower])


def histogram(values: Sequence[float]) -> dict[str, Any] | None:
    """Sturges' bins clamped to 5..20 with p50/p95/p99; None when empty; one
    bin of size 0 when every value is equal."""
    if not values:
        return None
    ordered = sorted(values)
    lo, hi = ordered[0], ordered[-1]
    out: dict[str, Any] = {"bins": [len(ordered)], "min": lo, "max": hi, "binSize": 0.0}
    out.update({f"p{p}": percentile(ordered, p) for p in (50, 95, 99)})
    if lo == hi:
        return out
    count = min(20, max(5, math.ceil(math.log2(len(ordered))) + 1))
    size = (hi - lo) / count
    bins = [0] * count
    for value in ordered:
        bins[min(math.floor((value - lo) / size), count - 1)] += 1
    out.update(bins=bins, binSize=size)
    return out


# ----------------------------------------------------------------- store ---


PRUNE_EVERY = 32


class StoreError(Exception):
    """A database the store was asked to open cannot be opened."""


class ActivityStore:
    """SQLite-backed activity rows. ``path=None`` keeps them in memory.

    In memory, finished requests' rows wait in a list and go into SQLite when
    something reads the store (the UI, the API), which is rare next to
    requests: most rows of a busy server are pruned before anyone reads them,
    and never cost an INSERT (a fifth of a proxied request's CPU, bench/).
    The store numbers them itself, so ids are known at once, and its SQLite
    database is only made at that first read (importing ``sqlite3`` and its
    library cost ~2 MiB of idle RSS, bench/). A file-backed store opens its
    file at once and writes each batch as it comes (SQLite numbers those
    rows: another process may share the file)."""

    def __init__(
        self,
        path: str | None = None,
        metrics_max_in_memory: int = DEFAULT_MAX_IN_MEMORY,
    ) -> None:
        self.path = path
        self.max_rows = (
            metrics_max_in_memory
            if metrics_max_in_memory > 0
            else DEFAULT_MAX_IN_MEMORY
        )
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = _open(path) if path else None
        self._pending: list[tuple[object, ...]] = []  # in memory: not written yet
        self._last_id = _last_id(self._db) if self._db is not None else 0

    @property
    def in_memory(self) -> bool:
        return not self.path

    def set_max_rows(self, metrics_max_in_memory: int) -> None:
        """A new ``metricsMaxInMemory`` (config reload); an in-memory store
        drops what no longer fits at once."""
        if metrics_max_in_memory > 0:
            self.max_rows = metrics_max_in_memory
        if self.in_memory:
            with self._lock:
                self._catch_up()
                self._prune()

    def reopen(self, path: str | None) -> None:
        """Move to the database at ``path`` (None: a new in-memory one) on a
        config reload, as llama-swap does when ``store.path`` changes. Rows are
        not copied. The new one is opened first, so if that fails
        (``StoreError``) this store is left as it was."""
        db = _open_file(path) if path else None
        with self._lock:
            old, self._db, self.path = self._db, db, path
            self._pending = []  # the old database's rows, not copied either
            # Ids keep growing (a file-backed database numbers its own rows).
            if db is not None:
                self._last_id = max(self._last_id, _last_id(db))
            if old is not None:
                old.close()

    def close(self) -> None:
        with self._lock:
            if self._db is None:  # in memory and never read: nothing to keep
                self._pending = []
                return
            try:
                self._catch_up()
            finally:
                self._db.close()

    def _conn(self) -> sqlite3.Connection:
        """The database, an in-memory one made now if this is its first use.
        Under the lock."""
        if self._db is None:
            self._db = _open(None)
        return self._db

    def add(self, entry: ActivityEntry) -> int:
        """Insert ``entry``, set and return its id; prune when in memory."""
        return self.add_many((entry,))[0]

    def add_many(self, entries: Sequence[ActivityEntry]) -> list[int]:
        """Store ``entries``, set and return their ids (in order). One
        transaction per batch rather than per row (the recorder stores the
        rows of finished requests together); in memory, at the next read."""
        if not entries:
            return []
        with self._lock:
            if self.in_memory:
                return self._add_pending(entries)
            rows = [_row_of(entry) for entry in entries]
            first, last = self._write(_INSERT_SQL, rows)
        ids = list(range(first, last + 1))
        for entry, row_id in zip(entries, ids, strict=True):
            entry.id = row_id
        return ids

    def _add_pending(self, entries: Sequence[ActivityEntry]) -> list[int]:
        first = self._last_id + 1
        self._last_id += len(entries)
        ids = list(range(first, self._last_id + 1))
        for entry, row_id in zip(entries, ids, strict=True):
            entry.id = row_id
            self._pending.append((row_id, *_row_of(entry)))
        if len(self._pending) > 2 * self.max_rows:  # older ones would be pruned
            del self._pending[: -self.max_rows]
        return ids

    def _catch_up(self) -> None:
        """Write the rows waiting in memory; under the lock, before a read."""
        if self._pending:
            rows, self._pending = self._pending, []
            try:
                self._write(_INSERT_WITH_ID_SQL, rows)
            except BaseException:
                self._pending = rows + self._pending  # kept for the next read
                raise

    def _write(self, sql: str, rows: list[tuple[object, ...]]) -> tuple[int, int]:
        """Insert ``rows`` in one transaction (pruning when in memory); the
        first and last id. Under the lock."""
        db = self._conn()
        db.execute("BEGIN")
        try:
            db.executemany(sql, rows)
            # The transaction holds SQLite's write lock from the first
            # insert to the commit, so the batch's ids are consecutive.
            (last,) = db.execute("SELECT last_insert_rowid()").fetchone()
            first = int(last) - len(rows) + 1
            # Pruning in batches: a DELETE per insert was a measurable share
            # of the per-request cost; a few extra rows in memory are harmless.
            if self.in_memory and (first - 1) // PRUNE_EVERY != last // PRUNE_EVERY:
                self._prune()
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        self._last_id = max(self._last_id, int(last))
        return first, int(last)

    def _prune(self) -> None:
        """Ids are never reused, so the newest ``max_rows`` rows are exactly
        those with id > MAX(id) - max_rows."""
        self._conn().execute(
            "DELETE FROM activity WHERE id <= (SELECT MAX(id) FROM activity) - ?",
            (self.max_rows,),
        )

    def query(
        self,
        params: Mapping[str, Sequence[str]],
        has_capture: Callable[[int], bool] | None = None,
    ) -> dict[str, Any]:
        """``GET /api/metrics/activity``. ``has_capture`` (e.g. ``id in
        capture_buffer``) fills each row's ``has_capture``; absent, all false.
        Raises BadRequest with llama-swap's texts."""
        q = parse_query(params)
        where, args = _where(q)
        sql = f"SELECT {_COLUMNS} FROM activity{where}{_order_by(q)} LIMIT ? OFFSET ?"
        with self._lock:
            self._catch_up()
            db = self._conn()
            count = f"SELECT COUNT(*) FROM activity{where}"
            total = int(db.execute(count, args).fetchone()[0])
            rows = db.execute(sql, [*args, q.limit, (q.page - 1) * q.limit]).fetchall()
        entries = [_entry_of(r) for r in rows]
        for e in entries:
            e.has_capture = bool(has_capture and has_capture(e.id))
        return {
            "data": [e.to_json() for e in entries],
            "page": q.page,
            "limit": q.limit,
            "total": total,
            "total_pages": total_pages(total, q.limit),
        }

    def stats(self, model: str | None = None) -> dict[str, Any]:
        """``GET /api/metrics/stats``; ``model`` (trimmed) narrows to one."""
        model = (model or "").strip()
        where, args = (" WHERE model_id = ?", [model]) if model else ("", [])
        speeds = " AND " if where else " WHERE "
        with self._lock:
            self._catch_up()
            db = self._conn()
            totals = db.execute(_TOTALS_SQL + where, args).fetchone()
            rows = db.execute(
                "SELECT prompt_per_second, tokens_per_second FROM activity"
                f"{where}{speeds}(prompt_per_second > 0 OR tokens_per_second > 0)",
                args,
            ).fetchall()
        return {
            "total_requests": int(totals[0]),
            "total_input_tokens": int(totals[1]),
            "total_output_tokens": int(totals[2]),
            "total_cache_tokens": int(totals[3]),
            "prompt_histogram": histogram([p for p, _ in rows if p > 0]),
            "gen_histogram": histogram([g for _, g in rows if g > 0]),
        }

    def get(self, entry_id: int) -> ActivityEntry | None:
        """One row by id (for SSE consumers and tests)."""
        with self._lock:
            self._catch_up()
            sql = f"SELECT {_COLUMNS} FROM activity WHERE id = ?"
            row = self._conn().execute(sql, (entry_id,)).fetchone()
        return _entry_of(row) if row else None


def _row_of(entry: ActivityEntry) -> tuple[object, ...]:
    return (
        int(entry.timestamp),
        entry.model,
        entry.req_path,
        entry.resp_content_type,
        entry.resp_status_code,
        entry.tokens.cache_tokens,
        entry.tokens.draft_tokens,
        entry.tokens.draft_acc_tokens,
        entry.tokens.input_tokens,
        entry.tokens.output_tokens,
        entry.tokens.prompt_per_second,
        entry.tokens.tokens_per_second,
        entry.duration_ms,
        entry.error_msg,
        _metadata_json(entry.metadata),
    )


@functools.lru_cache(maxsize=256)
def _metadata_of(items: tuple[tuple[str, str], ...]) -> str:
    return json.dumps(dict(items), sort_keys=True)


def _metadata_json(metadata: dict[str, str]) -> str:
    # Most rows carry the same few pairs (a model's fifo priority): encoded
    # once each rather than once per request.
    return _metadata_of(tuple(metadata.items())) if metadata else ""


def _last_id(db: sqlite3.Connection) -> int:
    """The highest id ``db`` has given (AUTOINCREMENT never reuses one)."""
    (used,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM activity").fetchone()
    seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'activity'")
    row = seq.fetchone()
    return max(int(used), int(row[0]) if row else 0)


def _open_file(path: str) -> sqlite3.Connection:
    """``_open`` for a reload: its failures as ``StoreError``."""
    import sqlite3

    try:
        return _open(path)
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(str(exc)) from exc


def _open(path: str | None) -> sqlite3.Connection:
    import sqlite3  # here, not at import: see ActivityStore

    db = sqlite3.connect(
        path or ":memory:", check_same_thread=False, isolation_level=None
    )
    try:
        if path:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=5000")
        migrate(db)
    except BaseException:
        db.close()
        raise
    return db


def migrate(db: sqlite3.Connection) -> None:
    """Apply the :data:`MIGRATIONS` that ``db`` lacks, recording each in
    goose's version table as llama-swap does (one transaction for all).

    A database swapvisor made before it kept that table holds exactly
    migration 1's table and indexes (swapvisor's schema never changed), so
    it is upgraded in place: version 0 and 1 are recorded as applied and its
    rows stay. Versions only a newer llama-swap knows are left alone; the
    columns swapvisor names are still there."""
    db.execute("BEGIN IMMEDIATE")
    try:
        if not _has_table(db, GOOSE_TABLE):
            db.execute(_GOOSE_CREATE)
            db.execute(_GOOSE_INSERT, (0, True))
            if _has_table(db, "activity"):
                db.execute(_GOOSE_INSERT, (1, True))
        applied = {
            int(v) for (v,) in db.execute(f"SELECT version_id FROM {GOOSE_TABLE}")
        }
        for version, statements in MIGRATIONS:
            if version not in applied:
                for statement in statements:
                    db.execute(statement)
                db.execute(_GOOSE_INSERT, (version, True))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    row = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return row is not None


def _entry_of(row: Sequence[Any]) -> ActivityEntry:
    metadata = json.loads(row[15]) if row[15] else {}
    return ActivityEntry(
        id=int(row[0]),
        timestamp=float(row[1]),
        model=row[2],
        req_path=row[3],
        resp_content_type=row[4],
        resp_status_code=int(row[5]),
        tokens=TokenStats(
            cache_tokens=int(row[6]),
            draft_tokens=int(row[7]),
            draft_acc_tokens=int(row[8]),
            input_tokens=int(row[9]),
            output_tokens=int(row[10]),
            prompt_per_second=float(row[11]),
            tokens_per_second=float(row[12]),
        ),
        duration_ms=int(row[13]),
        error_msg=row[14],
        metadata={str(k): str(v) for k, v in metadata.items()},
    )


# ------------------------------------------------------------ validation ---
