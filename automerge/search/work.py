"""The units of work a worker claims: one small class per kind, each building its own trial.

A work item's `key` is its claim (column ``item`` of the claims table, trial attr ``key``):

=================  ==========  =====================================================
kind               key         the trial it builds
=================  ==========  =====================================================
`Sample`           ``s<i>``    the i-th sampled trial (the sampler asked at slot i)
`Promotion`        ``p<n>``    trial n of the rung below, re-evaluated one rung up
`BaselineWork`     ``b:<l>``   a yardstick merge of the space (label l)
`ReferenceWork`    ``ref:<m>`` an existing model m, evaluated as it is
`WarmStartWork`    ``w:<h>``   an earlier round's recipe (hash h), as a search trial
=================  ==========  =====================================================

These keys are the stored format: a study written by an earlier version resumes with them
(`from_claim` reads a claim back into its work item).
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Mapping

from automerge.search.samplers import make_sampler
from automerge.search.scheduler import BASELINE, REFERENCE, SEARCH, promotion_key
from automerge.study_format import Attr, rung_name

if TYPE_CHECKING:
    from automerge.search.study import ClaimRow, SearchStudy

SAMPLE_PREFIX = "s"
_SAMPLE_KEY = re.compile(r"^s(\d+)$")
_PROMOTION_KEY = re.compile(r"^p(\d+)$")


def sample_slot(key: str) -> int | None:
    """The slot i of a sample key ``s<i>``; None for another kind's key."""
    m = _SAMPLE_KEY.match(key)
    return int(m.group(1)) if m else None


def promotion_parent(key: str) -> int | None:
    """The parent trial n of a promotion key ``p<n>``; None for another kind's key."""
    m = _PROMOTION_KEY.match(key)
    return int(m.group(1)) if m else None


@dataclass
class NewTrial:
    """A trial a work item created: its number in the rung's study, its recipe (None for a
    reference model) and the user attrs it was created with."""

    number: int
    recipe: Any | None
    attrs: dict[str, Any]

    @property
    def label(self) -> str:
        return self.attrs.get(Attr.LABEL, "")


class TrialMaker:
    """What a work item needs to build its trial: the study, this worker's id, the common trial
    attrs, and creation of a trial from fixed params."""

    def __init__(self, study: "SearchStudy", worker: str, *, fail_trial: Callable[[int, Any, str], None],
                 fail_unnamed: Callable[["ClaimRow", str], None]):
        self.study = study
        self.space = study.space
        self.worker = worker
        self.fail_trial = fail_trial  # (rung, trial, reason): the trial is told FAIL
        self.fail_unnamed = fail_unnamed  # (claim, why): fail trials created for it but never named

    def attrs(self, work: "WorkItem") -> dict[str, Any]:
        attrs: dict[str, Any] = {
            Attr.RUNG: work.rung, Attr.RUNG_NAME: rung_name(work.rung, self.study.num_rungs),
            Attr.ITEMS: self.space.rung_limit(work.rung), Attr.KIND: work.kind, Attr.KEY: work.key,
            Attr.WORKER: self.worker, Attr.PARENT: work.parent,
            Attr.PROMOTION: work.reason if work.parent is not None else None,
        }
        if work.retry_of is not None:
            attrs[Attr.RETRY_OF] = work.retry_of
        return attrs

    def create(self, rung: int, attrs: dict[str, Any], recipe: Any | None, params: Mapping[str, Any] | None = None,
               dists: Mapping[str, Any] | None = None) -> NewTrial:
        """A RUNNING trial with these params and attrs, in one storage call (a rung-0 trial is
        its own origin)."""
        from optuna.trial import FrozenTrial, TrialState

        template = FrozenTrial(
            number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(), datetime_complete=None,
            params=dict(params or {}), distributions=dict(dists or {}), user_attrs=dict(attrs), system_attrs={},
            intermediate_values={}, trial_id=-1,
        )
        storage = self.study.storage
        tid = storage.create_new_trial(self.study.study_id(rung), template_trial=template)
        number = storage.get_trial_number_from_id(tid)
        if rung == 0:
            storage.set_trial_user_attr(tid, Attr.ORIGIN, number)
        return NewTrial(number, recipe, attrs)

    def copy_of(self, work: "WorkItem", src: Any, extra: Mapping[str, Any] = {}) -> NewTrial:  # noqa: B006
        """A new trial at `work`'s rung with the params, label and recipe of trial `src`, plus
        the `extra` attrs."""
        from automerge.recipe import Recipe

        attrs = self.attrs(work)
        attrs[Attr.LABEL] = src.user_attrs.get(Attr.LABEL, f"trial {src.number}")
        attrs.update(extra)
        recipe = None
        if Attr.RECIPE in src.user_attrs:
            attrs[Attr.RECIPE] = src.user_attrs[Attr.RECIPE]
            recipe = Recipe.from_yaml(src.user_attrs[Attr.RECIPE], source=f"recipe of trial {src.number}")
        return self.create(work.rung, attrs, recipe, src.params, src.distributions)


@dataclass
class WorkItem(ABC):
    """A claimed unit of work. `reason` says why it was taken (sample | top | front | yardstick |
    baseline | reference | warm start | retry); `retry_of` is the trial a re-run replaces."""

    reason: str
    retry_of: int | None = None

    rung: int = 0
    parent: int | None = None  # the promoted trial (promotions only)

    @property
    @abstractmethod
    def key(self) -> str: ...

    @property
    @abstractmethod
    def kind(self) -> str: ...

    @abstractmethod
    def build(self, maker: TrialMaker) -> NewTrial:
        """Create this item's trial in the rung's study (raises when it cannot: the claim fails)."""

    def again(self, previous: Any | None) -> "WorkItem":
        """The same item, re-run after its worker died (`previous`: its last trial, if any)."""
        return replace(self, reason="retry", retry_of=previous.number if previous is not None else None)


@dataclass
class Sample(WorkItem):
    """The `slot`-th sampled trial: the sampler proposes its params; on a re-run, the params of
    the trial it replaces (`replay`)."""

    slot: int = 0
    replay: Any | None = None  # FrozenTrial whose params and recipe to re-run

    @property
    def key(self) -> str:
        return f"{SAMPLE_PREFIX}{self.slot}"

    @property
    def kind(self) -> str:
        return SEARCH

    def again(self, previous: Any | None) -> "WorkItem":
        replay = previous if previous is not None and Attr.RECIPE in previous.user_attrs else None
        return replace(super().again(previous), replay=replay)

    def build(self, maker: TrialMaker) -> NewTrial:
        if self.replay is not None:
            return maker.copy_of(self, self.replay)
        study = maker.study.studies[0]
        study.sampler = make_sampler(maker.space, slot=self.slot)
        before = time.time()
        try:
            trial = study.ask()
        except Exception as err:
            # ask() creates the trial before the sampler runs: fail it rather than leave it RUNNING
            from automerge.search.study import RUNNING, ClaimRow

            maker.fail_unnamed(ClaimRow(maker.study.name, 0, self.key, None, maker.worker, before, 1, RUNNING,
                                        before - 1.0), f"the sampler raised {type(err).__name__}: {err}")
            raise
        attrs = maker.attrs(self)
        try:
            trial.set_user_attr(Attr.KEY, self.key)  # first: a trial without key is an orphan
            for k, v in attrs.items():
                trial.set_user_attr(k, v)
            attrs[Attr.LABEL] = f"trial {trial.number}"
            trial.set_user_attr(Attr.LABEL, attrs[Attr.LABEL])
            trial.set_user_attr(Attr.ORIGIN, trial.number)
            recipe = maker.space.suggest(trial)
            trial.set_user_attr(Attr.RECIPE, recipe.to_yaml())
        except Exception as err:
            maker.fail_trial(0, trial, f"could not build the recipe: {type(err).__name__}: {err}")
            raise
        return NewTrial(trial.number, recipe, attrs)


@dataclass
class Promotion(WorkItem):
    """Trial `parent` of the rung below, evaluated at `rung` with the same params and recipe."""

    parent_kind: str = SEARCH  # the promoted trial's kind (a baseline stays a baseline)

    @property
    def key(self) -> str:
        return promotion_key(self.parent)

    @property
    def kind(self) -> str:
        return self.parent_kind

    def build(self, maker: TrialMaker) -> NewTrial:
        src = next((t for t in maker.study.trials(self.rung - 1) if t.number == self.parent), None)
        if src is None:
            raise RuntimeError(f"trial {self.parent} of rung {self.rung - 1} not found")
        extra = {Attr.ORIGIN: src.user_attrs.get(Attr.ORIGIN, src.number)}
        if Attr.MODEL_PATH in src.user_attrs:
            extra[Attr.MODEL_PATH] = src.user_attrs[Attr.MODEL_PATH]
        return maker.copy_of(self, src, extra)


@dataclass
class BaselineWork(WorkItem):
    """A yardstick merge of the space (`automerge.search.space.Baseline`), at rung 0."""

    baseline: Any = None

    @property
    def key(self) -> str:
        return self.baseline.key

    @property
    def kind(self) -> str:
        return BASELINE

    def build(self, maker: TrialMaker) -> NewTrial:
        return _fixed_recipe(self, maker, self.baseline)


@dataclass
class WarmStartWork(BaselineWork):
    """An earlier round's recipe (`automerge.search.space.WarmStart`), a search trial at rung 0."""

    @property
    def kind(self) -> str:
        return SEARCH


@dataclass
class ReferenceWork(WorkItem):
    """An existing model of the space (`references`), evaluated as it is, at rung 0."""

    reference: Any = None

    @property
    def key(self) -> str:
        return f"ref:{self.reference.name}"

    @property
    def kind(self) -> str:
        return REFERENCE

    def build(self, maker: TrialMaker) -> NewTrial:
        attrs = maker.attrs(self)
        attrs[Attr.LABEL] = self.reference.name
        attrs[Attr.MODEL_PATH] = self.reference.path
        return maker.create(0, attrs, None)


def _fixed_recipe(work: WorkItem, maker: TrialMaker, fixed: Any) -> NewTrial:
    """A trial of a given recipe: with its search-space params where the space expresses it (so
    the sampler learns from it), else the recipe alone."""
    attrs = maker.attrs(work)
    attrs[Attr.LABEL] = fixed.label
    attrs[Attr.RECIPE] = fixed.recipe.to_yaml()
    params, dists = None, None
    if fixed.params is not None:
        params = dict(fixed.params)
        dists = distributions(maker.space, fixed.params)
    return maker.create(0, attrs, fixed.recipe, params, dists)


def fixed_items(space: Any, warm_starts: Any = ()) -> dict[str, WorkItem]:
    """The rung-0 items every study evaluates once, by key, in the order they are taken:
    baselines, references, then warm starts (before any sample, not counted in the budget)."""
    items: list[WorkItem] = [BaselineWork(reason=BASELINE, baseline=b) for b in space.baseline_trials()]
    items += [ReferenceWork(reason=REFERENCE, reference=r) for r in space.references]
    items += [WarmStartWork(reason="warm start", baseline=w) for w in warm_starts]
    return {w.key: w for w in items}


def from_claim(claim: "ClaimRow", previous: Any | None, fixed: Mapping[str, WorkItem],
               parent_kind: Callable[[int, int], str]) -> WorkItem:
    """The work item a stored claim stands for, to re-run (`previous`: its last trial, if any;
    `parent_kind(rung, n)`: the kind of trial n of the rung below `rung`)."""
    parent = promotion_parent(claim.item)
    if parent is not None:
        kind = previous.user_attrs.get(Attr.KIND, SEARCH) if previous is not None else parent_kind(claim.rung, parent)
        return Promotion(reason="retry", rung=claim.rung, parent=parent, parent_kind=kind).again(previous)
    if claim.item in fixed:
        return fixed[claim.item].again(previous)
    slot = sample_slot(claim.item)
    if slot is None:
        raise ValueError(f"unknown work item {claim.item!r} (a study made by another automerge version?)")
    return Sample(reason="retry", slot=slot).again(previous)


# -- params of a fixed recipe ------------------------------------------------------------------


def distributions(space: Any, params: Mapping[str, Any]) -> dict[str, Any]:
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
