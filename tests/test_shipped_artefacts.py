"""What the repository ships, loaded and re-measured: the demo zoo's models against zoo.json, the
zoo card (card.json, automerge/zoo/README.md) and the README's zoo claims; the demo study in
results/demo-sample/ through `automerge pareto` / `automerge export` against the README's table
and figures. Every expected value is read at test time from the shipped file or the README, so
the tests follow a rebuilt zoo or a regenerated demo study, and fail when a file and its doc
disagree.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from automerge.cli import app
from automerge.zoo import card

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "automerge" / "zoo"
MODELS = ZOO / "models"
README = (ROOT / "README.md").read_text(encoding="utf-8")
CARD_TOL = 5e-4  # nats/token: the card rounds to 1e-4; fp32 sums in another thread count differ by ~1e-6
SLICE = ("docstrings", "summarisation")  # the card's two smallest domains: the re-measured slice


def readme_number(pattern: str) -> float:
    m = re.search(pattern, README.replace("\n", " "))
    assert m, f"README no longer states {pattern!r}: update this test with the claim"
    return float(m.group(1))


# ---------------------------------------------------------------------------------- the zoo


def test_every_shipped_zoo_model_loads_as_zoo_json_says():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = json.loads((ZOO / "zoo.json").read_text())
    names = sorted(p.name for p in MODELS.iterdir() if (p / "config.json").is_file())
    assert names == ["base", "code", "lang", "mix", "tests"]
    adapters = sorted(p.name for p in MODELS.iterdir() if (p / "adapter_config.json").is_file())
    assert adapters == sorted(meta["lora"]["adapters"]) == ["code-lora", "lang-lora"]
    assert len(names) + len(adapters) == sum(1 for p in MODELS.iterdir() if p.is_dir())
    for name in names:
        model = AutoModelForCausalLM.from_pretrained(MODELS / name, dtype=torch.float32)
        cfg = model.config
        assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads,
                cfg.vocab_size, cfg.max_position_embeddings) == tuple(meta["model"][k] for k in (
                    "hidden_size", "intermediate_size", "num_layers", "num_heads", "vocab_size", "seq_len")), name
        assert sum(p.numel() for p in model.parameters()) == meta["parameters"], name
        assert all(torch.isfinite(p).all() for p in model.parameters()), name
        tok = AutoTokenizer.from_pretrained(MODELS / name)
        assert len(tok) == meta["tokenizer"]["vocab_size"]
    # README: "a 1.57M-parameter Llama base", "16 MB in all"
    assert round(meta["parameters"] / 1e6, 2) == readme_number(r"a ([\d.]+)M-parameter Llama base")
    size = sum(f.stat().st_size for f in MODELS.rglob("*") if f.is_file())
    assert round(size / 2**20) == readme_number(r"(\d+) MB in all") or round(size / 1e6) == readme_number(
        r"(\d+) MB in all"), size
    # README: "Held-out data (1 file in 10, never seen by any model)": the split rule zoo.json records
    every = re.search(r"% (\d+) == 0", meta["corpus"]["info"]["heldout_rule"])
    assert every and int(every.group(1)) == readme_number(r"Held-out data \(1 file in (\d+),")
    for rel, info in meta["data_files"].items():  # the shipped data is the data the card measured
        path = ZOO / "data" / rel
        assert path.stat().st_size == info["bytes"], rel
        assert sum(1 for line in path.open(encoding="utf-8") if line.strip()) == info["records"], rel


def test_zoo_card_slice_remeasured():
    """Every model and the linear 0.5/0.5 merge, re-measured on the card's two smallest domains
    with the card's own code and settings, equals card.json within CARD_TOL."""
    from transformers import PreTrainedTokenizerFast

    shipped = json.loads((ZOO / "data" / "card.json").read_text())
    tok = PreTrainedTokenizerFast.from_pretrained(str(MODELS / "base"))
    model = card.load_model(MODELS / "base")
    eot, pad = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|pad|>")
    domains = {d: card.encode_domain(tok, card.read_jsonl(ZOO / "data" / (card.TEXT_DOMAINS.get(d) or card.PAIR_DOMAINS[d])),
                                     eot=eot, seq_len=model.config.max_position_embeddings,
                                     max_doc_tokens=shipped["max_doc_tokens"], pairs=d in card.PAIR_DOMAINS)
               for d in SLICE}
    for d in SLICE:
        assert sum(sum(t != -100 for t in r[1]) for r in domains[d]) == shipped["tokens"][d], d
    states = card.load_states(MODELS, ("base", "code", "lang", "tests", "mix"))
    label, names, lams, _density = card.merge_list()[0]
    entries = {**states, label: card.task_arithmetic(states["base"], [states[n] for n in names], lams)}
    off = {}
    for name, sd in entries.items():
        model.load_state_dict(sd, strict=False)
        for d in SLICE:
            got = card.rows_loss(model, domains[d], pad_id=pad)
            if abs(got - shipped["rows"][name][d]) > CARD_TOL:
                off[f"{name}@{d}"] = (round(got, 4), shipped["rows"][name][d])
    assert not off, f"re-measured vs card.json: {off}"


def test_zoo_card_checks_and_readme_claims():
    """card.json's checks follow from its rows; automerge/zoo/README.md shows that card; the
    README's claims (margin, external wins, no merge near both) hold on it."""
    shipped = json.loads((ZOO / "data" / "card.json").read_text())
    rows = shipped["rows"]
    assert card.checks(rows) == shipped["checks"]
    zoo_readme = (ZOO / "README.md").read_text(encoding="utf-8")
    block = zoo_readme.split(card.CARD_START, 1)[1].split(card.CARD_END, 1)[0]
    assert block.strip() == card.render(shipped).strip()
    assert shipped["targets"] == card.targets(rows)
    figures = {t["target"]: t["figure"] for t in shipped["targets"]}
    text = README.replace("\n", " ")
    over_base = readme_number(r"each specialist beats the base by ≥ ([\d.]+)")
    over_other = readme_number(r"and the other specialist by ≥ ([\d.]+) nats/token on its own domain")
    trail = readme_number(r"each trail both specialists on their domains by ≥ ([\d.]+) nats/token")
    assert min(v for k, v in figures.items() if "beats base" in k) >= over_base
    assert min(v for k, v in figures.items() if " beats " in k and "base" not in k) >= over_other
    assert "is worse than the base on the other one" in text
    assert all(v > 0 for k, v in figures.items() if "forgetting" in k)
    assert min(v for k, v in figures.items() if " trails " in k) >= trail


# ---------------------------------------------------------------------------------- the demo study

DEMO = "demo-sample"


def readme_demo_table() -> pd.DataFrame:
    """The README's `automerge pareto demo-sample` table."""
    text = README.split("On the demo study kept in the", 1)[1]
    lines = [ln for ln in text.splitlines() if ln.startswith("| #")]
    assert lines, "the README's demo table is gone"
    cols = ["trial", "kind", "label", "method", "params", "code", "nl", "ret_code", "ret_lang", "versus"]
    return pd.DataFrame([[c.strip() for c in ln.strip("|").split("|")] for ln in lines], columns=cols)


def _decimals(s: str) -> float:
    """Half a unit of the last digit shown."""
    mant = s.rstrip("%").split("e")[0]
    return 0.5 * 10 ** -(len(mant.split(".")[1]) if "." in mant else 0)


@pytest.fixture(scope="module")
def demo_pareto(tmp_path_factory) -> tuple[str, pd.DataFrame]:
    out = tmp_path_factory.mktemp("demo") / "front.csv"
    res = CliRunner().invoke(app, ["pareto", DEMO, "--results-dir", str(ROOT / "results"), "--csv", str(out)])
    assert res.exit_code == 0, (res.output, res.exception)
    return res.output, pd.read_csv(out)


def test_demo_sample_pareto_equals_the_readme_table(demo_pareto):
    output, csv = demo_pareto
    shown = readme_demo_table()
    assert len(shown) == len(csv), (len(shown), len(csv))
    csv = csv.set_index("trial")
    for _, r in shown.iterrows():
        row = csv.loc[int(r["trial"].lstrip("#"))]
        assert r["kind"].split()[0] == row["kind"] and ("★" in r["kind"]) == bool(row["on_front"]), r["trial"]
        assert r["label"] == row["label"] and r["method"] == (row["method"] if isinstance(row["method"], str) else "")
        assert r["params"] == (row["params"] if isinstance(row["params"], str) else "")
        for col, src, scale in (("code", "code [nats/token]", 1), ("nl", "nl [nats/token]", 1), ("ret_code", "retention:code", 100),
                                ("ret_lang", "retention:lang", 100)):
            value = float(r[col].rstrip("%"))
            assert abs(row[src] * scale - value) <= _decimals(r[col]) * (1 + 1e-9), (r["trial"], col, value, row[src])
        assert f"{r['trial']} " in output or f"{r['trial']}\u2502" in output or r["trial"] in output


@pytest.fixture(scope="module")
def knee_export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("knee")
    res = CliRunner().invoke(app, ["export", DEMO, "--results-dir", str(ROOT / "results"), "--pick", "knee",
                                   "--model", str(out / "knee"), "--mergekit", str(out / "knee.mergekit.yml"),
                                   "--device", "cpu"])
    assert res.exit_code == 0, (res.output, res.exception)
    return out


def test_demo_sample_knee_export_as_the_readme_says(knee_export):
    """README: `export demo-sample --pick knee` takes trial #N of the full rung (started as rung-0
    trial M); its re-scored model gives the stored scores to the last digit; mergekit writes the
    same tensors (≤ X relative)."""
    from automerge.eval import Evaluator
    from automerge.report.pareto_table import pick
    from automerge.report.study_reader import load_study
    from transformers import AutoModelForCausalLM, AutoTokenizer

    number = int(readme_number(r"--pick knee --model out/knee` takes trial\s+#(\d+) of the full rung"))
    origin = int(readme_number(r"of the full rung \(started as rung-0 trial (\d+)\)"))
    data = load_study(DEMO, results_dir=ROOT / "results")
    knee = pick(data, "knee")
    assert int(knee["trial"]) == number and knee["label"] == f"trial {origin}", (knee["trial"], knee["label"])
    card_text = (knee_export / "knee" / "README.md").read_text()
    assert DEMO in card_text

    # re-score on the full-evaluation tasks, as the search's runner does
    space = yaml.safe_load((ROOT / "results" / DEMO / "space.yaml").read_text())
    tasks = [c.removeprefix("score:") for c in data.score_columns() if not pd.isna(knee[c])]
    assert tasks
    model = AutoModelForCausalLM.from_pretrained(knee_export / "knee", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(knee_export / "knee")
    limit = None if pd.isna(knee["attr:items"]) else int(knee["attr:items"])
    scores = Evaluator(tokenizer=tok, device="cpu", seed=space["seed"]).run(model, tasks, limit=limit)
    for task in tasks:  # "to the last digit"
        assert float(scores[task].score) == pytest.approx(float(knee[f"score:{task}"]), rel=1e-6, abs=1e-12), task

    # mergekit-yaml on the exported YAML: the same tensors within the README's bound
    bound = readme_number(r"writes the same tensors \(≤ ([\d.e-]+) relative\)")
    mk_config = pytest.importorskip("mergekit.config")  # the dev extra; third-party
    from mergekit.merge import MergeOptions, run_merge
    from safetensors.torch import load_file

    config = yaml.safe_load((knee_export / "knee.mergekit.yml").read_text())
    run_merge(mk_config.MergeConfiguration.model_validate(config), str(knee_export / "mk"),
              options=MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True, lazy_unpickle=False))
    ours = load_file(str(knee_export / "knee" / "model.safetensors"))
    theirs = {}
    for f in (knee_export / "mk").glob("*.safetensors"):
        theirs.update(load_file(str(f)))
    assert theirs and set(theirs) <= set(ours)
    worst = max(float((ours[n].float() - t.float()).abs().max() / t.float().abs().max().clamp_min(1e-12))
                for n, t in theirs.items())
    assert worst <= bound, worst
    assert not math.isnan(worst)
