"""Direct: a statement every turn runs, compiled once by SQLAlchemy, run on SQLite's driver.

SQLAlchemy's execution layer (execution context, parameter and result processing, the result
object) cost a turn's eight statements about 0.56 M instructions, over half of what SQLite and
its driver take for the whole turn (~1 M, measured). On SQLite a Direct statement is compiled
by SQLAlchemy once, with the same bind and result processors it would apply, and then run on
the stdlib driver's cursor. Elsewhere (PostgreSQL), or when something listens for statements
on the engine (tracing), it runs through SQLAlchemy as any statement does. Errors come out as
SQLAlchemy's exception classes either way, so callers handle one kind."""

from __future__ import annotations

import sqlite3
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Dialect, exc
from sqlalchemy.sql import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TypeEngine

Params = Mapping[str, Any]
Processor = Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class _Plan:
    """A statement compiled for one dialect and one set of parameter names."""

    sql: str
    compiled: SQLCompiler
    names: tuple[str, ...]
    binds: tuple[Processor, ...]
    # Every positional parameter is one the caller names (none has a value of its own).
    given: bool
    keys: tuple[str, ...]
    results: tuple[Processor, ...]

    def values(self, params: Params) -> list[Any]:
        """Return the driver's positional parameters, processed as SQLAlchemy would."""
        given = params if self.given else self.compiled.construct_params(params)
        pairs = zip(self.names, self.binds, strict=True)
        return [given[n] if p is None else p(given[n]) for n, p in pairs]

    def row(self, raw: Sequence[Any]) -> tuple[Any, ...]:
        """Return a driver row with SQLAlchemy's result processing applied."""
        return tuple([v if p is None else p(v) for p, v in zip(self.results, raw, strict=True)])


class Direct:
    """One Core statement; on SQLite's stdlib driver it bypasses SQLAlchemy's execution layer."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._plans: weakref.WeakKeyDictionary[Dialect, dict[tuple[str, ...], _Plan]] = (
            weakref.WeakKeyDictionary()
        )

    def execute(self, conn: Connection, params: Params | Sequence[Params]) -> int:
        """Run the statement (once per mapping given a list); return the rows it changed."""
        if not _direct(conn):
            return conn.execute(self.statement, params).rowcount
        batch = [params] if isinstance(params, Mapping) else list(params)
        if not batch:
            return 0
        plan = self._plan(conn, batch[0])
        values = [plan.values(p) for p in batch]
        sqlite = driver(conn)
        try:
            if len(values) > 1:
                return sqlite.executemany(plan.sql, values).rowcount
            return sqlite.execute(plan.sql, values[0]).rowcount
        except sqlite3.Error as e:
            raise driver_error(plan.sql, values, e) from e

    def first(self, conn: Connection, params: Params) -> dict[str, Any] | None:
        """Return the first row as a mapping of column names, or None."""
        if not _direct(conn):
            row = conn.execute(self.statement, params).first()
            return None if row is None else dict(row._mapping)
        plan = self._plan(conn, params)
        values = plan.values(params)
        try:
            raw = driver(conn).execute(plan.sql, values).fetchone()
        except sqlite3.Error as e:
            raise driver_error(plan.sql, values, e) from e
        return None if raw is None else dict(zip(plan.keys, plan.row(raw), strict=True))

    def rows(self, conn: Connection, params: Params, batch: int) -> Iterator[Sequence[Any]]:
        """Yield the rows as tuples, fetched `batch` at a time."""
        if not _direct(conn):
            result = conn.execute(self.statement, params)
            while fetched := result.fetchmany(batch):
                yield from fetched
            return
        plan = self._plan(conn, params)
        values = plan.values(params)
        try:
            cursor = driver(conn).execute(plan.sql, values)
        except sqlite3.Error as e:
            raise driver_error(plan.sql, values, e) from e
        # Closed however the reading ends: an unfinished statement would keep its read
        # snapshot open on a connection later calls share (store.database).
        try:
            while fetched := cursor.fetchmany(batch):
                yield from map(plan.row, fetched)
        except sqlite3.Error as e:
            raise driver_error(plan.sql, values, e) from e
        finally:
            cursor.close()

    def _plan(self, conn: Connection, params: Params) -> _Plan:
        names = tuple(params)
        by_names = self._plans.get(conn.dialect)
        if by_names is None:
            by_names = self._plans[conn.dialect] = {}
        plan = by_names.get(names)
        if plan is None:
            plan = by_names[names] = _compile(self.statement, conn.dialect, names)
        return plan


def _compile(statement: Executable, dialect: Dialect, names: tuple[str, ...]) -> _Plan:
    compiled = statement.compile(dialect=dialect, column_keys=list(names))  # type: ignore[attr-defined]
    assert isinstance(compiled, SQLCompiler)
    # What only SQLAlchemy's execution context does: column defaults computed per row, and
    # expanding IN lists. Statements run directly give every column and inline their lists.
    if compiled.insert_prefetch or compiled.update_prefetch or "POSTCOMPILE" in compiled.string:
        raise TypeError(f"cannot run directly: {compiled.string!r} needs SQLAlchemy's execution")
    order = tuple(compiled.positiontup or ())
    columns = getattr(statement, "selected_columns", ())
    return _Plan(
        sql=compiled.string,
        compiled=compiled,
        names=order,
        binds=tuple(_impl(compiled.binds[n].type, dialect).bind_processor(dialect) for n in order),
        given=set(order) <= set(names),
        keys=tuple(c.key for c in columns),
        results=tuple(_impl(c.type, dialect).result_processor(dialect, None) for c in columns),
    )


def _direct(conn: Connection) -> bool:
    # Whoever listens for statements (tracing, tests) sees them all: through SQLAlchemy.
    events = conn.dispatch
    return conn.dialect.driver == "pysqlite" and not (
        events.before_cursor_execute or events.after_cursor_execute
    )


def _impl(type_: TypeEngine[Any], dialect: Dialect) -> TypeEngine[Any]:
    # The dialect's own variant (SQLite's DATETIME reads text), as SQLAlchemy's execution uses.
    return type_.dialect_impl(dialect)


def driver(conn: Connection) -> sqlite3.Connection:
    """Return the stdlib driver's connection under a SQLite connection."""
    driver = conn.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    return driver


def driver_error(sql: str, values: Sequence[Any], error: sqlite3.Error) -> exc.StatementError:
    """Wrap a driver error in the class SQLAlchemy would raise (IntegrityError, ...)."""
    return exc.DBAPIError.instance(sql, values, error, sqlite3.Error)
