"""study_reader + pareto_table: the table matches what storage holds, fronts and picks are right."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import optuna
import pandas as pd
import pytest

from automerge.errors import AutomergeError
from automerge.report.pareto_table import knee_index, pareto_table, pick, specialists, summarize_recipe
from automerge.report.study_reader import StudyNotFoundError, load_study

RUNGS = {"0": "demo", "1": "demo:r1", "full": "demo:full"}


@pytest.fixture(scope="module")
def data(synthetic_study):
    return load_study(synthetic_study.name, results_dir=synthetic_study.results)


def stored(synthetic_study, rung: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=RUNGS[rung], storage=synthetic_study.url).get_trials()


def brute_front(trials) -> set[int]:
    """Non-dominated search trials (maximise both), by definition."""
    search = [t for t in trials if t.user_attrs["kind"] == "search"]

    def dom(a, b):
        return all(x >= y for x, y in zip(a.values, b.values)) and any(x > y for x, y in zip(a.values, b.values))

    return {t.number for t in search if not any(dom(o, t) for o in search)}


def test_reader_matches_storage(data, synthetic_study):
    assert data.rung_labels == ["0", "1", "full"]
    assert data.objectives == ["nl", "code"] and data.directions == ["maximize", "maximize"]
    for rung in RUNGS:
        trials = stored(synthetic_study, rung)
        df = data.trials[data.trials["rung"] == rung].set_index("trial")
        assert sorted(df.index) == [t.number for t in trials]
        for t in trials:
            row = df.loc[t.number]
            assert [row["nl"], row["code"]] == t.values
            assert row["kind"] == t.user_attrs["kind"] and row["label"] == t.user_attrs["label"]
            recipe = t.user_attrs.get("recipe")
            assert row["recipe"] == recipe if recipe is not None else pd.isna(row["recipe"])
            parent = t.user_attrs["parent"]
            assert (pd.isna(row["parent"]) and parent is None) or row["parent"] == parent
            for key, value in t.user_attrs.items():
                if key.startswith("score:"):
                    assert row[key] == value
            for key, value in t.params.items():
                assert row[f"param:{key}"] == value
            assert row["compute_s"] == pytest.approx(t.user_attrs["eval_seconds"] + t.user_attrs["apply_seconds"])


def test_lineage_follows_parents(data):
    top = data.rung("full")
    row = top[top["kind"] == "search"].iloc[0]
    chain = data.lineage(row)
    assert [r["rung"] for r in chain] == ["0", "1", "full"]
    assert all(r["recipe"] == row["recipe"] for r in chain)
    assert int(chain[1]["trial"]) == int(row["parent"]) and int(chain[0]["trial"]) == int(chain[1]["parent"])


@pytest.mark.parametrize("rung", ["0", "1", "full"])
def test_pareto_table_matches_storage(data, synthetic_study, rung):
    trials = {t.number: t for t in stored(synthetic_study, rung)}
    table = pareto_table(data, rung)
    front = table[table["on_front"]]
    assert set(front["trial"]) == brute_front(trials.values())
    assert (front["kind"] == "search").all()
    # every baseline and reference is shown, below the front and marked
    yard = {n for n, t in trials.items() if t.user_attrs["kind"] != "search"}
    rest = table[~table["on_front"]]
    assert set(rest["trial"]) == yard
    assert table["on_front"].tolist() == sorted(table["on_front"].tolist(), reverse=True)
    for _, r in table.iterrows():
        t = trials[r["trial"]]
        assert [r["nl"], r["code"]] == t.values
        assert r["kind"] == t.user_attrs["kind"]
    # retention against each specialist alone, on its own domain (code -> code, lang -> nl)
    code = trials[next(n for n, t in trials.items() if t.user_attrs["label"] == "code alone")]
    lang = trials[next(n for n, t in trials.items() if t.user_attrs["label"] == "lang alone")]
    for _, r in table.iterrows():
        assert r["retention:code"] == pytest.approx(r["code"] / code.values[1])
        assert r["retention:lang"] == pytest.approx(r["nl"] / lang.values[0])
    # which baselines each front trial dominates
    for _, r in front.iterrows():
        a = trials[r["trial"]].values
        beaten = {trials[n].user_attrs["label"] for n in yard
                  if all(x >= y for x, y in zip(a, trials[n].values)) and a != trials[n].values}
        assert set(filter(None, r["dominates"].split(", "))) == beaten


def test_specialists_and_domains(data):
    specs = {s.name: s for s in specialists(data, "full")}
    assert set(specs) == {"code", "lang"}
    assert specs["code"].objective == "code" and specs["lang"].objective == "nl"
    assert specs["code"].label == "code alone"


def test_specialist_domain_without_space(data):
    """With no declared domains the specialist's own objective is where it stands out."""
    blank = type(data)(**{**data.__dict__, "space": {}})
    specs = {s.name: s.objective for s in specialists(blank, "full")}
    assert specs == {"code": "code", "lang": "nl"}


def test_csv_round_trip(data, tmp_path):
    table = pareto_table(data, "full")
    path = tmp_path / "p.csv"
    table.to_csv(path, index=False)
    back = pd.read_csv(path, keep_default_na=False)
    assert back["trial"].tolist() == table["trial"].tolist()
    assert np.allclose(back["nl"].astype(float), table["nl"])


def test_knee_geometry():
    # front on a concave-up curve: the middle point bulges toward the ideal point (1, 1)
    pts = np.array([[0.0, 1.0], [0.3, 0.9], [0.7, 0.7], [0.9, 0.3], [1.0, 0.0]])
    assert knee_index(pts) == 2
    # the knee is scale free: objectives are normalised
    assert knee_index(pts * np.array([100.0, 0.01])) == 2
    # a point just off the extremes' line loses to one far from it
    pts = np.array([[0.0, 1.0], [0.5, 0.52], [0.6, 0.8], [1.0, 0.0]])
    assert knee_index(pts) == 2
    assert knee_index(np.array([[0.2, 0.9], [0.8, 0.1]])) in (0, 1)


def test_picks(data):
    table = pareto_table(data, "full")
    front = table[table["on_front"]]
    assert int(pick(data, "best-nl", "full")["trial"]) == int(front.loc[front["nl"].idxmax(), "trial"])
    assert int(pick(data, "best-code", "full")["trial"]) == int(front.loc[front["code"].idxmax(), "trial"])
    assert int(pick(data, "knee")["trial"]) in set(front["trial"])
    with pytest.raises(AutomergeError, match="best-nl"):
        pick(data, "best-speed")


def test_summarize_recipe():
    text = ("method: ties\nmodels:\n- {name: code, path: x, parameters: {weight: 0.7, density: {block0: 0.3, "
            "default: 0.8}}}\nparameters: {lambda: 1.1}\nnum_groups: 2\n")
    assert summarize_recipe(text) == "λ=1.1 G=2; code w=0.7 d=0.3–0.8"


def test_missing_study_is_a_clear_error(tmp_path, synthetic_study):
    with pytest.raises(StudyNotFoundError, match="study.db"):
        load_study("nope", results_dir=tmp_path)
    with pytest.raises(StudyNotFoundError, match="studies there: demo"):
        load_study("nope", storage=synthetic_study.url)
    with pytest.raises(AutomergeError, match="rungs are 0, 1, full"):
        load_study(synthetic_study.name, storage=synthetic_study.url).rung_label("7")


def test_reading_never_writes(synthetic_study, tmp_path):
    db = synthetic_study.results / synthetic_study.name / "study.db"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    data = load_study(synthetic_study.name, storage=f"sqlite:///{db}")
    pareto_table(data)
    from automerge.report.analysis import param_importances

    param_importances(data)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert not math.isnan(float(data.trials["compute_s"].sum()))


def test_empty_and_running_study(tmp_path):
    """A study that has just started (no finished trial yet) reads, tables and reports."""
    import warnings

    from automerge.report.html import write_report

    (tmp_path / "fresh").mkdir()
    url = f"sqlite:///{tmp_path / 'fresh' / 'study.db'}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        for name in ("fresh", "fresh:full"):
            optuna.create_study(study_name=name, storage=url, directions=["maximize"] * 2).set_metric_names(
                ["nl", "code"])
    optuna.load_study(study_name="fresh", storage=url).ask().set_user_attr("kind", "search")  # running
    data = load_study("fresh", results_dir=tmp_path)
    assert len(data.trials) == 1 and data.completed().empty
    assert data.top_rung() == "0"
    assert pareto_table(data).empty
    assert (write_report(data)).is_file()
    with pytest.raises(AutomergeError, match="no completed search trial"):
        pick(data, "knee")
