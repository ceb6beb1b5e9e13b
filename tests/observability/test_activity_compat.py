"""A ``store.path`` database moves freely between llama-swap and swapvisor.

llama-swap (internal/store, commit 0bdb372) applies its migrations with goose
(pressly/goose v3.27.2, sqlite3 dialect). ``goose_up`` below does what goose's
``Provider.Up`` does to a SQLite file, from llama-swap's own migration files
(``llama-swap-migrations/``, copied verbatim from that commit): it is the
fixture for a llama-swap database, and it tells whether llama-swap would
accept a swapvisor one.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from controller.observability.activity import ActivityEntry, ActivityStore

if TYPE_CHECKING:
    from collections.abc import Iterator

MIGRATIONS_DIR = Path(__file__).parent / "llama-swap-migrations"

# goose v3.27.2 internal/dialects/sqlite3.go: CreateTable("goose_db_version").
GOOSE_CREATE = """CREATE TABLE goose_db_version (
\t\tid INTEGER PRIMARY KEY AUTOINCREMENT,
\t\tversion_id INTEGER NOT NULL,
\t\tis_applied INTEGER NOT NULL,
\t\ttstamp TIMESTAMP DEFAULT (datetime('now'))
\t)"""
GOOSE_INSERT = "INSERT INTO goose_db_version (version_id, is_applied) VALUES (?, ?)"


class GooseError(Exception):
    pass


def up_statements(path: Path) -> list[str]:
    """goose's sqlparser, Up direction, for files without StatementBegin:
    comments and blank lines before a statement are dropped, a statement
    ends on a line ending with ``;`` and is trimmed."""
    stmts: list[str] = []
    buf, state = "", "start"
    for line in path.read_text().splitlines():
        if line.startswith("-- +goose"):
            state = {"Up": "up", "Down": "down"}[line.split()[-1]]
            continue
        assert "StatementBegin" not in line and "NO TRANSACTION" not in line
        if not buf and (line.strip().startswith("--") or not line.strip()):
            continue
        buf += line + "\n"
        if line.split("--")[0].rstrip().endswith(";"):
            if state == "up":
                stmts.append(buf.strip())
            buf = ""
    return stmts


def legacy_schema() -> str:
    """swapvisor's schema before it kept goose's bookkeeping (commit b923614
    on): migration 1's statements, each with IF NOT EXISTS."""
    [(_, stmts)] = migrations()
    return "\n".join(
        re.sub(r"^CREATE (TABLE|INDEX) ", r"CREATE \1 IF NOT EXISTS ", stmt)
        for stmt in stmts
    )


def migrations() -> list[tuple[int, list[str]]]:
    files = sorted(MIGRATIONS_DIR.glob("*.sql"))
    return [(int(f.name.split("_")[0]), up_statements(f)) for f in files]


def goose_up(db_path: Path) -> list[int]:
    """goose ``Provider.Up`` on a SQLite file; the versions it applied.
    Raises GooseError with goose's wording when a migration fails."""
    with closing(sqlite3.connect(db_path, isolation_level=None)) as db:
        try:  # the sqlite3 dialect has no TableExists: goose asks for version 0
            zero = db.execute(
                "SELECT tstamp, is_applied FROM goose_db_version "
                "WHERE version_id=? ORDER BY tstamp DESC LIMIT 1",
                (0,),
            ).fetchone()
        except sqlite3.OperationalError:
            zero = None
        if zero is None:
            db.execute("BEGIN")
            db.execute(GOOSE_CREATE)
            db.execute(GOOSE_INSERT, (0, True))
            db.execute("COMMIT")
        listed = db.execute(
            "SELECT version_id, is_applied from goose_db_version ORDER BY id DESC"
        ).fetchall()
        known = {int(v) for v, _ in listed}
        applied = []
        for version, stmts in migrations():
            if version in known:
                continue
            db.execute("BEGIN")
            try:
                for stmt in stmts:
                    db.execute(stmt)
            except sqlite3.Error as exc:
                db.execute("ROLLBACK")
                raise GooseError(
                    f"partial migration error (type:sql,version:{version}): {exc}"
                ) from exc
            db.execute(GOOSE_INSERT, (version, True))
            db.execute("COMMIT")
            applied.append(version)
        return applied


def schema(db_path: Path) -> list[tuple[str, str, str, str | None]]:
    with closing(sqlite3.connect(db_path)) as db:
        return db.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()


def goose_rows(db_path: Path) -> list[tuple[int, int, int]]:
    with closing(sqlite3.connect(db_path)) as db:
        rows = db.execute(
            "SELECT id, version_id, is_applied FROM goose_db_version ORDER BY id"
        ).fetchall()
        assert db.execute(
            "SELECT COUNT(*) FROM goose_db_version WHERE tstamp IS NULL"
        ).fetchone() == (0,)
        return rows


@pytest.fixture
def llama_swap_db(tmp_path: Path) -> Path:
    """A database as llama-swap leaves it, with one row llama-swap wrote."""
    path = tmp_path / "llama-swap.db"
    assert goose_up(path) == [1]
    with closing(sqlite3.connect(path)) as db:
        db.execute(
            "INSERT INTO activity (ts_created, model_id, req_path, resp_status_code,"
            " input_tokens, output_tokens, tokens_per_second, metadata_json)"
            " VALUES (1700000000, 'llama', '/v1/chat/completions', 200, 7, 3, 12.5,"
            ' \'{"selector":"s"}\')'
        )
        db.commit()
    return path


@pytest.fixture
def stores() -> Iterator[list[ActivityStore]]:
    """Stores a test opens, closed at the end (closing twice is harmless)."""
    opened: list[ActivityStore] = []
    yield opened
    for s in opened:
        s.close()


def test_activity_store_fresh_file_is_what_llama_swap_migrations_make(
    tmp_path: Path, llama_swap_db: Path
) -> None:
    ours = tmp_path / "swapvisor.db"
    ActivityStore(str(ours)).close()
    assert schema(ours) == schema(llama_swap_db)
    assert goose_rows(ours) == goose_rows(llama_swap_db) == [(1, 0, 1), (2, 1, 1)]
    assert goose_up(ours) == []  # llama-swap accepts it and has nothing to do


def test_activity_store_in_memory_has_the_same_schema(llama_swap_db: Path) -> None:
    s = ActivityStore()
    try:
        sql = "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        got = s._conn().execute(sql).fetchall()
    finally:
        s.close()
    assert got == schema(llama_swap_db)


def test_activity_store_opens_a_llama_swap_database_unchanged(
    llama_swap_db: Path, stores: list[ActivityStore]
) -> None:
    before, rows_before = schema(llama_swap_db), goose_rows(llama_swap_db)
    s = ActivityStore(str(llama_swap_db))
    stores.append(s)
    assert schema(llama_swap_db) == before
    assert goose_rows(llama_swap_db) == rows_before
    page = s.query({})
    assert [r["model"] for r in page["data"]] == ["llama"]
    assert page["data"][0]["metadata"] == {"selector": "s"}
    assert s.add(ActivityEntry(model="mine", resp_status_code=200)) == 2
    assert s.query({"model": ["mine"]})["total"] == 1
    assert s.stats()["total_input_tokens"] == 7
    s.close()
    assert goose_up(llama_swap_db) == []  # and back to llama-swap


def test_activity_store_upgrades_a_legacy_swapvisor_database_in_place(
    tmp_path: Path, llama_swap_db: Path, stores: list[ActivityStore]
) -> None:
    legacy = tmp_path / "legacy.db"
    with closing(sqlite3.connect(legacy)) as db:
        db.executescript(legacy_schema())
        db.execute("INSERT INTO activity (ts_created, model_id) VALUES (1, 'old')")
        db.commit()
    # What llama-swap made of such a file before: it refused it.
    shutil.copy(legacy, tmp_path / "refused.db")
    with pytest.raises(GooseError, match="table activity already exists"):
        goose_up(tmp_path / "refused.db")

    s = ActivityStore(str(legacy))
    stores.append(s)
    assert [r["model"] for r in s.query({})["data"]] == ["old"]
    assert s.add(ActivityEntry(model="new")) == 2
    assert schema(legacy) == schema(llama_swap_db)
    assert goose_rows(legacy) == [(1, 0, 1), (2, 1, 1)]
    s.close()
    assert goose_up(legacy) == []
    s = ActivityStore(str(legacy))  # and opening it again changes nothing
    stores.append(s)
    assert goose_rows(legacy) == [(1, 0, 1), (2, 1, 1)]
    assert s.query({})["total"] == 2


def test_activity_store_leaves_newer_llama_swap_migrations_alone(
    llama_swap_db: Path, stores: list[ActivityStore]
) -> None:
    with closing(sqlite3.connect(llama_swap_db)) as db:
        db.execute("ALTER TABLE activity ADD COLUMN future TEXT NOT NULL DEFAULT ''")
        db.execute(GOOSE_INSERT, (2, True))
        db.commit()
    rows = goose_rows(llama_swap_db)
    s = ActivityStore(str(llama_swap_db))
    stores.append(s)
    assert s.add(ActivityEntry(model="m")) == 2
    assert s.query({})["total"] == 2
    assert goose_rows(llama_swap_db) == rows
