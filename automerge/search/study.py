"""Storage of a search: one Optuna study per rung, plus a small claims table of our own.

Layout in the storage (SQLite file `results/<study>/study.db` by default, or any RDB URL):

* Optuna studies ``<study>`` (rung 0), ``<study>:r1`` … and ``<study>:full`` (the top rung).
  All share the directions and metric names (the objectives). Study user_attrs of ``<study>``:
  ``space`` (resolved YAML), ``space_fingerprint``, ``rungs`` (list of {name, items}),
  ``automerge_version``, and with method fisher ``fisher:<specialist>`` ({sha256, file}: the
  estimate every worker must use, see `automerge.search.fisher`; the files live in
  ``results/<study>/fisher/``).
* Trial user_attrs: ``recipe`` (YAML), ``rung``, ``rung_name``, ``items`` (per-task limit, null =
  all), ``parent`` (trial number in the previous rung's study, null at rung 0), ``origin``
  (trial number of the lineage at rung 0), ``kind`` (search | baseline | reference), ``label``,
  ``key`` (the claim item, below), ``score:<task>`` (primary metric per task), ``n:<task>``,
  ``item_scores`` ({task: per-item scores in the task's fixed item order, {metric, n, num, den}
  with base64 float32 arrays}, see `automerge.noise.ItemScores`; what error bars and
  paired comparisons are computed from), ``eval_items``, ``eval_seconds``, ``apply_seconds``, ``worker``, ``promotion`` (why it was
  promoted: top | front | yardstick), ``model_path`` (reference models), ``retry_of`` (trial
  number a re-run replaces: the replaced one is FAIL with a ``stale:`` reason and has the same
  ``key``/``parent``), ``fail_reason`` (FAIL trials).
* Table ``automerge_claims(study, rung, item, trial_number, worker, heartbeat, attempts, state,
  created, reason)``, primary key (study, rung, item): one row per unit of work, inserted by the
  worker that takes it — the database's uniqueness makes every claim exactly-once. ``item`` is
  ``s<i>`` (the i-th sampled trial), ``b:<label>`` (a baseline), ``ref:<name>`` (a reference
  model), ``w:<hash>`` (a warm start) or ``p<n>`` (promotion of trial n of the rung below): the
  work item kinds of `automerge.search.work`. ``state`` is running | done |
  failed; ``heartbeat`` (unix time) is refreshed while the work runs, so a dead worker's claims
  are found and re-run.

The names in this layout (rungs, kinds, attr keys) and the storage opening live in
`automerge.study_format`, which the report reads the study with.

Storages: a search runs on SQLite (``sqlite:///PATH``) or PostgreSQL (``postgresql://…``) only:
the claims live in the same database as the trials and their exactly-once rule is the
database's primary key, shared by every worker. `check_search_storage` refuses anything else
(a JournalStorage file, in-memory SQLite, another database) before any work; the report also
reads JournalStorage files (`automerge.study_format.open_storage`, read-only).

SQLite: every transaction is BEGIN IMMEDIATE with a long busy timeout, so several processes on
one machine can share the file safely (Optuna's own RDB code assumes row locks SQLite lacks).
"""

from __future__ import annotations

import math
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from automerge.errors import SpaceError
from automerge.noise import items_from_attrs, objective_noise
from automerge.search.scheduler import SEARCH, Result
from automerge.search.space import SearchSpace
from automerge.search.work import promotion_parent, sample_slot
from automerge.study_format import Attr, normalize_url, open_storage, redact, retry as _retry, rung_name, \
    rung_study_name, sqlite_setup as _sqlite_setup

CLAIMS_TABLE = "automerge_claims"
_meta = sa.MetaData()
claims_table = sa.Table(
    CLAIMS_TABLE,
    _meta,
    sa.Column("study", sa.String(512), primary_key=True),
    sa.Column("rung", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("item", sa.String(512), primary_key=True),
    sa.Column("trial_number", sa.Integer, nullable=True),
    sa.Column("worker", sa.String(256), nullable=False),
    sa.Column("heartbeat", sa.Float, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=1),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
)

RUNNING, DONE, FAILED = "running", "done", "failed"


# The storages a search runs on (see the module docstring): URL scheme -> what it is.
SEARCH_STORAGES = {
    "sqlite": "sqlite:///PATH/study.db (one machine; several workers share the file)",
    "postgresql": "postgresql://USER@HOST[:PORT]/DATABASE (workers on several machines)",
}


def check_search_storage(url: str) -> None:
    """Refuse a storage a search cannot run on, in one line naming the URL and the fix, before
    anything is opened or written."""
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else None
    if scheme == "postgres":
        scheme = "postgresql"
    fix = "use " + " or ".join(SEARCH_STORAGES.values())
    if scheme is None:
        raise SpaceError(f"storage {redact(url)} is a file path, not a database URL: a search needs a database "
                         f"(a JournalStorage file can only be read, by automerge report); {fix}")
    if scheme not in SEARCH_STORAGES:
        raise SpaceError(f"storage {redact(url)}: a search runs on SQLite or PostgreSQL only (its claims table "
                         f"needs one of them); {fix}")
    if scheme == "sqlite":
        path = url.split("://", 1)[1].split("?", 1)[0]
        if path in ("", "/", "/:memory:") or not path.startswith("/"):
            raise SpaceError(f"storage {redact(url)} names no SQLite file (in memory, nothing is kept and no other "
                             f"worker can join); {fix}")


def default_storage_url(study: str, results_dir: str | Path = "results") -> str:
    path = (Path(results_dir) / study / "study.db").resolve()
    return f"sqlite:///{path}"


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Claims:
    """The claims table: exactly-once work items with heartbeats (same database as the study)."""

    def __init__(self, url: str, engine: sa.engine.Engine | None = None, *, create: bool = True):
        url = normalize_url(url)
        if engine is None:
            if url.startswith("sqlite"):
                engine = sa.create_engine(url, connect_args={"timeout": 120})
                _sqlite_setup(engine)
            else:
                engine = sa.create_engine(url, pool_pre_ping=True)
        self.engine = engine
        if create:
            _retry(lambda: _meta.create_all(self.engine, tables=[claims_table], checkfirst=True),
                   what="create claims")

    def claim(self, study: str, rung: int, item: str, worker: str) -> bool:
        """Insert the claim row; False if someone already holds (or finished) this item."""
        now = time.time()
        row = dict(study=study, rung=rung, item=item, trial_number=None, worker=worker, heartbeat=now,
                   attempts=1, state=RUNNING, created=now, reason=None)
        try:
            with self.engine.begin() as conn:
                conn.execute(claims_table.insert().values(**row))
            return True
        except IntegrityError:
            return False

    def _update(self, study: str, rung: int, item: str, where: Any = None, **values: Any) -> int:
        t = claims_table.c
        cond = sa.and_(t.study == study, t.rung == rung, t.item == item)
        if where is not None:
            cond = sa.and_(cond, where)

        def go() -> int:
            with self.engine.begin() as conn:
                return conn.execute(claims_table.update().where(cond).values(**values)).rowcount

        return _retry(go, what="update claim")

    def attach(self, study: str, rung: int, item: str, worker: str, trial_number: int) -> bool:
        t = claims_table.c
        return self._update(study, rung, item, where=t.worker == worker, trial_number=trial_number,
                            heartbeat=time.time()) == 1

    def beat(self, study: str, rung: int, item: str, worker: str) -> bool:
        """Refresh the heartbeat; False if the claim is no longer ours (taken over)."""
        t = claims_table.c
        return self._update(study, rung, item, where=sa.and_(t.worker == worker, t.state == RUNNING),
                            heartbeat=time.time()) == 1

    def finish(self, study: str, rung: int, item: str, worker: str, state: str, reason: str | None = None) -> bool:
        t = claims_table.c
        return self._update(study, rung, item, where=t.worker == worker, state=state, reason=reason,
                            heartbeat=time.time()) == 1

    def release(self, study: str, rung: int, item: str, worker: str, reason: str) -> bool:
        """Give a claim up without finishing it (Ctrl-C): heartbeat 0, so any worker re-runs it."""
        t = claims_table.c
        return self._update(study, rung, item, where=sa.and_(t.worker == worker, t.state == RUNNING),
                            heartbeat=0.0, reason=reason) == 1

    def take_over(self, row: "ClaimRow", worker: str) -> bool:
        """Atomically become the owner of a stale claim (compare-and-swap on worker + heartbeat)."""
        t = claims_table.c
        return self._update(
            row.study, row.rung, row.item,
            where=sa.and_(t.worker == row.worker, t.heartbeat == row.heartbeat, t.state == RUNNING),
            worker=worker, heartbeat=time.time(), attempts=row.attempts + 1,
            reason=f"taken over from {row.worker}",
        ) == 1

    def rows(self, study: str) -> list["ClaimRow"]:
        t = claims_table.c

        def go() -> list[ClaimRow]:
            with self.engine.begin() as conn:
                res = conn.execute(sa.select(claims_table).where(t.study == study))
                return [ClaimRow(**r._mapping) for r in res]

        return _retry(go, what="read claims")

    def delete_study(self, study: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(claims_table.delete().where(claims_table.c.study == study))

    def dispose(self) -> None:
        self.engine.dispose()


@dataclass(frozen=True)
class ClaimRow:
    study: str
    rung: int
    item: str
    trial_number: int | None
    worker: str
    heartbeat: float
    attempts: int
    state: str
    created: float
    reason: str | None = None


def worker_alive(worker: str) -> bool | None:
    """For a worker on this host: is its process alive? None when it runs elsewhere."""
    try:
        host, pid_text, _ = worker.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child its parent has not reaped yet is a zombie: dead for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
    except (OSError, IndexError):
        pass
    return True


class SearchStudy:
    """All rung studies of one search, its space and its claims."""

    def __init__(self, name: str, url: str, space: SearchSpace, storage: Any, claims: Claims):
        import optuna

        from automerge.search.samplers import make_sampler

        self.name = name
        self.url = url
        self.space = space
        self.storage = storage
        self.claims = claims
        self.num_rungs = space.num_rungs
        self._noise_cache: dict[tuple[int, int], tuple[Any, ...] | None] = {}  # finished trials never change
        self._study_ids: dict[int, int] = {}
        self.rung_names = [rung_study_name(name, r, self.num_rungs) for r in range(self.num_rungs)]
        self.studies: list[optuna.Study] = []
        for r, sname in enumerate(self.rung_names):
            sampler = make_sampler(space) if r == 0 else optuna.samplers.RandomSampler(seed=space.seed)
            self.studies.append(optuna.load_study(study_name=sname, storage=storage, sampler=sampler))

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, name: str, url: str, space: SearchSpace | None = None, *, read_only: bool = False) -> "SearchStudy":
        """Open a study, creating it from `space` if new. An existing study keeps its stored space;
        a given space must then agree with it (same fingerprint).

        read_only (`automerge status`): nothing is created, and the stored space is not checked
        against the merge methods and tasks (it was when the study was made; that check imports
        the evaluation stack), so the study is read without loading torch."""
        check_search_storage(url)
        _quiet_optuna()
        if read_only and space is not None:
            raise ValueError("a study opened read-only is read with its stored space; give no space")
        storage = open_storage(url, read_only=read_only)
        claims = Claims(url, create=not read_only)
        try:
            return cls._open(name, url, space, storage, claims, check=not read_only)
        except BaseException:
            storage.engine.dispose()     # closed: SQLite leaves no -wal/-shm files beside the study
            claims.dispose()
            raise

    @classmethod
    def _open(cls, name: str, url: str, space: SearchSpace | None, storage: Any, claims: Claims, *,
              check: bool = True) -> "SearchStudy":
        stored = stored_space(storage, name, check=check)
        if stored is None:
            if space is None:
                raise SpaceError(f"no study {name!r} in {url}; give a search space file to start it")
            _create_rung_studies(storage, name, space)
            stored = stored_space(storage, name)
            assert stored is not None
        elif space is not None and space.fingerprint() != stored.fingerprint():
            raise SpaceError(
                f"study {name!r} in {url} was started with a different search space; continue it without "
                "a SPACE argument (or with the same file), or start a new study with --study NEW_NAME"
            )
        # Budget, device and storage are per invocation: take them from the given space.
        use = stored if space is None else stored.model_copy(
            update={"budget": space.budget, "device": space.device, "storage": space.storage})
        use._source = stored._source
        return cls(name, url, use, storage, claims)

    def close(self) -> None:
        try:
            self.storage.engine.dispose()
        finally:
            self.claims.dispose()

    # -- reading ---------------------------------------------------------------------------

    def study_id(self, rung: int) -> int:
        """The storage's id of a rung's Optuna study."""
        if rung not in self._study_ids:
            self._study_ids[rung] = self.storage.get_study_id_from_name(self.rung_names[rung])
        return self._study_ids[rung]

    def trials(self, rung: int, states: Iterable[Any] | None = None) -> list[Any]:
        return _retry(lambda: self.studies[rung].get_trials(deepcopy=False,
                                                            states=tuple(states) if states else None),
                      what="read trials")

    def results(self, rung: int, trials: list[Any] | None = None) -> list[Result]:
        """Finished, finite results at a rung for the scheduler."""
        from optuna.trial import TrialState

        out = []
        for t in trials if trials is not None else self.trials(rung):
            if t.state != TrialState.COMPLETE or t.values is None:
                continue
            if not all(math.isfinite(v) for v in t.values):
                continue
            out.append(Result(number=t.number, values=tuple(t.values), kind=t.user_attrs.get(Attr.KIND, SEARCH),
                              noise=self._noise(rung, t) if self.space.rungs.noise_z > 0 else None))
        return out

    def _noise(self, rung: int, trial: Any) -> tuple[Any, ...] | None:
        """Per objective, the trial's `objective_noise` vector (None without item data)."""
        key = (rung, trial.number)
        if key not in self._noise_cache:
            items = items_from_attrs(trial.user_attrs)
            full = self.space.is_full(rung)
            vecs = tuple(objective_noise(items, o.full if full else o.tasks) for o in self.space.objectives)
            self._noise_cache[key] = None if any(v is None for v in vecs) else vecs
        return self._noise_cache[key]

    def snapshot(self) -> "Snapshot":
        trials = [self.trials(r) for r in range(self.num_rungs)]
        claims = self.claims.rows(self.name)
        return Snapshot(self, trials, claims)


@dataclass
class Snapshot:
    """Everything the scheduler needs, read once."""

    study: SearchStudy
    trials: list[list[Any]]
    claims: list[ClaimRow]

    def results(self, rung: int) -> list[Result]:
        return self.study.results(rung, self.trials[rung])

    def claimed(self, rung: int) -> set[str]:
        return {c.item for c in self.claims if c.rung == rung}

    def claimed_parents(self, rung: int) -> set[int]:
        parents = {promotion_parent(c.item) for c in self.claims if c.rung == rung}
        return {p for p in parents if p is not None}

    def running(self, rung: int | None = None) -> list[ClaimRow]:
        return [c for c in self.claims if c.state == RUNNING and (rung is None or c.rung == rung)]

    def samples_claimed(self) -> int:
        return sum(1 for c in self.claims if c.rung == 0 and sample_slot(c.item) is not None)


def stored_space(storage: Any, name: str, *, check: bool = True) -> SearchSpace | None:
    """The resolved space a study was created with (None: no such study yet); check=False: its
    schema only, not the checks against methods and tasks (`SearchSpace.from_dict`)."""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return None
    attrs = storage.get_study_user_attrs(study_id)
    if "space" not in attrs:
        return None
    try:
        return SearchSpace.from_yaml(attrs["space"], source=f"space stored in study {name!r}", check=check)
    except SpaceError as err:
        raise SpaceError(f"{err} (the study was made by another automerge version?)") from None


def _create_rung_studies(storage: Any, name: str, space: SearchSpace) -> None:
    """Create every rung study (idempotent, safe when several workers start at once). Rung 0 is
    created last and carries the space, so a study with a space has all its rungs."""
    import optuna

    from automerge import __version__

    R = space.num_rungs
    for r in reversed(range(R)):
        sname = rung_study_name(name, r, R)

        def make(sname: str = sname) -> Any:
            return optuna.create_study(study_name=sname, storage=storage, directions=space.directions,
                                       load_if_exists=True)

        study = _retry(make, what="create study")
        if list(study.metric_names or []) != space.objective_names:
            study.set_metric_names(space.objective_names)
        if r == 0:
            study.set_user_attr("rungs", [{"name": rung_name(i, R), "study": rung_study_name(name, i, R),
                                           "items": space.rung_limit(i)} for i in range(R)])
            study.set_user_attr("automerge_version", __version__)
            study.set_user_attr("space_fingerprint", space.fingerprint())
            study.set_user_attr("space", space.to_yaml())  # last: marks the study complete


def delete_search(name: str, url: str) -> None:
    """Delete every rung study and the claims of a search (tests; a user starts over under a new --study)."""
    import optuna

    storage = open_storage(url, read_only=False)
    try:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
                 if s.study_name == name or s.study_name.startswith(name + ":")]
        for sname in names:
            optuna.delete_study(study_name=sname, storage=storage)
        claims = Claims(url)
        claims.delete_study(name)
        claims.dispose()
    finally:
        storage.engine.dispose()


def _quiet_optuna() -> None:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

