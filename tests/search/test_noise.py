"""Error bars (automerge.noise): CIs cover the truth at their stated rate, "dominates" is
refused inside the noise, item-level scores survive storage, resume and PostgreSQL, and the
scheduler's noise-aware rank does not order trials by noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
from search_fakes import FakeRunner, fake_items
from search_helpers import check_invariants, make_space, unique_name
from optuna.trial import TrialState

from automerge.noise import (Difference, ItemScores, expanded_alpha, items_from_attrs, noisy_domination_matrix,
                                    objective_noise, paired_difference, t_quantile, verdict)
from automerge.search.scheduler import Result, Scheduler
from automerge.search.study import SearchStudy
from automerge.search.worker import Worker


def _ll_pair(rng, n, mu_a, mu_b):
    """Two trials' log-likelihood items on the same n items (shared item difficulty, varying
    lengths): the true difference of their pooled nats/token is mu_a − mu_b exactly."""
    den = rng.integers(5, 60, n).astype(float)
    h = rng.normal(0, 0.5, n)
    a = ItemScores(metric="token_prob", num=den * (mu_a + h + rng.normal(0, 0.3, n)), den=den)
    b = ItemScores(metric="token_prob", num=den * (mu_b + h + rng.normal(0, 0.3, n)), den=den)
    return a, b


@pytest.mark.parametrize("n", [8, 40])
def test_paired_ci_covers_the_true_difference_at_the_stated_rate(n):
    rng = np.random.default_rng(1234 + n)
    reps, hit = 500, 0
    for s in range(reps):
        a, b = _ll_pair(rng, n, -2.0, -2.05)
        d = paired_difference({"t": a}, {"t": b}, {"t": 1.0}, scale="units", resamples=300, seed=s)
        hit += d.low <= 0.05 <= d.high
    # 95 % nominal; 500 replications have a sampling SE of 1 point
    assert 0.915 <= hit / reps <= 0.98, hit / reps


def test_paired_ci_covers_a_two_task_objective_on_the_score_scale():
    """token_prob objective over two tasks (what the stored objective is): truth by simulation."""
    rng = np.random.default_rng(7)
    n, reps = 30, 300
    mus = {"x": (-2.0, -2.04), "y": (-3.0, -2.98)}
    truth = 0.5 * (math.exp(-2.0) - math.exp(-2.04)) + 0.5 * (math.exp(-3.0) - math.exp(-2.98))
    hit = 0
    for s in range(reps):
        pa, pb = {}, {}
        for t, (ma, mb) in mus.items():
            pa[t], pb[t] = _ll_pair(rng, n, ma, mb)
        d = paired_difference(pa, pb, {"x": 1.0, "y": 1.0}, resamples=300, seed=s)
        # the pooled ratio's mean is the truth up to O(1/n); allow it in the interval check
        hit += d.low - 2e-4 <= truth <= d.high + 2e-4
    assert 0.915 <= hit / reps <= 0.985, hit / reps


def test_paired_ci_is_much_tighter_than_independent_error_bars_and_seeded():
    rng = np.random.default_rng(3)
    a, b = _ll_pair(rng, 40, -2.0, -2.05)
    d = paired_difference({"t": a}, {"t": b}, {"t": 1.0}, scale="units")
    unpaired = math.hypot(a.standard_error("units"), b.standard_error("units"))
    assert d.se < 0.6 * unpaired
    assert d == paired_difference({"t": a}, {"t": b}, {"t": 1.0}, scale="units")  # deterministic
    # the delta-method SE of one trial agrees with the bootstrap's spread of the same statistic
    boot = paired_difference({"t": a}, {"t": ItemScores(metric="token_prob", num=0 * a.num, den=a.den)},
                             {"t": 1.0}, scale="units", resamples=4000)
    assert boot.se == pytest.approx(a.standard_error("units"), rel=0.1)


def test_dominates_is_refused_inside_the_ci():
    rng = np.random.default_rng(5)
    base = rng.normal(-2.0, 0.5, 24)
    den = np.full(24, 20.0)
    noise = rng.normal(0, 0.2, 24)
    noise -= noise.mean()  # the point difference is exactly the shift

    def trial(shift, jitter=1.0):
        return {"t": ItemScores(metric="token_prob", num=den * (base + shift + jitter * noise), den=den)}

    b = {"t": ItemScores(metric="token_prob", num=den * base, den=den)}
    small = paired_difference(trial(0.01), b, {"t": 1.0}, scale="units")
    big = paired_difference(trial(0.3), b, {"t": 1.0}, scale="units")
    worse = paired_difference(trial(-0.3), b, {"t": 1.0}, scale="units")
    assert small.estimate > 0 and small.low < 0 < small.high  # better by the point values, inside the noise
    assert verdict([small, small], ["maximize", "maximize"]) == "indistinguishable"
    assert verdict([big, small], ["maximize", "maximize"]) == "dominates"
    assert verdict([worse, small], ["maximize", "maximize"]) == "dominated"
    assert verdict([big, worse], ["maximize", "maximize"]) == "trade-off"
    assert verdict([big, worse], ["maximize", "minimize"]) == "dominates"  # a lower value is better there
    # the rule itself, on hand-made intervals
    inside = Difference(estimate=0.5, low=-0.01, high=1.0, se=0.3, n=8)
    clear = Difference(estimate=0.5, low=0.1, high=1.0, se=0.2, n=8)
    assert verdict([inside, inside], ["maximize"] * 2) == "indistinguishable"
    assert verdict([clear, inside], ["maximize"] * 2) == "dominates"


def test_one_item_gives_no_interval_and_t_quantiles_are_right():
    a = ItemScores(metric="acc", num=[1.0], den=[1.0])
    d = paired_difference({"t": a}, {"t": ItemScores(metric="acc", num=[0.0], den=[1.0])}, {"t": 1.0})
    assert d.low == -math.inf and d.high == math.inf
    assert verdict([d], ["maximize"]) == "indistinguishable"
    for df, exact in [(3, 3.1824), (5, 2.5706), (7, 2.3646), (39, 2.0227), (1000, 1.9623)]:
        assert t_quantile(0.975, df) == pytest.approx(exact, abs=5e-3 if df < 5 else 1e-3)
    assert expanded_alpha(0.95, 8) < expanded_alpha(0.95, 40) < 0.05


def test_item_scores_encode_compactly_and_reproduce_the_score():
    rng = np.random.default_rng(0)
    lls, toks = -rng.random(40) * 50, rng.integers(1, 80, 40).astype(float)
    it = ItemScores(metric="token_prob", num=lls, den=toks)
    enc = it.encode()
    assert len(str(enc)) < 600  # 40 items: two base64 float32 arrays
    back = ItemScores.decode(enc)
    assert back.score() == pytest.approx(math.exp(lls.sum() / toks.sum()), rel=1e-6)
    mc = ItemScores(metric="acc", num=[1, 0, 1, 1], den=[1, 1, 1, 1])
    assert "den" not in mc.encode() and ItemScores.decode(mc.encode()).score() == 0.75
    assert items_from_attrs({"item_scores": {"x": enc, "bad": {"metric": "acc"}}, "score:x": 0.1}).keys() == {"x"}


def test_noise_aware_rank_does_not_order_trials_by_noise():
    """A and C are the front. B is below C only within B's noise; D is below A beyond it. The
    plain rank puts D before B (D's larger hypervolume share); the noise-aware rank puts B, which
    may well be on the front, before D, which is not."""
    vals = {"A": (1.0, 0.5), "C": (0.5, 1.0), "B": (0.45, 0.9), "D": (0.95, 0.45)}
    quiet = np.zeros(4)
    noisy = np.array([0.2, -0.2, 0.2, -0.2])
    vec = {"A": quiet, "C": quiet, "D": quiet, "B": noisy}
    names = list(vals)
    results = [Result(number=i, values=vals[k], noise=(vec[k], vec[k])) for i, k in enumerate(names)]
    plain = Scheduler(num_rungs=2, eta=2, directions=["maximize"] * 2)
    aware = Scheduler(num_rungs=2, eta=2, directions=["maximize"] * 2, noise_z=1.0)
    order = lambda s: [names[i] for i in s.order(results)]  # noqa: E731
    assert order(plain) == ["A", "C", "D", "B"] or order(plain)[2:] == ["D", "B"]
    assert order(aware)[2:] == ["B", "D"]
    # no item data: the same rank as the plain rule
    bare = [Result(number=r.number, values=r.values) for r in results]
    assert aware.order(bare) == plain.order(bare)
    # ε-dominance is a sub-relation of Pareto dominance
    Y = -np.array([vals[k] for k in names])
    D = noisy_domination_matrix(Y, [(vec[k], vec[k]) for k in names], 1.0)
    P = noisy_domination_matrix(Y, [(vec[k], vec[k]) for k in names], 0.0)
    assert not (D & ~P).any() and P[names.index("C"), names.index("B")] and not D[names.index("C"), names.index("B")]


def test_objective_noise_gives_the_paired_standard_error():
    rng = np.random.default_rng(11)
    a, b = _ll_pair(rng, 40, -2.0, -2.05)
    u, v = objective_noise({"t": a}, {"t": 1.0}), objective_noise({"t": b}, {"t": 1.0})
    d = paired_difference({"t": a}, {"t": b}, {"t": 1.0}, resamples=4000)
    assert float(np.linalg.norm(u - v)) == pytest.approx(d.se, rel=0.1)
    assert objective_noise({"t": a.head(1)}, {"t": 1.0}) is None


def _check_items(study, *, complete_rungs: int) -> int:
    """Every complete trial holds per-item scores per task that reproduce its stored score."""
    seen = 0
    for r in range(complete_rungs):
        for t in study.trials(r, [TrialState.COMPLETE]):
            items = items_from_attrs(t.user_attrs)
            assert set(items) == {"code_body_ll", "prose_ll"}, t.user_attrs.keys()
            n = t.user_attrs["items"] or 100
            for task, it in items.items():
                assert it.n == n
                assert it.score() == pytest.approx(t.user_attrs[f"score:{task}"], abs=1e-6)
                ref = fake_items(task, t.user_attrs[f"score:{task}"], n)
                assert np.allclose(it.num, ref.num, atol=1e-6)  # the same items, in order
            seen += 1
    return seen


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_item_scores_survive_resume_and_work_on_postgresql(tmp_path, backend, request):
    if backend == "sqlite":
        url, name = f"sqlite:///{tmp_path / 'study.db'}", "items"
    else:
        url, names = request.getfixturevalue("pg_url")
        name = unique_name("items")
        names.append(name)
    space = make_space(budget={"trials": 6})
    study = SearchStudy.open(name, url, space)
    Worker(study, FakeRunner(items=True), poll_interval=0.05, max_items=6).run()
    first = _check_items(study, complete_rungs=study.num_rungs)
    assert first == 6
    study.close()
    again = SearchStudy.open(name, url, None)  # a resumed worker reads them back from storage
    results = again.snapshot().results(0)
    assert results and all(r.noise is not None and len(r.noise) == 2 for r in results)
    Worker(again, FakeRunner(items=True), poll_interval=0.05).run()
    check_invariants(again, samples=6)
    assert _check_items(again, complete_rungs=again.num_rungs) > first
    assert again.trials(again.num_rungs - 1, [TrialState.COMPLETE])
    again.close()


def test_objective_loss_is_nats_per_token_for_log_likelihood_tasks_only():
    from automerge.noise import objective_loss

    ll = ItemScores(metric="token_prob", num=[-20.0, -10.0], den=[10.0, 5.0])  # 2 nats/token
    mc = ItemScores(metric="acc", num=[1.0, 0.0], den=[1.0, 1.0])
    assert objective_loss({"a": ll}, {"a": 1.0}) == pytest.approx(2.0)
    assert objective_loss({"a": ll, "b": mc}, {"a": 1.0, "b": 1.0}) is None
    assert objective_loss({"a": ll}, {"a": 1.0, "c": 1.0}) is None
