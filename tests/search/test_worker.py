"""The worker loop with a fake runner on SQLite: rungs fill, failures are recorded and the
search goes on, a stopped search resumes, a dead worker's trial is re-run exactly once."""

from __future__ import annotations

import socket
import time

import pytest
from search_helpers import check_invariants, make_space
from search_fakes import FakeRunner
from optuna.trial import TrialState

from automerge.errors import SpaceError
from automerge.recipe import Recipe
from automerge.search.study import DONE, RUNNING, SearchStudy
from automerge.search.worker import Worker


def run(study, runner=None, **kw):
    kw.setdefault("poll_interval", 0.05)
    return Worker(study, runner or FakeRunner(), **kw).run()


def test_single_worker_fills_every_rung_and_stores_the_contract(sqlite_url):
    space = make_space()
    study = SearchStudy.open("s1", sqlite_url, space)
    stats = run(study)
    counts = check_invariants(study, samples=15)
    assert stats.failed == 0
    assert [counts[r]["search"] > 0 for r in range(3)] == [True, True, True]  # every rung, incl. full
    assert counts[0]["search"] == 15 and counts[1]["search"] >= 5
    # yardsticks at every rung: 2 specialists alone, uniform linear, TA λ=1, TIES 0.5, reference
    for r in range(3):
        kinds = [t.user_attrs["kind"] for t in study.trials(r, [TrialState.COMPLETE])]
        assert kinds.count("baseline") == 5 and kinds.count("reference") == 1
    names = [s.study_name for s in __import__("optuna").get_all_study_summaries(study.storage)]
    assert set(names) == {"s1", "s1:r1", "s1:full"}
    for r, sname in enumerate(study.rung_names):
        assert study.studies[r].metric_names == ["code", "nl"]
    attrs = study.studies[0].user_attrs
    assert attrs["space_fingerprint"] == space.fingerprint() and "objectives" in attrs["space"]
    assert [x["name"] for x in attrs["rungs"]] == ["r0", "r1", "full"]
    full = study.trials(2, [TrialState.COMPLETE])
    for t in full:
        ua = t.user_attrs
        assert ua["rung"] == 2 and ua["rung_name"] == "full" and ua["items"] is None
        assert {"score:code_body_ll", "score:prose_ll", "eval_items", "label", "key", "parent"} <= set(ua)
        parent = [p for p in study.trials(1) if p.number == ua["parent"]][0]
        assert parent.user_attrs["origin"] == ua["origin"]
        if ua["kind"] != "reference":
            assert isinstance(Recipe.from_yaml(ua["recipe"]), Recipe)
        if ua["kind"] == "search":
            assert t.params == parent.params and t.params  # promoted with the same params
    # the full rung's values are the objectives over full-rung scores
    for t in full:
        assert t.values[0] == pytest.approx(t.user_attrs["score:code_body_ll"])


def test_failures_are_recorded_with_reason_and_the_search_goes_on(sqlite_url):
    space = make_space(budget={"trials": 9})
    study = SearchStudy.open("s2", sqlite_url, space)
    runner = FakeRunner(fail_labels=("uniform linear",), nan_methods=("ties",))
    stats = run(study, runner)
    failed = study.trials(0, [TrialState.FAIL])
    reasons = {t.user_attrs["label"]: t.user_attrs["fail_reason"] for t in failed}
    assert "out of memory" in reasons["uniform linear"]
    assert "non-finite" in reasons["ties density 0.5"]
    assert stats.failed == len(failed) >= 2
    check_invariants(study, samples=9)
    assert study.trials(2, [TrialState.COMPLETE])  # the search still reached full evaluation


def test_stopped_search_resumes_without_duplicates(sqlite_url):
    space = make_space(budget={"trials": 12})
    study = SearchStudy.open("s3", sqlite_url, space)
    run(study, max_items=7)
    assert len(study.trials(0, [TrialState.COMPLETE])) < 12
    study.close()
    again = SearchStudy.open("s3", sqlite_url, None)  # continue from storage alone
    run(again)
    check_invariants(again, samples=12)
    # continuing a finished study does nothing and changes nothing
    before = [len(again.trials(r)) for r in range(3)]
    stats = run(SearchStudy.open("s3", sqlite_url, None))
    assert stats.finished == 0 and [len(again.trials(r)) for r in range(3)] == before


def test_dead_workers_trial_is_failed_and_rerun(sqlite_url):
    space = make_space(budget={"trials": 4}, baselines=[], references=[])
    study = SearchStudy.open("s4", sqlite_url, space)
    # A worker that died mid-trial: its claim (a dead pid on this host) and its RUNNING trial.
    dead = f"{socket.gethostname()}:999999:dead"
    assert study.claims.claim("s4", 0, "s0", dead)
    trial = study.studies[0].ask()
    for k, v in {"key": "s0", "kind": "search", "rung": 0, "label": "trial 0"}.items():
        trial.set_user_attr(k, v)
    recipe = space.suggest(trial)
    trial.set_user_attr("recipe", recipe.to_yaml())
    study.claims.attach("s4", 0, "s0", dead, trial.number)
    # a worker on another machine that stopped heartbeating long ago
    remote = "elsewhere:123:gone"
    assert study.claims.claim("s4", 0, "s1", remote)
    from automerge.search.study import claims_table

    with study.claims.engine.begin() as conn:
        conn.execute(claims_table.update().where(claims_table.c.item == "s1").values(heartbeat=time.time() - 60))
    events = []
    run(study, stale_after=30, on_event=events.append)
    takeovers = [e for e in events if e.kind == "takeover"]
    assert len(takeovers) == 2
    failed = study.trials(0, [TrialState.FAIL])
    assert [t.number for t in failed] == [trial.number]
    assert "died" in failed[0].user_attrs["fail_reason"]
    rerun = [t for t in study.trials(0, [TrialState.COMPLETE]) if t.user_attrs.get("retry_of") == trial.number]
    assert len(rerun) == 1 and rerun[0].params == trial.params  # same params re-run
    check_invariants(study, samples=4)
    rows = {c.item: c for c in study.claims.rows("s4")}
    assert rows["s0"].attempts == 2 and rows["s1"].attempts == 2 and rows["s0"].state == DONE


def test_live_claims_are_left_alone(sqlite_url):
    space = make_space(budget={"trials": 2}, baselines=[], references=[])
    study = SearchStudy.open("s5", sqlite_url, space)
    alive = f"{socket.gethostname()}:1:alive"  # pid 1 is alive; fresh heartbeat
    assert study.claims.claim("s5", 0, "s0", alive)
    w = Worker(study, FakeRunner(), poll_interval=0.05)
    work = w.next_work()
    assert work.key == "s1"  # s0 belongs to a live worker
    assert w.recovery.sweep(study.snapshot(), w.fixed) is None
    rows = {c.item: c for c in study.claims.rows("s5")}
    assert rows["s0"].state == RUNNING and rows["s0"].worker == alive


def test_a_different_space_cannot_join_a_study(sqlite_url):
    SearchStudy.open("s6", sqlite_url, make_space()).close()
    with pytest.raises(SpaceError, match="different search space"):
        SearchStudy.open("s6", sqlite_url, make_space(methods=["ties"]))
    # budget, device and storage may differ between workers
    SearchStudy.open("s6", sqlite_url, make_space(budget={"trials": 99}, device="cuda")).close()
    with pytest.raises(SpaceError, match="no study"):
        SearchStudy.open("nope", sqlite_url, None)


def test_trial_created_but_not_named_by_a_dead_worker_is_failed(sqlite_url):
    space = make_space(budget={"trials": 3}, baselines=[], references=[])
    study = SearchStudy.open("s7", sqlite_url, space)
    dead = f"{socket.gethostname()}:999998:dead"
    assert study.claims.claim("s7", 0, "s0", dead)
    unnamed = study.studies[0].ask()  # killed right after ask(), before any attribute was set
    run(study)
    t = [x for x in study.trials(0) if x.number == unnamed.number][0]
    assert t.state == TrialState.FAIL and t.user_attrs["fail_reason"].startswith("orphan")
    check_invariants(study, samples=3)


def test_the_same_error_every_trial_stops_the_search(sqlite_url):
    from automerge.errors import AutomergeError

    class Broken(FakeRunner):
        def evaluate(self, job):
            raise FileNotFoundError("eval data missing")

    study = SearchStudy.open("s8", sqlite_url, make_space(budget={"trials": 30}))
    with pytest.raises(AutomergeError, match="in a row failed with the same error.*eval data missing"):
        Worker(study, Broken(), poll_interval=0.05, max_consecutive_failures=4).run()
    assert len(study.trials(0, [TrialState.FAIL])) == 4


def test_a_runner_that_cannot_load_models_aborts_and_releases_its_claim(sqlite_url):
    class NoModels(FakeRunner):
        def setup(self):
            raise RuntimeError("CUDA not available")

    study = SearchStudy.open("s9", sqlite_url, make_space())
    with pytest.raises(RuntimeError, match="CUDA"):
        Worker(study, NoModels(), poll_interval=0.05).run()
    assert not study.trials(0)  # no trial was created
    rows = study.claims.rows("s9")
    assert len(rows) == 1 and rows[0].heartbeat == 0.0  # released: anyone re-runs it at once


def test_a_sampler_error_fails_the_trial_ask_created(sqlite_url, monkeypatch):
    import optuna

    import automerge.search.work as work_mod

    class Bad(optuna.samplers.RandomSampler):
        def infer_relative_search_space(self, study, trial):
            raise ValueError("sampler exploded")

    monkeypatch.setattr(work_mod, "make_sampler", lambda space, slot=0: Bad())
    study = SearchStudy.open("s10", sqlite_url, make_space(budget={"trials": 3}, baselines=[], references=[]))
    events = []
    Worker(study, FakeRunner(), poll_interval=0.05, on_event=events.append).run()
    trials = study.trials(0)
    assert len(trials) == 3 and all(t.state == TrialState.FAIL for t in trials)
    assert all("sampler exploded" in t.user_attrs["fail_reason"] for t in trials)
    assert sum(e.kind == "fail" for e in events) == 3
