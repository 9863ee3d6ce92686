"""Database connection and transactions (SQLite embedded default, PostgreSQL by URL).

Write transactions on SQLite start with ``BEGIN IMMEDIATE`` so a check-then-insert cannot
interleave with another writer; PostgreSQL adds database constraints for the same rules.
Driver errors never reach users raw: they become ``DatabaseError`` with one line.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from ..core.errors import DatabaseError, DatabaseUnavailableError
from . import generation

# SQLSTATE codes we react to (classified by code, never by message text).
PG_EXCLUSION_VIOLATION = "23P01"
PG_UNIQUE_VIOLATION = "23505"
PG_DEADLOCK = "40P01"


def sqlstate(err: sqlalchemy.exc.DBAPIError) -> str | None:
    return getattr(err.orig, "sqlstate", None)


def create_engine(url: str, namespace: str | None = None, *, read_only: bool = False) -> Engine:
    """An engine for ``url``; ``namespace`` is a PostgreSQL schema holding this repo's tables.

    ``read_only``: every connection refuses writes in the database itself. SQLite opens the
    file with ``mode=ro`` (a missing file is an error, not a new empty database); PostgreSQL
    sessions start with ``default_transaction_read_only=on``, so every transaction is
    READ ONLY and an INSERT, UPDATE, DELETE or CREATE fails (SQLSTATE 25006).
    """
    try:
        parsed = sqlalchemy.make_url(url)
    except sqlalchemy.exc.ArgumentError as err:
        raise DatabaseError(f"cannot read database URL {url!r}: {err}") from None
    if parsed.get_backend_name() == "sqlite":
        if read_only:
            parsed = _sqlite_read_only(parsed)
        engine = sqlalchemy.create_engine(parsed, connect_args={"timeout": 60})
        _configure_sqlite(engine, read_only=read_only)
        return engine
    if parsed.get_backend_name() == "postgresql":
        options = [f"-csearch_path={namespace},public"] if namespace else []
        if read_only:
            options.append("-cdefault_transaction_read_only=on")
        connect_args: dict[str, Any] = {"options": " ".join(options)} if options else {}
        return sqlalchemy.create_engine(parsed, connect_args=connect_args, pool_pre_ping=True)
    raise DatabaseError(
        f"unsupported database {parsed.get_backend_name()!r}: use sqlite:/// or postgresql+psycopg://"
    )


def _sqlite_read_only(url: sqlalchemy.URL) -> sqlalchemy.URL:
    """The same SQLite file as a read-only URI (``file:PATH?mode=ro``)."""
    if not url.database or url.database == ":memory:":
        raise DatabaseError("a read-only SQLite registry needs a database file")
    path = Path(url.database).resolve()
    return url.set(database=f"file:{quote(str(path))}", query={"mode": "ro", "uri": "true"})


def _configure_sqlite(engine: Engine, *, read_only: bool = False) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy (below) decide when transactions begin, not the sqlite3 module.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if not read_only:  # both change the file; a reader takes the file as it is (WAL)
            cursor.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit survives a power cut. The services commit Kafka offsets right
            # after, so a commit that WAL's NORMAL mode could lose would be a lost command.
            cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


class Database:
    """Owns the engine and the current thread's transaction (nested calls join it)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._local = threading.local()
        self._rollback_hooks: list[Callable[[], None]] = []
        # Whether write transactions move the write generation on (generation.py): set by
        # the Registry, whose schema has it; not while a schema is created or migrated.
        self.count_writes = False
        # The write generation this process's last committed write transaction left; None
        # before its first.
        self.last_generation: int | None = None

    def on_rollback(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` whenever a transaction is rolled back.

        Caches of what the database holds (dataset type ids, collections) register their
        ``clear`` here: an entry learnt inside a transaction that then failed is not true.
        """
        self._rollback_hooks.append(hook)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Connection]:
        current: Connection | None = getattr(self._local, "conn", None)
        if current is not None:
            if write:  # a write joining a read-only transaction makes it a write
                self._local.wrote = True
            yield current
            return
        with self._connect() as conn:
            if write and self.dialect == "sqlite":
                conn = conn.execution_options(sqlite_begin="IMMEDIATE")
            self._local.conn = conn
            self._local.generation = None
            self._local.wrote = write
            try:
                with conn.begin():
                    yield conn
                    if self._local.wrote and self.count_writes:
                        self.bump_generation(conn)
            except BaseException as err:
                for hook in self._rollback_hooks:
                    hook()
                if isinstance(err, sqlalchemy.exc.OperationalError):  # lost, locked, restarting
                    raise DatabaseUnavailableError(_one_line(err)) from err
                if isinstance(err, sqlalchemy.exc.DBAPIError):
                    raise DatabaseError(_one_line(err)) from err
                raise
            else:
                if self._local.generation is not None:
                    self.last_generation = self._local.generation
            finally:
                self._local.conn = None

    @property
    def in_transaction(self) -> bool:
        """Whether this thread is inside a transaction (a new one would join it)."""
        return getattr(self._local, "conn", None) is not None

    def bump_generation(self, conn: Connection) -> int:
        """Move the write generation on, once per write transaction; returns the new value.

        Every write transaction does so just before it commits; one that must know whether
        another writer committed while it ran calls this itself at its end (the value
        before, ``bump - 1``, is then the last other commit's).
        """
        if self._local.generation is None:
            self._local.generation = generation.bump(conn)
        return int(self._local.generation)

    def _connect(self) -> Connection:
        try:
            return self.engine.connect()
        except sqlalchemy.exc.DBAPIError as err:  # refused, unknown host, bad password, ...
            url = self.engine.url
            if url.get_backend_name() == "sqlite":
                what = f"cannot open the registry database {url.database}"
                todo = "check that its folder exists and that you may read and write there"
            else:
                what = f"cannot connect to the registry database at {_server(url)}"
                todo = (
                    "check that the server is running and reachable and that the URL is right "
                    "(from --db, the repository's obsbus.yaml or OBSBUS_DB)"
                )
            raise DatabaseUnavailableError(f"{what} ({_detail(err)}); {todo}") from err

    def dispose(self) -> None:
        self.engine.dispose()


def _detail(err: sqlalchemy.exc.DBAPIError) -> str:
    """The driver's own message, first line only (drivers add hints on further lines)."""
    lines = str(err.orig).strip().splitlines() if err.orig is not None else []
    return lines[0].strip() if lines else "unknown"


def _server(url: sqlalchemy.URL) -> str:
    """Where a server URL points (user@host:port/database), never its password."""
    where = f"{url.host or 'localhost'}" + (f":{url.port}" if url.port else "")
    user = f"{url.username}@" if url.username else ""
    return f"{user}{where}/{url.database or ''}"


def _one_line(err: sqlalchemy.exc.DBAPIError) -> str:
    return (
        f"the registry database refused the operation ({type(err.orig).__name__}: {_detail(err)})"
    )
