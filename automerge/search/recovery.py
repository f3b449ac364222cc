"""Recovery from dead workers and from a failure that repeats, for the worker loop.

* `Recovery.sweep`: a claim whose worker died (its process is gone, or its heartbeat is older
  than `stale_after`) is taken over (compare-and-swap on the claim row), its unfinished trial is
  marked FAIL with the reason, and its work item is returned to re-run with the same parameters
  — at most `max_attempts` times: a recipe that kills every worker is given up.
* Orphans: a RUNNING trial no claim names (its worker died between creating and naming it) is
  failed once it is older than `stale_after`, or at once when its dead worker's claim is taken.
* `FailureStreak`: the same error on `limit` trials in a row stops the search instead of
  failing every trial (a missing file, a broken install).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Callable, Mapping

from automerge.errors import AutomergeError
from automerge.search.study import DONE, FAILED, RUNNING, ClaimRow, SearchStudy, Snapshot, worker_alive
from automerge.search.work import WorkItem, from_claim
from automerge.study_format import Attr


class Recovery:
    """Stale-claim sweeps and orphan trials of one worker (`me`) on `study`. `on_event(kind,
    rung, number, message)` reports a takeover or a give-up."""

    def __init__(self, study: SearchStudy, me: str, *, stale_after: float, max_attempts: int,
                 on_event: Callable[[str, int | None, int | None, str], None]):
        self.study = study
        self.me = me
        self.stale_after = stale_after
        self.max_attempts = max_attempts
        self.on_event = on_event

    def stale(self, c: ClaimRow, now: float) -> str | None:
        """Why another worker's running claim is dead (None: it is alive)."""
        if c.worker == self.me:
            return None
        alive = worker_alive(c.worker)
        if alive is False:
            return f"worker {c.worker} died"
        if now - c.heartbeat > self.stale_after:
            return f"worker {c.worker} stopped heartbeating ({now - c.heartbeat:.0f}s ago)"
        return None

    def sweep(self, snap: Snapshot, fixed: Mapping[str, WorkItem]) -> WorkItem | None:
        """Take over one claim whose worker died; fail its trial; return its item to re-run."""
        now = time.time()
        self.fail_orphans(snap)
        for c in snap.running():
            why = self.stale(c, now)
            if why is None or not self.study.claims.take_over(c, self.me):
                continue
            work = self._recover(c, why, fixed)
            if work is not None:
                return work
        return None

    def _recover(self, c: ClaimRow, why: str, fixed: Mapping[str, WorkItem]) -> WorkItem | None:
        """A claim just taken over: its work item to re-run, or None (already done, given up)."""
        from optuna.trial import TrialState

        claims, name = self.study.claims, self.study.name
        if c.trial_number is None:
            self.fail_unnamed(c, why)
        trials = [t for t in self.study.trials(c.rung) if t.user_attrs.get(Attr.KEY) == c.item]
        if any(t.state == TrialState.COMPLETE for t in trials):
            # It finished but died before closing its claim: nothing to re-run.
            claims.finish(name, c.rung, c.item, self.me, DONE, reason=why)
            return None
        previous = None
        for t in trials:
            if t.state in (TrialState.RUNNING, TrialState.WAITING):
                self.fail_trial(c.rung, t, f"stale: {why}; re-run as a new trial")
            previous = t if previous is None or t.number > previous.number else previous
        self.on_event("takeover", c.rung, previous.number if previous else None, f"{c.item}: {why}")
        if c.attempts + 1 > self.max_attempts:
            claims.finish(name, c.rung, c.item, self.me, FAILED,
                          reason=f"gave up after {c.attempts} attempts; last: {why}")
            self.on_event("giveup", c.rung, None, f"{c.item}: gave up after {c.attempts} attempts")
            return None
        try:
            return from_claim(c, previous, fixed, self._parent_kind)
        except ValueError as err:
            claims.finish(name, c.rung, c.item, self.me, FAILED, reason=str(err))
            self.on_event("giveup", c.rung, None, str(err))
            return None

    def _parent_kind(self, rung: int, parent: int) -> str:
        from automerge.search.scheduler import SEARCH

        for t in self.study.trials(rung - 1):
            if t.number == parent:
                return t.user_attrs.get(Attr.KIND, SEARCH)
        return SEARCH

    def fail_unnamed(self, dead: ClaimRow, why: str) -> None:
        """The dead worker may have created its trial (ask) but died before naming it (key): fail
        the unnamed RUNNING trials it could have made — started after its claim — unless another
        live worker is itself between claiming and naming at that rung (then the age rule in
        `fail_orphans` decides later)."""
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
                self.fail_trial(dead.rung, t, f"orphan: {why} after creating this trial, before naming it")

    def fail_orphans(self, snap: Snapshot) -> None:
        """RUNNING trials that no claim knows (a worker died between creating and naming them)."""
        from optuna.trial import TrialState

        horizon = datetime.now().timestamp() - self.stale_after
        for r, trials in enumerate(snap.trials):
            for t in trials:
                if t.state != TrialState.RUNNING or Attr.KEY in t.user_attrs:
                    continue
                if t.datetime_start is not None and t.datetime_start.timestamp() < horizon:
                    self.fail_trial(r, t, "orphan: running trial with no claim (its worker died while creating it)")

    def fail_trial(self, rung: int, t: Any, reason: str) -> None:
        """Tell trial `t` FAIL with `reason` (nothing when it is finished already)."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        storage = self.study.storage
        tid = storage.get_trial_id_from_study_id_trial_number(self.study.study_id(rung), t.number)
        try:
            storage.set_trial_user_attr(tid, Attr.FAIL_REASON, reason)
            storage.set_trial_state_values(tid, TrialState.FAIL)
        except (UpdateFinishedTrialError, RuntimeError):
            pass


class FailureStreak:
    """Stops a search whose last `limit` trials failed with the same error (0: never)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.errors: list[str] = []

    def failed(self, reason: str) -> None:
        self.errors.append(reason.split(" | ")[0][:200])  # the error, not its traceback

    def succeeded(self) -> None:
        self.errors.clear()

    def check(self) -> None:
        errors = self.errors
        if self.limit and len(errors) >= self.limit and len(set(errors[-self.limit:])) == 1:
            raise AutomergeError(
                f"{len(errors)} trials in a row failed with the same error — stopping instead of failing "
                f"every trial: {errors[-1]}. Fix the cause and run the same command again to continue "
                "(the failed trials stay recorded).")
