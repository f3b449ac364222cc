"""Which storages a search runs on (`automerge.search.study.SEARCH_STORAGES`): the others are
refused in one line naming the URL and the fix, before the space is read or anything written."""

from __future__ import annotations

import pytest
from search_helpers import make_space, write_space

from automerge.errors import SpaceError
from automerge.search.run import SearchOptions, resolve
from automerge.search.study import SearchStudy, check_search_storage


@pytest.mark.parametrize("url", ["sqlite:////tmp/x/study.db", "sqlite:///rel/study.db",
                                 "postgresql://u@h/db", "postgres://u@h/db", "postgresql+psycopg2://u@h/db"])
def test_sqlite_and_postgresql_are_accepted(url):
    check_search_storage(url)


@pytest.mark.parametrize("url, words", [
    ("results/x/journal.log", ["results/x/journal.log", "file path", "JournalStorage", "sqlite:///PATH"]),
    ("mysql://root:secret@h/db", ["mysql://root:***@h/db", "SQLite or PostgreSQL only", "postgresql://USER@HOST"]),
    ("sqlite://", ["sqlite://", "no SQLite file", "sqlite:///PATH"]),
    ("sqlite:///:memory:", ["sqlite:///:memory:", "no SQLite file"]),
])
def test_other_storages_are_refused_in_one_line(url, words):
    with pytest.raises(SpaceError) as err:
        check_search_storage(url)
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_refused_before_the_space_is_read(tmp_path):
    """A bad --storage is reported even when the space file is broken too: nothing else ran first."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: [unclosed")
    with pytest.raises(SpaceError, match="journal.log is a file path"):
        resolve(SearchOptions(space=bad, storage=str(tmp_path / "journal.log")))


def test_search_study_refuses_a_journal_file_and_writes_nothing(tmp_path):
    path = tmp_path / "journal.log"
    with pytest.raises(SpaceError, match="not a database URL"):
        SearchStudy.open("j", str(path), make_space())
    assert not path.exists()


def test_a_space_file_storage_is_checked_too(tmp_path):
    space = write_space(tmp_path / "s.yaml", storage="redis://localhost/0")
    with pytest.raises(SpaceError, match="redis://localhost/0: a search runs on SQLite or PostgreSQL only"):
        resolve(SearchOptions(space=space))
