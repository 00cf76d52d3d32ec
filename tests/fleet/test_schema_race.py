"""Nodes of a fleet starting together against a fresh PostgreSQL all open the store: making the
tables and the first revision row is serialised, so none of them fails on a duplicate
``pg_type`` row or a duplicate revision row (real PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from iceward.store import Store, StoreUnavailable
from iceward.usage.store import UsageStore
from tests.fleet.services import PostgresServer

NODES = 16
ROUNDS = 5


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove()


def fresh_database(server: PostgresServer, name: str) -> str:
    admin = create_engine(server.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return server.url.rpartition("/")[0] + f"/{name}"


def open_together(url: str) -> list[str]:
    """``NODES`` threads open the store and its usage tables at the same moment: the errors."""
    barrier = threading.Barrier(NODES)
    errors: list[str] = []

    def node() -> None:
        barrier.wait()
        try:
            store = Store(url)
            UsageStore(store)
            store.close()
        except StoreUnavailable as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=node) for _ in range(NODES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return errors


def test_nodes_opening_a_fresh_database_at_once_all_start(postgres: PostgresServer) -> None:
    for round_ in range(ROUNDS):
        url = fresh_database(postgres, f"race{round_}")
        assert open_together(url) == []
        engine = create_engine(url)
        with engine.connect() as conn:
            tables = conn.execute(
                text("SELECT count(*) FROM pg_tables WHERE tablename = 'usage_records'")
            ).scalar()
        engine.dispose()
        assert tables == 1
