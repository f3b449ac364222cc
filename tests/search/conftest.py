"""Fixtures for search tests: SQLite and PostgreSQL storage (helpers live in search_helpers.py)."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # search_helpers, search_fakes, worker_main

from search_helpers import PG_URL  # noqa: E402


@pytest.fixture(scope="session")
def test_zoo(tmp_path_factory):
    """The test-size zoo's model directories (built once per session, seconds)."""
    import torch

    from automerge.zoo.build import build_zoo

    out = tmp_path_factory.mktemp("zoo") / "zoo"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build_zoo(size="test", out=out, seed=0, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out / "models"


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'study.db'}"


@pytest.fixture(scope="session")
def pg_server_url():
    """A fresh PostgreSQL database for this test session (dropped at the end). Skips without a
    server, unless AUTOMERGE_REQUIRE_PG=1 (CI), where it fails."""
    import sqlalchemy as sa

    from automerge.search.study import normalize_url

    require = os.environ.get("AUTOMERGE_REQUIRE_PG") == "1"
    try:
        admin = sa.create_engine(normalize_url(PG_URL), isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
        with admin.connect() as conn:
            conn.execute(sa.text("select 1"))
    except Exception as err:  # noqa: BLE001
        msg = f"no PostgreSQL server at {PG_URL} ({type(err).__name__}: {str(err).splitlines()[0]})"
        if require:
            pytest.fail(msg + " and AUTOMERGE_REQUIRE_PG=1")
        pytest.skip(msg + "; set AUTOMERGE_TEST_PG_URL to run the PostgreSQL tests")
    dbname = f"automerge_test_{uuid.uuid4().hex[:12]}"
    url = sa.engine.make_url(normalize_url(PG_URL)).set(database=dbname)
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{dbname}"'))
        own_db = True
    except Exception:  # noqa: BLE001 - no CREATE DATABASE right: share the database, unique study names
        url, own_db = sa.engine.make_url(normalize_url(PG_URL)), False
    yield url.render_as_string(hide_password=False)
    if own_db:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_url(pg_server_url):
    """The session database; each test uses unique study names and deletes them afterwards."""
    names: list[str] = []
    yield pg_server_url, names
    from automerge.search.study import delete_search

    for n in names:
        delete_search(n, pg_server_url)


