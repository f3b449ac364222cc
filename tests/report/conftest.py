"""Fixtures for report/: small finished studies in the search's exact storage format.

* `synthetic_study`: tiny random models, made-up scores (instant) — for table / plot / HTML logic.
* `demo_study`: the test-size demo zoo (`build_zoo(size="test")`), every trial really merged by
  `ResidentMerger` and scored by the real `Evaluator` — so an exported model can be reloaded
  and re-evaluated against the scores the study stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from report_study import DEMO_LIMITS, DEMO_TASKS, RealScorer, make_study


@dataclass
class StudyFixture:
    results: Path  # the results directory (holds <name>/study.db)
    name: str
    models: dict[str, Path]
    url: str = ""
    extra: dict = field(default_factory=dict)


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory) -> dict[str, Path]:
    from tiny_models import save_tiny_model

    root = tmp_path_factory.mktemp("tiny-zoo")
    base = save_tiny_model(root / "base", arch="llama", seed=0, num_layers=4, hidden=32)
    out = {"base": base}
    for i, name in enumerate(["code", "lang", "tests", "mix"], start=1):
        out[name] = save_tiny_model(root / name, base=base, seed=i, noise=0.05)
    return out


@pytest.fixture(scope="session")
def synthetic_study(tmp_path_factory, tiny_zoo) -> StudyFixture:
    results = tmp_path_factory.mktemp("synthetic-results")
    name = "demo"
    (results / name).mkdir()
    url = f"sqlite:///{results / name / 'study.db'}"
    make_study(url, name, base=str(tiny_zoo["base"]),
               specialists={"code": str(tiny_zoo["code"]), "lang": str(tiny_zoo["lang"])},
               reference=str(tiny_zoo["mix"]), n_search=12)
    return StudyFixture(results=results, name=name, models=tiny_zoo, url=url)


# -- the real demo study --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def demo_zoo(tmp_path_factory) -> Path:
    from automerge.zoo.build import build_zoo

    out = tmp_path_factory.mktemp("demo-zoo") / "zoo"
    build_zoo(size="test", out=out, seed=0, progress=False)
    return out


def _windows(text: str, *, ctx: int, cont: int, step: int) -> list[tuple[str, str]]:
    out = []
    for start in range(0, max(0, len(text) - ctx - cont), step):
        out.append((text[start:start + ctx], text[start + ctx:start + ctx + cont]))
    return out


@pytest.fixture(scope="session")
def proxy_data(demo_zoo, tmp_path_factory) -> Path:
    """Short log-likelihood items cut from the zoo's held-out text (the test zoo's context is 64
    tokens, too short for the shipped items)."""
    out = tmp_path_factory.mktemp("proxy-data")
    for task, source in (("prose_ll", "prose"), ("code_body_ll", "code")):
        items = []
        for line in (demo_zoo / "data" / "heldout" / f"{source}.jsonl").read_text().splitlines():
            rec = json.loads(line)
            for i, (c, k) in enumerate(_windows(rec["text"], ctx=60, cont=30, step=400)):
                items.append({"id": f"{rec['id']}:{i}", "source": rec["source"], "context": c, "continuation": k})
        assert len(items) >= DEMO_LIMITS[-1], f"{task}: only {len(items)} items"
        (out / f"{task}.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items[:40]))
    return out


@pytest.fixture(scope="session")
def real_scorer(proxy_data) -> RealScorer:
    return RealScorer(proxy_data, DEMO_TASKS)


@pytest.fixture(scope="session")
def demo_study(tmp_path_factory, demo_zoo, real_scorer) -> StudyFixture:
    results = tmp_path_factory.mktemp("demo-results")
    name = "night1"
    (results / name).mkdir()
    url = f"sqlite:///{results / name / 'study.db'}"
    models = {n: demo_zoo / "models" / n for n in ("base", "code", "lang", "tests", "mix")}
    make_study(url, name, base=str(models["base"]),
               specialists={"code": str(models["code"]), "lang": str(models["lang"])},
               reference=str(models["mix"]), n_search=8, promote=(3, 2), score_fn=real_scorer,
               tasks=DEMO_TASKS, limits=DEMO_LIMITS, seed=1)
    return StudyFixture(results=results, name=name, models=models, url=url)
