"""The worker loop: claim work, make a trial, merge + evaluate, record, repeat.

Any number of workers (processes, machines) run this loop on one study. Each iteration reads a
snapshot of the storage (every rung's trials and the claims table) and takes the most valuable
work it can claim:

1. a claim whose worker died (`automerge.search.recovery`): re-run with the same parameters;
2. a promotion the scheduler allows (MO-ASHA; highest rung first);
3. a baseline or reference model not evaluated yet at rung 0, then the warm starts;
4. a new sampled trial while the budget lasts.

Every unit is a work item (`automerge.search.work`), claimed by inserting a row into the claims
table first; the primary key makes the claim exactly-once whatever the number of workers. One
item is then executed in three steps: `_start` (the item builds its trial, the claim names it),
`_evaluate` (the runner merges and scores, a background thread refreshes the claim's heartbeat)
and `_record` (scores, tell, the claim closed). A trial that raises (OOM, NaN scores, a bad
recipe) is told FAIL with its reason and the loop goes on.

The merge-and-evaluate step is a `TrialRunner` (`automerge.search.runner`); `EngineRunner` is
the real one, tests inject fakes.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from automerge.errors import AutomergeError
from automerge.noise import ITEMS_ATTR, ItemScores
from automerge.search.recovery import FailureStreak, Recovery
from automerge.search.runner import EngineRunner, Evaluation, Job, TrialRunner  # noqa: F401 - re-exported
from automerge.search.scheduler import Scheduler
from automerge.search.study import DONE, FAILED, RUNNING, SearchStudy, Snapshot, worker_id
from automerge.search.work import NewTrial, Promotion, Sample, TrialMaker, WorkItem, fixed_items
from automerge.study_format import Attr


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
        self.heartbeat_interval = heartbeat_interval
        self.poll_interval = poll_interval
        self.max_items = max_items
        self.on_event = on_event or (lambda e: None)
        self.me = worker or worker_id()
        self.scheduler = Scheduler(num_rungs=study.num_rungs, eta=space.rungs.eta, directions=space.directions,
                                   tie_break=space.rungs.tie_break, rule=space.rungs.rule,
                                   noise_z=space.rungs.noise_z)
        # baselines, references, then earlier rounds' recipes (warm starts): once per study, at rung 0
        self.fixed = fixed_items(space, warm_starts)
        self.recovery = Recovery(study, self.me, stale_after=stale_after, max_attempts=max_attempts,
                                 on_event=lambda kind, rung, number, message: self.on_event(
                                     Event(kind, rung=rung, number=number, message=message)))
        self.streak = FailureStreak(max_consecutive_failures)
        self.maker = TrialMaker(study, self.me, fail_trial=self.recovery.fail_trial,
                                fail_unnamed=self.recovery.fail_unnamed)
        self.stats = WorkerStats()
        self.last_snapshot: Snapshot | None = None
        self._current: tuple[int, str] | None = None
        self._lost = threading.Event()
        self._stop_beat = threading.Event()
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

    def next_work(self) -> WorkItem | None:
        """Claim the most valuable work item (the order in the module docstring); None: nothing now."""
        snap = self.study.snapshot()
        self.last_snapshot = snap
        work = self.recovery.sweep(snap, self.fixed)
        if work is not None:
            self.stats.retried += 1
            return work
        R = self.study.num_rungs
        sampling_over = self.sampling_over(snap)
        promotions = self.scheduler.promotions(
            [snap.results(r) for r in range(R)],
            [snap.claimed_parents(r) for r in range(R)],
            finalize=self.finalize and sampling_over,
            busy=[bool(snap.running(r)) for r in range(R)],
        )
        candidates: list[WorkItem] = [Promotion(reason=p.reason, rung=p.rung, parent=p.parent, parent_kind=p.kind)
                                      for p in promotions]
        claimed0 = snap.claimed(0)
        candidates += [w for key, w in self.fixed.items() if key not in claimed0]
        for work in candidates:
            if self._claim(work):
                return work
        if not sampling_over:
            i = snap.samples_claimed()
            while self.budget is None or i < self.budget:
                work = Sample(reason="sample", slot=i)
                if self._claim(work):
                    return work
                i += 1
        return None

    def _claim(self, work: WorkItem) -> bool:
        return self.study.claims.claim(self.study.name, work.rung, work.key, self.me)

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

    def _still_ours(self, work: WorkItem) -> bool:
        """Is the claim of `work` still this worker's and running? (Checked in storage.)"""
        for c in self.study.claims.rows(self.study.name):
            if c.rung == work.rung and c.item == work.key:
                return c.worker == self.me and c.state == RUNNING
        return False

    # -- one work item: start -> evaluate -> record ------------------------------------------

    def execute(self, work: WorkItem) -> None:
        """Run one claimed work item to a recorded trial (or a recorded failure)."""
        self._setup_runner(work)
        self._lost.clear()
        self._current = (work.rung, work.key)  # a new tuple object per work item
        try:
            trial = self._start(work)
            if trial is not None:
                job = self._job(work, trial)
                outcome = self._evaluate(work, job)
                if self._lost.is_set() and not self._still_ours(work):
                    self.stats.discarded += 1
                    self.on_event(Event("fail", rung=work.rung, number=trial.number, message=f"#{trial.number}: "
                                        "claim taken over by another worker; result discarded"))
                else:
                    self._record(work, job, trial, *outcome)
        finally:
            self._current = None
        self.streak.check()

    def _setup_runner(self, work: WorkItem) -> None:
        """Load the models (once): an error here is the search's, not the trial's."""
        setup = getattr(self.runner, "setup", None)
        if setup is None:
            return
        try:
            setup()
        except BaseException:
            self.study.claims.release(self.study.name, work.rung, work.key, self.me, "worker could not load the models")
            raise

    def _start(self, work: WorkItem) -> NewTrial | None:
        """The item builds its trial and the claim names it; None (claim failed) when it cannot."""
        try:
            trial = work.build(self.maker)
        except Exception as err:  # noqa: BLE001 - e.g. the space cannot build a recipe
            reason = f"could not create the trial: {type(err).__name__}: {err}"
            self.study.claims.finish(self.study.name, work.rung, work.key, self.me, FAILED, reason=reason)
            self.stats.failed += 1
            self.on_event(Event("fail", rung=work.rung, message=reason))
            return None
        self.study.claims.attach(self.study.name, work.rung, work.key, self.me, trial.number)
        return trial

    def _job(self, work: WorkItem, trial: NewTrial) -> Job:
        job = Job(rung=work.rung, rung_name=trial.attrs[Attr.RUNG_NAME], limit=self.space.rung_limit(work.rung),
                  tasks=self.space.rung_tasks(work.rung), kind=work.kind, label=trial.label, recipe=trial.recipe,
                  model_path=trial.attrs.get(Attr.MODEL_PATH), trial_number=trial.number)
        self.on_event(Event("start", rung=work.rung, number=trial.number,
                            message=f"{job.rung_name} #{trial.number} {work.kind} {trial.label}",
                            data={"reason": work.reason}))
        return job

    def _evaluate(self, work: WorkItem, job: Job) -> tuple[Evaluation | None, str | None, float]:
        """(the runner's result or None, why the trial failed or None, seconds)."""
        t0 = time.perf_counter()
        try:
            result = self.runner.evaluate(job)
            failure = result.failed
        except KeyboardInterrupt:
            self._interrupted(work, job.trial_number)
            raise
        except Exception as err:  # noqa: BLE001 - OOM, NaN, bad recipe: the trial fails, the search goes on
            result = None
            failure = f"{type(err).__name__}: {err}"
            if not isinstance(err, AutomergeError):
                failure += " | " + " / ".join(traceback.format_exc().strip().splitlines()[-3:])
            free = getattr(self.runner, "free", None)
            if free:
                free()
        return result, failure, time.perf_counter() - t0

    def _record(self, work: WorkItem, job: Job, trial: NewTrial, result: Evaluation | None, failure: str | None,
                elapsed: float) -> None:
        """Store the scores, tell the trial, close the claim."""
        tid = self.study.storage.get_trial_id_from_study_id_trial_number(self.study.study_id(work.rung), trial.number)
        values: list[float] | None = None
        if result is not None:
            self._store_scores(tid, result, elapsed)
            if failure is None:
                values, failure = self._objective_values(job, result)
        head = f"{job.rung_name} #{trial.number} {work.kind} {trial.label}"
        try:
            if failure is not None:
                self._tell_failed(work, tid, trial.number, failure, f"{head}: FAIL {failure[:300]}", elapsed)
            else:
                self._tell_done(work, trial.number, values, result, head, elapsed)
        except (RuntimeError, ValueError) as err:
            # The trial was finished by someone else (taken over as stale): drop our result.
            self.stats.discarded += 1
            self.on_event(Event("fail", rung=work.rung, number=trial.number,
                                message=f"#{trial.number}: not recorded: {err}"))

    def _store_scores(self, tid: int, result: Evaluation, elapsed: float) -> None:
        storage = self.study.storage
        for task, score in result.scores.items():
            storage.set_trial_user_attr(tid, Attr.SCORE + task, _jsonable(score))
        for task, n in result.counts.items():
            storage.set_trial_user_attr(tid, Attr.N + task, int(n))
        if result.items:
            storage.set_trial_user_attr(tid, ITEMS_ATTR, {t: it.encode() for t, it in result.items.items()})
        storage.set_trial_user_attr(tid, Attr.EVAL_ITEMS, int(sum(result.counts.values())))
        storage.set_trial_user_attr(tid, Attr.EVAL_SECONDS, round(result.eval_seconds or elapsed, 4))
        storage.set_trial_user_attr(tid, Attr.APPLY_SECONDS, round(result.apply_seconds, 4))

    def _objective_values(self, job: Job, result: Evaluation) -> tuple[list[float] | None, str | None]:
        """(the objective values, None) or (None, why they cannot be had)."""
        missing = [t for t in job.tasks if t not in result.scores]
        if missing:
            return None, f"evaluation returned no score for {', '.join(missing)}"
        values = self.space.objective_values(result.scores, job.rung)
        if not all(math.isfinite(v) for v in values):
            return None, f"non-finite objective values {values} (NaN/Inf scores: the merge broke the model)"
        return values, None

    def _tell_failed(self, work: WorkItem, tid: int, number: int, failure: str, message: str,
                     elapsed: float) -> None:
        from optuna.trial import TrialState

        self.study.storage.set_trial_user_attr(tid, Attr.FAIL_REASON, failure[:2000])
        self.study.studies[work.rung].tell(number, state=TrialState.FAIL)
        self.study.claims.finish(self.study.name, work.rung, work.key, self.me, FAILED, reason=failure[:2000])
        self.stats.failed += 1
        self.on_event(Event("fail", rung=work.rung, number=number, message=message, data={"seconds": elapsed}))
        self.streak.failed(failure)

    def _tell_done(self, work: WorkItem, number: int, values: list[float], result: Evaluation | None, head: str,
                   elapsed: float) -> None:
        self.study.studies[work.rung].tell(number, values)
        self.study.claims.finish(self.study.name, work.rung, work.key, self.me, DONE)
        self.streak.succeeded()
        self.stats.finished += 1
        self.stats.eval_seconds += elapsed
        shown = _shown(self.space, work.rung, values, result.items if result is not None else {})
        self.on_event(Event("finish", rung=work.rung, number=number, message=f"{head}: {shown} ({elapsed:.1f}s)",
                            data={"values": values, "seconds": elapsed, "kind": work.kind, "reason": work.reason}))

    def _interrupted(self, work: WorkItem, number: int | None) -> None:
        """Ctrl-C mid-trial: fail the trial and release the claim so any worker re-runs it."""
        from optuna.trial import TrialState

        try:
            if number is not None:
                tid = self.study.storage.get_trial_id_from_study_id_trial_number(self.study.study_id(work.rung), number)
                self.study.storage.set_trial_user_attr(tid, Attr.FAIL_REASON, "interrupted; re-run on resume")
                self.study.studies[work.rung].tell(number, state=TrialState.FAIL)
            self.study.claims.release(self.study.name, work.rung, work.key, self.me, "interrupted")
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


def _jsonable(x: float) -> float | str:
    x = float(x)
    return x if math.isfinite(x) else str(x)
