"""The sampler registry (`automerge.search.samplers.SAMPLERS`): every registered sampler is built
from a space, runs a small search, and is the sampler Optuna asked for every sampled trial.

A new sampler is one `SamplerKind` entry plus its line in MODEL_BASED below."""

from __future__ import annotations

import pytest
from search_helpers import check_invariants, make_space
from search_fakes import FakeRunner

import automerge.search.work as work_mod
from automerge.errors import SpaceError
from automerge.search.samplers import SAMPLERS, SamplerKind, make_sampler
from automerge.search.study import SearchStudy
from automerge.search.worker import Worker

# Whether a sampler's model-based part proposes the later trials as a joint (relative) sample
# (None: NSGA-II shows its evolution in its generation attrs instead).
MODEL_BASED = {"tpe": True, "nsga2": None, "gp": True, "random": False, "cmaes": True}


def _space(name: str, **over):
    kind = SAMPLERS[name]
    over = dict(sampler=name, baselines=[], references=[], rungs={"items": [], "eta": 3}, **over)
    if kind.fixed_space:
        over["methods"] = ["task_arithmetic"]
    return make_space(**over)


def _spy(monkeypatch) -> tuple[list[object], list[int]]:
    """Record the sampler each sampled trial was asked of, and the trials it proposed jointly."""
    asked: list[object] = []
    relative: list[int] = []
    real = work_mod.make_sampler

    def spy(space, slot=0):
        s = real(space, slot=slot)
        asked.append(s)
        sample_relative = s.sample_relative

        def counted(study, trial, search_space):
            out = sample_relative(study, trial, search_space)
            if out:
                relative.append(trial.number)
            return out

        s.sample_relative = counted
        return s

    monkeypatch.setattr(work_mod, "make_sampler", spy)
    return asked, relative


def test_every_registered_sampler_has_its_expectations_here():
    assert set(MODEL_BASED) == set(SAMPLERS), "add the new sampler to MODEL_BASED (and check its behaviour)"
    for name, kind in SAMPLERS.items():
        assert isinstance(kind, SamplerKind) and kind.name == name and kind.help


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_registered_sampler_builds_and_runs(sqlite_url, name, monkeypatch):
    """Built from the space's name, the sampler Optuna asks for each trial is the registered
    type, and a short search completes with it."""
    kind = SAMPLERS[name]
    space = _space(name, budget={"trials": 3})
    built = make_sampler(space, slot=1)
    assert isinstance(getattr(built, "base", built), kind.optuna_type)
    asked, _ = _spy(monkeypatch)
    study = SearchStudy.open(f"reg-{name}", sqlite_url, space)
    stats = Worker(study, FakeRunner(), poll_interval=0.05).run()
    assert stats.failed == 0 and stats.finished == 3
    check_invariants(study, samples=3)
    assert len(asked) == 3 and all(isinstance(getattr(s, "base", s), kind.optuna_type) for s in asked), asked
    used = study.studies[0].sampler  # the sampler Optuna's study holds after the last ask
    assert isinstance(getattr(used, "base", used), kind.optuna_type)
    study.close()


def test_an_unknown_sampler_names_the_registered_ones():
    with pytest.raises(SpaceError, match=r"sampler: unknown sampler 'bayes'; use one of tpe, nsga2"):
        make_space(sampler="bayes")


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_model_based_samplers_sample_jointly_after_start_up(sqlite_url, name, monkeypatch):
    """Past the start-up trials the model-based part (relative sampling) proposes the trials: a
    sampler swapped for another, or falling back to independent sampling, fails here."""
    asked, relative = _spy(monkeypatch)
    # past the samplers' 10 start-up trials, so the model-based part runs too
    study = SearchStudy.open(f"smp-{name}", sqlite_url, _space(name, budget={"trials": 14}))
    stats = Worker(study, FakeRunner(), poll_interval=0.05).run()
    assert stats.failed == 0 and stats.finished == 14
    check_invariants(study, samples=14)
    assert [type(getattr(s, "base", s)) for s in asked] == [SAMPLERS[name].optuna_type] * 14
    model_based = MODEL_BASED[name]
    if model_based:
        assert relative and min(relative) >= 8 and len(relative) >= 3, relative  # after start-up, not before
    elif model_based is False:
        assert not relative
    attrs = [t.system_attrs for t in study.trials(0)]
    if name == "nsga2":  # Optuna records each trial's generation: 0 for the first population, then >= 1
        gens = [a["NSGAIISampler:generation"] for a in sorted(attrs, key=lambda a: a["NSGAIISampler:generation"])]
        assert gens[0] == 0 and gens[-1] >= 1, gens
    if name == "cmaes":
        assert any(k.startswith("cma:") for a in attrs for k in a)
    study.close()
