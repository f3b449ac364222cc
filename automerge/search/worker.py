"""The worker loop: claim work, make a trial, merge + evaluate, tell, repeat.

Any number of workers (processes, machines) run this loop on one study. Each iteration reads a
snapshot of the storage (every rung's trials and the claims table) and takes the most valuable
work it can claim:

1. a claim whose worker died (its process is gone, or its heartbeat is older than
   `stale_after`): the dead trial is marked FAIL with the reason, then re-run with the same
   parameters (at most `max_attempts` times — a recipe that kills every worker is given up);
2. a promotion the scheduler allows (MO-ASHA; highest rung first);
3. a baseline or reference model not evaluated yet at rung 0;
4. a new sampled trial while the budget lasts.

Every unit is claimed by inserting a row into the claims table first; the primary key makes the
claim exactly-once whatever the number of workers. A background thread refreshes the claim's
heartbeat while the trial runs. A trial that raises (OOM, NaN scores, a bad recipe) is told FAIL
with its reason and the loop goes on.

The merge-and-evaluate step is a `TrialRunner`; `EngineRunner` is the real one
(`automerge.engine.ResidentMerger` + `automerge.eval.Evaluator`), tests inject fakes.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from automerge.errors import AutomergeError
from automerge.noise import ITEMS_ATTR, ItemScores
from automerge.search.scheduler import BASELINE, REFERENCE, SEARCH, Scheduler
from automerge.search.samplers import make_sampler
from automerge.search.study import DONE, FAILED, RUNNING, ClaimRow, SearchStudy, Snapshot, worker_alive, worker_id
from automerge.study_format import Attr, rung_name

# ------------------------------------------------------------------------------------------ runner


@dataclass
class Job:
    """One evaluation: a recipe (or a reference model) at one rung."""

    rung: int
    rung_name: str
    limit: int | None  # items per task (None: all)
    tasks: list[str]
    kind: str
    label: str
    recipe: Any | None  # automerge.recipe.Recipe; None for a reference model
    model_path: str | None  # the reference model's path
    trial_number: int
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Evaluation:
    scores: dict[str, float]  # task -> primary score
    counts: dict[str, int] = field(default_factory=dict)  # task -> items evaluated
    failed: str | None = None
    apply_seconds: float = 0.0
    eval_seconds: float = 0.0
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    items: dict[str, ItemScores] = field(default_factory=dict)  # task -> per-item scores (error bars)


class TrialRunner(Protocol):
    def evaluate(self, job: Job) -> Evaluation: ...


class EngineRunner:
    """The real runner: base and task vectors resident (ResidentMerger), one live model rewritten
    in place per trial, scored by the Evaluator. Models load on the first job."""

    def __init__(self, space: Any, *, device: str | None = None, threads: int | None = None):
        self.space = space
        self.device = device or space.device
        self.threads = threads
        self.merger: Any = None
        self.evaluator: Any = None

    def setup(self) -> None:
        if self.merger is not None:
            return
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        from automerge.engine import ResidentMerger
        from automerge.eval import Evaluator

        self.merger = ResidentMerger(base=self.space.base,
                                     specialists={s.name: s.path for s in self.space.specialists},
                                     device=self.device, dtype=self.space.dtype)
        self.evaluator = Evaluator(tokenizer=self.merger.tokenizer, device=self.merger.device, seed=self.space.seed)

    def _load_reference(self, path: str) -> None:
        """Write a reference model's weights into the live model, in place: no second model in
        memory (a 7B reference next to the resident merge would not fit a GPU). The next
        `apply` rewrites every tensor, so the merge does not see them."""
        import torch

        from automerge.specialists import open_specialist

        ckpt = open_specialist(path, base=self.merger.base_checkpoint)  # a LoRA or state dict: base + delta
        live = self.merger.model.state_dict()
        with torch.no_grad():
            for name in ckpt.names:
                if name not in live:
                    raise RuntimeError(f"reference {path}: tensor {name} has no parameter in the live model")
                target = live[name]
                target.copy_(ckpt.read(name, dtype=target.dtype, device=target.device))

    def evaluate(self, job: Job) -> Evaluation:
        self.setup()
        t0 = time.perf_counter()
        if job.recipe is not None:
            recipe = job.recipe
            if recipe.method == "fisher" and self.space._fisher:
                from automerge.fisher import reachable_fisher

                recipe = reachable_fisher(recipe, self.space._fisher)  # a peer's trial names the peer's path
            self.merger.apply(recipe)
        else:
            self._load_reference(job.model_path)
        model = self.merger.model
        t1 = time.perf_counter()
        results = self.evaluator.run(model, job.tasks, limit=job.limit)
        t2 = time.perf_counter()
        failed = [f"{t}: {r.failed}" for t, r in results.items() if getattr(r, "failed", None)]
        return Evaluation(
            scores={t: float(r.score) for t, r in results.items()},
            counts={t: int(r.n) for t, r in results.items()},
            failed="; ".join(failed) or None,
            apply_seconds=t1 - t0,
            eval_seconds=t2 - t1,
            metrics={t: dict(r.metrics) for t, r in results.items()},
            items={t: ItemScores(metric=r.metric, num=np.asarray(r.item_num), den=np.asarray(r.item_den))
                   for t, r in results.items() if getattr(r, "item_num", None) is not None and not r.failed},
        )

    def free(self) -> None:
        """After a failure (OOM…): release cached device memory."""
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            pass


# ------------------------------------------------------------------------------------------ worker


@dataclass
class Work:
    """A claimed unit of work."""

    rung: int
    item: str  # claim item: s<i> | b:<label> | ref:<name> | p<n>
    kind: str
    reason: str = ""  # top | front | yardstick | baseline | sample | retry
    parent: int | None = None
    retry_of: int | None = None
    replay: Any | None = None  # FrozenTrial whose params to re-run (retry of a sampled trial)


@dataclass
class Event:
    kind: str  # start | finish | fail | takeover | giveup | idle | done
    rung: int | None = None
    number: int | None = None
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class WorkerStats:
    finished: int = 0
    failed: int = 0
    retried: int = 0
    discarded: int = 0
    eval_seconds: float = 0.0


class Worker:
    def __init__(
        self,
        study: SearchStudy,
        runner: TrialRunner,
        *,
        trials: int | None = None,
        wall_time: float | None = None,
        finalize: bool | None = None,
        stale_after: float = 600.0,
        heartbeat_interval: float = 15.0,
        poll_interval: float = 2.0,
        max_attempts: int = 3,
        max_items: int | None = None,
        max_consecutive_failures: int = 8,
        on_event: Callable[[Event], None] | None = None,
        worker: str | None = None,
        warm_starts: Sequence[Any] = (),
    ):
        space = study.space
        self.study = study
        self.space = space
        self.runner = runner
        self.budget = space.budget.trials if trials is None else trials
        wall = space.budget.wall_time if wall_time is None else wall_time
        self.started = time.time()
        self.deadline = self.started + wall if wall else None
        self.finalize = space.budget.finalize if finalize is None else finalize
        self.stale_after = stale_after
        self.heartbeat_interval = heartbeat_interval
        self.poll_interval = poll_interval
        self.max_attempts = max_attempts
        self.max_items = max_items
        self.max_consecutive_failures = max_consecutive_failures
        self._failure_streak: list[str] = []
        self.on_event = on_event or (lambda e: None)
        self.me = worker or worker_id()
        self.scheduler = Scheduler(num_rungs=study.num_rungs, eta=space.rungs.eta, directions=space.directions,
                                   tie_break=space.rungs.tie_break, rule=space.rungs.rule,
                                   noise_z=space.rungs.noise_z)
        self.baselines = {b.key: b for b in space.baseline_trials()}
        self.references = {f"ref:{r.name}": r for r in space.references}
        self.warm = {w.key: w for w in warm_starts}  # earlier rounds' recipes, as search trials
        self.stats = WorkerStats()
        self.last_snapshot: Snapshot | None = None
        self._current: tuple[int, str] | None = None
        self._lost = threading.Event()
        self._stop_beat = threading.Event()
        self._study_ids: dict[int, int] = {}
        self.stop_requested = False

    # -- budget ----------------------------------------------------------------------------

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline

    def sampling_over(self, snap: Snapshot) -> bool:
        if self.past_deadline():
            return True
        return self.budget is not None and snap.samples_claimed() >= self.budget

    # -- main loop -------------------------------------------------------------------------

    def run(self) -> WorkerStats:
        beat = threading.Thread(target=self._beat_loop, name="automerge-heartbeat", daemon=True)
        beat.start()
        try:
            while not self.stop_requested:
                work = self.next_work()
                if work is None:
                    if self.finished(self.last_snapshot):
                        break
                    self.on_event(Event("idle", message="waiting for other workers' trials"))
                    time.sleep(self.poll_interval)
                    continue
                self.execute(work)
                if self.max_items is not None and self.stats.finished + self.stats.failed >= self.max_items:
                    break
        finally:
            self._stop_beat.set()
            beat.join(timeout=5)
        self.on_event(Event("done", message="worker finished"))
        return self.stats

    def finished(self, snap: Snapshot | None) -> bool:
        """Nothing left for this worker: sampling over, nothing to promote, nobody running (or
        the deadline has passed, when waiting for others is pointless)."""
        if snap is None:
            return False
        if not self.sampling_over(snap):
            return False
        if self.past_deadline():
            return True
        return not snap.running()

    def _study_id(self, rung: int) -> int:
        if rung not in self._study_ids:
            self._study_ids[rung] = self.study.storage.get_study_id_from_name(self.study.rung_names[rung])
        return self._study_ids[rung]

    def next_work(self) -> Work | None:
        snap = self.study.snapshot()
        self.last_snapshot = snap
        work = self._sweep(snap)
        if work is not None:
            return work
        claims = self.study.claims
        name = self.study.name
        R = self.study.num_rungs
        sampling_over = self.sampling_over(snap)
        promotions = self.scheduler.promotions(
            [snap.results(r) for r in range(R)],
            [snap.claimed_parents(r) for r in range(R)],
            finalize=self.finalize and sampling_over,
            busy=[bool(snap.running(r)) for r in range(R)],
        )
        for p in promotions:
            if claims.claim(name, p.rung, p.key, self.me):
                return Work(rung=p.rung, item=p.key, kind=p.kind, reason=p.reason, parent=p.parent)
        claimed0 = snap.claimed(0)
        for key in [*self.baselines, *self.references]:
            if key not in claimed0 and claims.claim(name, 0, key, self.me):
                kind = BASELINE if key in self.baselines else REFERENCE
                return Work(rung=0, item=key, kind=kind, reason=kind)
        for key in self.warm:  # once per study, before any sample, not counted against the budget
            if key not in claimed0 and claims.claim(name, 0, key, self.me):
                return Work(rung=0, item=key, kind=SEARCH, reason="warm start")
        if not sampling_over:
            i = snap.samples_claimed()
            while self.budget is None or i < self.budget:
                if claims.claim(name, 0, f"s{i}", self.me):
                    return Work(rung=0, item=f"s{i}", kind=SEARCH, reason="sample")
                i += 1
        return None

    # -- fault handling --------------------------------------------------------------------

    def _sweep(self, snap: Snapshot) -> Work | None:
        """Take over one claim whose worker died; fail its trial; return it to re-run."""
        from optuna.trial import TrialState

        now = time.time()
        self._fail_orphans(snap)
        for c in snap.running():
            if c.worker == self.me:
                continue
            alive = worker_alive(c.worker)
            if alive is not False and now - c.heartbeat <= self.stale_after:
                continue
            if not self.study.claims.take_over(c, self.me):
                continue
            why = (f"worker {c.worker} died" if alive is False
                   else f"worker {c.worker} stopped heartbeating ({now - c.heartbeat:.0f}s ago)")
            if c.trial_number is None:
                self._fail_unnamed(c, why)
            trials = [t for t in self.study.trials(c.rung) if t.user_attrs.get(Attr.KEY) == c.item]
            if any(t.state == TrialState.COMPLETE for t in trials):
                # It finished but died before closing its claim: nothing to re-run.
                self.study.claims.finish(self.study.name, c.rung, c.item, self.me, DONE, reason=why)
                continue
            previous = None
            for t in trials:
                if t.state in (TrialState.RUNNING, TrialState.WAITING):
                    self._fail_trial(c.rung, t, f"stale: {why}; re-run as a new trial")
                previous = t if previous is None or t.number > previous.number else previous
            self.on_event(Event("takeover", rung=c.rung, number=previous.number if previous else None,
                                message=f"{c.item}: {why}"))
            if c.attempts + 1 > self.max_attempts:
                self.study.claims.finish(self.study.name, c.rung, c.item, self.me, FAILED,
                                         reason=f"gave up after {c.attempts} attempts; last: {why}")
                self.on_event(Event("giveup", rung=c.rung, message=f"{c.item}: gave up after {c.attempts} attempts"))
                continue
            work = self._work_for_item(c, previous)
            self.stats.retried += 1
            return work
        return None

    def _work_for_item(self, c: ClaimRow, previous: Any | None) -> Work:
        retry_of = previous.number if previous is not None else None
        if c.item.startswith("p"):
            kind = previous.user_attrs.get(Attr.KIND, SEARCH) if previous is not None else None
            if kind is None:
                kind = self._parent_kind(c.rung, int(c.item[1:]))
            return Work(rung=c.rung, item=c.item, kind=kind, reason="retry", parent=int(c.item[1:]),
                        retry_of=retry_of)
        if c.item in self.baselines:
            return Work(rung=0, item=c.item, kind=BASELINE, reason="retry", retry_of=retry_of)
        if c.item in self.references:
            return Work(rung=0, item=c.item, kind=REFERENCE, reason="retry", retry_of=retry_of)
        if c.item in self.warm:
            return Work(rung=0, item=c.item, kind=SEARCH, reason="retry", retry_of=retry_of)
        replay = previous if previous is not None and Attr.RECIPE in previous.user_attrs else None
        return Work(rung=0, item=c.item, kind=SEARCH, reason="retry", retry_of=retry_of, replay=replay)

    def _parent_kind(self, rung: int, parent: int) -> str:
        for t in self.study.trials(rung - 1):
            if t.number == parent:
                return t.user_attrs.get(Attr.KIND, SEARCH)
        return SEARCH

    def _fail_unnamed(self, dead: ClaimRow, why: str) -> None:
        """The dead worker may have created its trial (ask) but died before naming it (key): fail
        the unnamed RUNNING trials it could have made — started after its claim — unless another
        live worker is itself between claiming and naming at that rung (then the age rule in
        `_fail_orphans` decides later)."""
        from optuna.trial import TrialState

        now = time.time()
        for x in self.study.claims.rows(self.study.name):
            if (x.rung == dead.rung and x.item != dead.item and x.state == RUNNING and x.trial_number is None
                    and worker_alive(x.worker) is not False and now - x.heartbeat <= self.stale_after):
                return
        for t in self.study.trials(dead.rung, [TrialState.RUNNING]):
            if Attr.KEY in t.user_attrs or t.datetime_start is None:
                continue
            if t.datetime_start.timestamp() >= dead.created - 2.0:  # both times from the dead worker's clock
                self._fail_trial(dead.rung, t, f"orphan: {why} after creating this trial, before naming it")

    def _fail_orphans(self, snap: Snapshot) -> None:
        """RUNNING trials that no claim knows (a worker died between creating and naming them)."""
        from optuna.trial import TrialState

        horizon = datetime.now().timestamp() - self.stale_after
        for r, trials in enumerate(snap.trials):
            for t in trials:
                if t.state != TrialState.RUNNING or Attr.KEY in t.user_attrs:
                    continue
                if t.datetime_start is not None and t.datetime_start.timestamp() < horizon:
                    self._fail_trial(r, t, "orphan: running trial with no claim (its worker died while creating it)")

    def _fail_trial(self, rung: int, t: Any, reason: str) -> None:
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        storage = self.study.storage
        tid = storage.get_trial_id_from_study_id_trial_number(self._study_id(rung), t.number)
        try:
            storage.set_trial_user_attr(tid, Attr.FAIL_REASON, reason)
            storage.set_trial_state_values(tid, TrialState.FAIL)
        except (UpdateFinishedTrialError, RuntimeError):
            pass

    # -- heartbeat -------------------------------------------------------------------------

    def _beat_loop(self) -> None:
        while not self._stop_beat.wait(self.heartbeat_interval):
            cur = self._current
            if cur is None:
                continue
            try:
                ok = self.study.claims.beat(self.study.name, cur[0], cur[1], self.me)
            except Exception:  # noqa: BLE001 - a failed beat is retried at the next interval
                continue
            if not ok and self._current is cur:  # (not the previous item, finished meanwhile)
                self._lost.set()

    def _still_ours(self, work: Work) -> bool:
        """Is the claim of `work` still this worker's and running? (Checked in storage.)"""
        for c in self.study.claims.rows(self.study.name):
            if c.rung == work.rung and c.item == work.item:
                return c.worker == self.me and c.state == RUNNING
        return False

    # -- one trial -------------------------------------------------------------------------

    def _source_trial(self, rung: int, number: int) -> Any:
        for t in self.study.trials(rung):
            if t.number == number:
                return t
        raise RuntimeError(f"trial {number} of rung {rung} not found")

    def _create_trial(self, work: Work) -> tuple[int, Any, dict[str, Any]]:
        """Create the trial in the rung's study; returns (number, recipe or None, attrs)."""
        from optuna.trial import FrozenTrial, TrialState

        from automerge.recipe import Recipe

        space = self.space
        R = self.study.num_rungs
        attrs: dict[str, Any] = {
            Attr.RUNG: work.rung, Attr.RUNG_NAME: rung_name(work.rung, R),
            Attr.ITEMS: space.rung_limit(work.rung), Attr.KIND: work.kind, Attr.KEY: work.item, Attr.WORKER: self.me,
            Attr.PARENT: work.parent, Attr.PROMOTION: work.reason if work.parent is not None else None,
        }
        if work.retry_of is not None:
            attrs[Attr.RETRY_OF] = work.retry_of
        params: dict[str, Any] = {}
        dists: dict[str, Any] = {}
        recipe = None
        if work.item.startswith("s") and work.replay is None:
            study = self.study.studies[0]
            study.sampler = make_sampler(space, slot=int(work.item[1:]))
            before = time.time()
            try:
                trial = study.ask()
            except Exception as err:
                # ask() creates the trial before the sampler runs: fail it rather than leave it RUNNING
                me = ClaimRow(self.study.name, 0, work.item, None, self.me, before, 1, RUNNING, before - 1.0)
                self._fail_unnamed(me, f"the sampler raised {type(err).__name__}: {err}")
                raise
            try:
                trial.set_user_attr(Attr.KEY, work.item)  # first: a trial without key is an orphan
                for k, v in attrs.items():
                    trial.set_user_attr(k, v)
                attrs[Attr.LABEL] = f"trial {trial.number}"
                trial.set_user_attr(Attr.LABEL, attrs[Attr.LABEL])
                trial.set_user_attr(Attr.ORIGIN, trial.number)
                recipe = space.suggest(trial)
                trial.set_user_attr(Attr.RECIPE, recipe.to_yaml())
            except Exception as err:
                self._fail_trial(0, trial, f"could not build the recipe: {type(err).__name__}: {err}")
                raise
            return trial.number, recipe, attrs
        if work.parent is not None:
            src = self._source_trial(work.rung - 1, work.parent)
            params, dists = dict(src.params), dict(src.distributions)
            attrs[Attr.LABEL] = src.user_attrs.get(Attr.LABEL, f"trial {src.number}")
            attrs[Attr.ORIGIN] = src.user_attrs.get(Attr.ORIGIN, src.number)
            if Attr.RECIPE in src.user_attrs:
                attrs[Attr.RECIPE] = src.user_attrs[Attr.RECIPE]
                recipe = Recipe.from_yaml(src.user_attrs[Attr.RECIPE], source=f"recipe of trial {src.number}")
            if Attr.MODEL_PATH in src.user_attrs:
                attrs[Attr.MODEL_PATH] = src.user_attrs[Attr.MODEL_PATH]
        elif work.replay is not None:
            src = work.replay
            params, dists = dict(src.params), dict(src.distributions)
            attrs[Attr.LABEL] = src.user_attrs.get(Attr.LABEL, f"trial {src.number}")
            attrs[Attr.RECIPE] = src.user_attrs[Attr.RECIPE]
            recipe = Recipe.from_yaml(src.user_attrs[Attr.RECIPE], source=f"recipe of trial {src.number}")
        elif work.item in self.baselines or work.item in self.warm:
            b = self.baselines.get(work.item) or self.warm[work.item]
            attrs[Attr.LABEL] = b.label
            recipe = b.recipe
            attrs[Attr.RECIPE] = recipe.to_yaml()
            if b.params is not None:
                params = dict(b.params)
                dists = _distributions(space, b.params)
        elif work.item in self.references:
            ref = self.references[work.item]
            attrs[Attr.LABEL] = ref.name
            attrs[Attr.MODEL_PATH] = ref.path
        else:
            raise RuntimeError(f"unknown work item {work.item!r}")
        template = FrozenTrial(
            number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(), datetime_complete=None,
            params=params, distributions=dists, user_attrs={k: v for k, v in attrs.items()}, system_attrs={},
            intermediate_values={}, trial_id=-1,
        )
        storage = self.study.storage
        tid = storage.create_new_trial(self._study_id(work.rung), template_trial=template)
        number = storage.get_trial_number_from_id(tid)
        if work.rung == 0:
            storage.set_trial_user_attr(tid, Attr.ORIGIN, number)
        return number, recipe, attrs

    def execute(self, work: Work) -> None:
        from optuna.trial import TrialState

        name = self.study.name
        claims = self.study.claims
        study = self.study.studies[work.rung]
        setup = getattr(self.runner, "setup", None)
        if setup is not None:
            try:
                setup()  # loading models: an error here is the search's, not the trial's
            except BaseException:
                claims.release(name, work.rung, work.item, self.me, "worker could not load the models")
                raise
        self._lost.clear()
        self._current = (work.rung, work.item)  # a new tuple object per work item
        number = None
        try:
            try:
                number, recipe, attrs = self._create_trial(work)
            except Exception as err:  # noqa: BLE001 - e.g. the space cannot build a recipe
                reason = f"could not create the trial: {type(err).__name__}: {err}"
                claims.finish(name, work.rung, work.item, self.me, FAILED, reason=reason)
                self.stats.failed += 1
                self.on_event(Event("fail", rung=work.rung, message=reason))
                return
            claims.attach(name, work.rung, work.item, self.me, number)
            label = attrs.get(Attr.LABEL, "")
            job = Job(rung=work.rung, rung_name=attrs[Attr.RUNG_NAME], limit=self.space.rung_limit(work.rung),
                      tasks=self.space.rung_tasks(work.rung), kind=work.kind, label=label, recipe=recipe,
                      model_path=attrs.get(Attr.MODEL_PATH), trial_number=number)
            self.on_event(Event("start", rung=work.rung, number=number,
                                message=f"{attrs['rung_name']} #{number} {work.kind} {label}",
                                data={"reason": work.reason}))
            t0 = time.perf_counter()
            try:
                result = self.runner.evaluate(job)
                failure = result.failed
            except KeyboardInterrupt:
                self._interrupted(work, number)
                raise
            except Exception as err:  # noqa: BLE001 - OOM, NaN, bad recipe: the trial fails, the search goes on
                result = None
                failure = f"{type(err).__name__}: {err}"
                if not isinstance(err, AutomergeError):
                    failure += " | " + " / ".join(traceback.format_exc().strip().splitlines()[-3:])
                free = getattr(self.runner, "free", None)
                if free:
                    free()
            elapsed = time.perf_counter() - t0
            if self._lost.is_set() and not self._still_ours(work):
                self.stats.discarded += 1
                self.on_event(Event("fail", rung=work.rung, number=number,
                                    message=f"#{number}: claim taken over by another worker; result discarded"))
                return
            values: list[float] | None = None
            storage = self.study.storage
            tid = storage.get_trial_id_from_study_id_trial_number(self._study_id(work.rung), number)
            if result is not None:
                for task, score in result.scores.items():
                    storage.set_trial_user_attr(tid, Attr.SCORE + task, _jsonable(score))
                for task, n in result.counts.items():
                    storage.set_trial_user_attr(tid, Attr.N + task, int(n))
                if result.items:
                    storage.set_trial_user_attr(tid, ITEMS_ATTR, {t: it.encode() for t, it in result.items.items()})
                storage.set_trial_user_attr(tid, Attr.EVAL_ITEMS, int(sum(result.counts.values())))
                storage.set_trial_user_attr(tid, Attr.EVAL_SECONDS, round(result.eval_seconds or elapsed, 4))
                storage.set_trial_user_attr(tid, Attr.APPLY_SECONDS, round(result.apply_seconds, 4))
                if failure is None:
                    missing = [t for t in job.tasks if t not in result.scores]
                    if missing:
                        failure = f"evaluation returned no score for {', '.join(missing)}"
                    else:
                        values = self.space.objective_values(result.scores, work.rung)
                        if not all(math.isfinite(v) for v in values):
                            failure = f"non-finite objective values {values} (NaN/Inf scores: the merge broke the model)"
                            values = None
            try:
                if failure is not None:
                    storage.set_trial_user_attr(tid, Attr.FAIL_REASON, failure[:2000])
                    study.tell(number, state=TrialState.FAIL)
                    claims.finish(name, work.rung, work.item, self.me, FAILED, reason=failure[:2000])
                    self.stats.failed += 1
                    self.on_event(Event("fail", rung=work.rung, number=number,
                                        message=f"{attrs['rung_name']} #{number} {work.kind} {label}: FAIL {failure[:300]}",
                                        data={"seconds": elapsed}))
                    self._failure_streak.append(failure.split(" | ")[0][:200])
                else:
                    study.tell(number, values)
                    claims.finish(name, work.rung, work.item, self.me, DONE)
                    self._failure_streak.clear()
                    self.stats.finished += 1
                    self.stats.eval_seconds += elapsed
                    shown = _shown(self.space, work.rung, values, result.items if result is not None else {})
                    self.on_event(Event("finish", rung=work.rung, number=number,
                                        message=f"{attrs['rung_name']} #{number} {work.kind} {label}: {shown} "
                                                f"({elapsed:.1f}s)",
                                        data={"values": values, "seconds": elapsed, "kind": work.kind,
                                              "reason": work.reason}))
            except (RuntimeError, ValueError) as err:
                # The trial was finished by someone else (taken over as stale): drop our result.
                self.stats.discarded += 1
                self.on_event(Event("fail", rung=work.rung, number=number, message=f"#{number}: not recorded: {err}"))
        finally:
            self._current = None
        streak = self._failure_streak
        if self.max_consecutive_failures and len(streak) >= self.max_consecutive_failures \
                and len(set(streak[-self.max_consecutive_failures:])) == 1:
            raise AutomergeError(
                f"{len(streak)} trials in a row failed with the same error — stopping instead of failing "
                f"every trial: {streak[-1]}. Fix the cause and run the same command again to continue "
                "(the failed trials stay recorded).")

    def _interrupted(self, work: Work, number: int | None) -> None:
        """Ctrl-C mid-trial: fail the trial and release the claim so any worker re-runs it."""
        from optuna.trial import TrialState

        try:
            if number is not None:
                tid = self.study.storage.get_trial_id_from_study_id_trial_number(self._study_id(work.rung), number)
                self.study.storage.set_trial_user_attr(tid, Attr.FAIL_REASON, "interrupted; re-run on resume")
                self.study.studies[work.rung].tell(number, state=TrialState.FAIL)
            self.study.claims.release(self.study.name, work.rung, work.item, self.me, "interrupted")
        except Exception:  # noqa: BLE001
            pass


def _shown(space: Any, rung: int, values: Sequence[float], items: Mapping[str, ItemScores]) -> str:
    """Objective values for the log: a loss in nats/token where the items allow, else the value."""
    from automerge.noise import objective_loss

    out = []
    for o, v in zip(space.objectives, values):
        loss = objective_loss(items, o.full if space.is_full(rung) else o.tasks) if items else None
        out.append(f"{o.name}={v:.4f}" if loss is None else f"{o.name} loss={loss:.3f}")
    return " ".join(out)


def _distributions(space: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    """Optuna distributions of given params, as `space.suggest` declares them."""
    rec = _Recorder(params)
    space.suggest(rec)
    return {k: rec.dists[k] for k in params}


class _Recorder:
    def __init__(self, params: Mapping[str, Any]):
        self.params = dict(params)
        self.dists: dict[str, Any] = {}

    def suggest_float(self, name, low, high, *, step=None, log=False):  # noqa: ANN001
        from optuna.distributions import FloatDistribution

        self.dists[name] = FloatDistribution(low, high, step=step, log=log)
        return float(self.params[name])

    def suggest_categorical(self, name, choices):  # noqa: ANN001
        from optuna.distributions import CategoricalDistribution

        self.dists[name] = CategoricalDistribution(list(choices))
        return self.params[name]


def _jsonable(x: float) -> float | str:
    x = float(x)
    return x if math.isfinite(x) else str(x)
