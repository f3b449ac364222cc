"""The stored format of a study, shared by the search (which writes it) and the report (which
reads it). The layout itself is documented in `automerge.search.study`; this module holds the
names that layout uses, so both sides spell them once:

* rungs: ``<study>`` (rung 0), ``<study>:r1`` … ``<study>:full`` (the top rung) —
  `rung_study_name` one way, `rung_of` the other; `rung_name` is the short name stored in the
  trial attr ``rung_name`` (``r0``, ``r1``, … ``full``);
* `Kind`: what a trial is (search | baseline | reference), the trial attr ``kind``;
* `Attr`: the trial user-attr keys;
* `open_storage`: the Optuna storage of a URL, read-only (the report: nothing is created) or
  for writing (the search: SQLite gets its directory and safe locking);
* `redact` (from `automerge.errors`): a storage URL without its password, for every message
  and page that shows one;
* `stored_recipe`: a trial's recipe, parsed once into a typed `Recipe`.

    name = rung_study_name("night1", 2, 3)        # "night1:full"
    rung_of(name, "night1")                       # FULL; rung_of("night1:r1", "night1") == 1
    recipe = stored_recipe(trial.user_attrs)      # Recipe, or None for a reference model
"""

from __future__ import annotations

import functools
import re
import time
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, TypeVar

from automerge.errors import AutomergeError, SpaceError, redact, storage_failure  # noqa: F401 - redact: re-exported

T = TypeVar("T")

FULL = "full"
_RUNG_SUFFIX = re.compile(r"^:r(\d+)$")


# -- rungs ------------------------------------------------------------------------------------


def rung_study_name(study: str, rung: int, num_rungs: int) -> str:
    """The Optuna study of rung `rung` of `num_rungs`: the study's own name at rung 0, then
    ``:r<i>``, and ``:full`` for the top rung."""
    if rung == 0:
        return study
    if rung == num_rungs - 1:
        return f"{study}:{FULL}"
    return f"{study}:r{rung}"


def rung_of(name: str, study: str) -> int | Literal["full"] | None:
    """The rung an Optuna study name holds for `study`: its index, FULL for the top rung (whose
    index is one above the highest proxy rung), None when the name is no rung of `study`."""
    if name == study:
        return 0
    if name == f"{study}:{FULL}":
        return FULL
    if name.startswith(study + ":"):
        m = _RUNG_SUFFIX.match(name[len(study):])
        if m:
            return int(m.group(1))
    return None


def rung_name(rung: int, num_rungs: int) -> str:
    """The short name of a rung (trial attr ``rung_name``, the study attr ``rungs``): r0, r1, … full."""
    return FULL if rung == num_rungs - 1 else f"r{rung}"


# -- trials -----------------------------------------------------------------------------------


class Kind(StrEnum):
    """What a trial is (trial attr ``kind``). A warm start is a SEARCH trial (it joins the front)."""

    SEARCH = "search"  # sampled (or warm-started, or promoted) recipes: the front is made of these
    BASELINE = "baseline"  # the yardstick merges of the space (specialists alone, uniform, …)
    REFERENCE = "reference"  # an existing model evaluated as it is (no recipe)


class Attr:
    """Trial user-attr keys (see the layout in `automerge.search.study`)."""

    RECIPE = "recipe"  # the recipe, YAML (`stored_recipe` parses it)
    RUNG = "rung"
    RUNG_NAME = "rung_name"
    ITEMS = "items"  # per-task item limit of the rung (None: all)
    PARENT = "parent"  # trial number in the rung below (None at rung 0)
    ORIGIN = "origin"  # trial number of the lineage at rung 0
    KIND = "kind"  # a `Kind`
    LABEL = "label"
    KEY = "key"  # the claim item
    ITEM_SCORES = "item_scores"  # {task: `automerge.noise.ItemScores.encode()`}
    EVAL_ITEMS = "eval_items"
    EVAL_SECONDS = "eval_seconds"
    APPLY_SECONDS = "apply_seconds"
    WORKER = "worker"
    PROMOTION = "promotion"  # why promoted: top | front | yardstick
    MODEL_PATH = "model_path"  # reference models
    RETRY_OF = "retry_of"
    FAIL_REASON = "fail_reason"
    SCORE = "score:"  # prefix: score:<task>, the task's primary metric
    N = "n:"  # prefix: n:<task>, items scored


# the device seconds a trial used (summed; a reader falls back to the trial's wall time)
COMPUTE_ATTRS = (Attr.APPLY_SECONDS, Attr.EVAL_SECONDS)


def stored_recipe(source: Mapping[str, Any] | str | None) -> Any:
    """The recipe a trial stored (its user_attrs, or the YAML text itself) as a `Recipe`; None
    when it has none (a reference model). Parsed once per text: the report asks for the same
    recipe from several tables, so callers share one instance: read it, never change it (copy
    with ``model_copy`` to edit). Raises RecipeError for text that is no valid recipe."""
    text = source.get(Attr.RECIPE) if isinstance(source, Mapping) else source
    if not isinstance(text, str) or not text.strip():
        return None
    return _parse_recipe(text)


@functools.lru_cache(maxsize=4096)
def _parse_recipe(text: str) -> Any:
    from automerge.recipe import Recipe

    return Recipe.from_yaml(text, source="stored recipe")


# -- storage ----------------------------------------------------------------------------------


class StudyNotFoundError(AutomergeError):
    """No storage or no study of that name."""


def normalize_url(url: str) -> str:
    """`postgresql://` means psycopg 3 to SQLAlchemy 2.1; use psycopg2 when only it is installed."""
    if url.startswith(("postgresql://", "postgres://")):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url.split("://", 1)[1]
        if url.startswith("postgres://"):
            return "postgresql://" + url.split("://", 1)[1]
    return url


def open_storage(url: str, *, read_only: bool = True) -> Any:
    """The Optuna storage of a URL.

    read_only (the report): an RDB without table creation, or a journal file (a path that is no
    SQLite file); nothing is created, a missing file is a StudyNotFoundError. Else (the search):
    an RDBStorage whose SQLite file gets its directory, BEGIN IMMEDIATE and WAL (see
    `sqlite_setup`), retried when several workers race to create the tables.
    """
    if read_only:
        return _open_read_only(url)
    import optuna

    url = normalize_url(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise SpaceError(f"cannot create the directory of SQLite storage {url}: {err.strerror}; "
                                 "pass --storage with a writable path") from None
        kwargs = {"connect_args": {"timeout": 120}}
    else:
        kwargs = {"pool_pre_ping": True}

    def make() -> Any:
        return optuna.storages.RDBStorage(url, engine_kwargs=dict(kwargs))

    try:
        storage = retry(make, what="open storage")
    except Exception as err:  # noqa: BLE001
        raise SpaceError(storage_failure(url, err)) from None
    if url.startswith("sqlite"):
        sqlite_setup(storage.engine)
        storage.engine.dispose()
    return storage


def _open_read_only(url: str) -> Any:
    import optuna

    if "://" not in url:  # a path: a journal file, or an SQLite file
        path = Path(url)
        if not path.is_file():
            raise StudyNotFoundError(f"storage file {path} does not exist; check the --storage path")
        if path.suffix in (".db", ".sqlite", ".sqlite3"):
            url = f"sqlite:///{path.resolve()}"
        else:
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///").split("?")[0])
        if not path.is_file():
            raise StudyNotFoundError(f"SQLite storage {path} does not exist; check --storage")
    url = normalize_url(url)
    try:
        return optuna.storages.RDBStorage(url, skip_table_creation=True)
    except Exception as err:  # noqa: BLE001 - driver errors vary; the message names the URL
        raise StudyNotFoundError(storage_failure(url, err)) from None


def sqlite_setup(engine: Any) -> None:
    """BEGIN IMMEDIATE for every transaction (no read-then-write upgrade deadlocks) and WAL."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:  # noqa: ARG001
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; a power cut may lose the last commit only
        cur.execute("PRAGMA busy_timeout=120000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def retry(fn: Callable[[], T], *, what: str, tries: int = 8) -> T:
    """Retry a storage operation that lost a race (table creation, locked database)."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for i in range(tries):
        try:
            return fn()
        except (OperationalError, ProgrammingError, IntegrityError, optuna.exceptions.StorageInternalError):
            if i == tries - 1:
                raise
            time.sleep(0.2 * (i + 1))
    raise AssertionError(what)
