"""`automerge analyze`: task-vector figures checked against a direct computation on tiny models."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from automerge.layers import layer_index, tensor_role
from automerge.task_vectors import AnalysisError, analyze_task_vectors
from tiny_models import read_tensors, save_tiny_model, write_tensors

LAYERS = 6


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """a: noise everywhere; b: noise, but in the last third's attention the negative of a's task vector
    (plus a little noise), so sign conflicts concentrate there."""
    root = tmp_path_factory.mktemp("tv")
    base = save_tiny_model(root / "base", arch="llama", seed=0, num_layers=LAYERS)
    a = save_tiny_model(root / "a", base=base, seed=1, noise=0.05)
    b = save_tiny_model(root / "b", base=base, seed=2, noise=0.05)
    tb, ta, tbb = read_tensors(base), read_tensors(a), read_tensors(b)
    for name in tb:
        i = layer_index(name)
        if i is not None and i >= 4 and tensor_role(name) == "attn":
            tbb[name] = tb[name] - (ta[name] - tb[name]) + 0.1 * (tbb[name] - tb[name])
    write_tensors(tbb, b)
    return root, base, a, b


def _direct(base, specs, layer: str, kind: str, rho: float) -> dict[str, float]:
    """The figures of one unit straight from the definition (topk per tensor, no shared code)."""
    tb = read_tensors(base)
    ts = [read_tensors(s) for s in specs]
    names = [n for n in tb if (str(layer_index(n)) if layer_index(n) is not None else tensor_role(n)) == layer
             and tensor_role(n) == kind]
    d = [torch.cat([(t[n].float() - tb[n].float()).flatten() for n in names]) for t in ts]
    both = differ = union = 0
    for n in names:
        di = [(t[n].float() - tb[n].float()).flatten() for t in ts]
        masks = []
        for x in di:
            k = max(1, int(rho * x.numel()))
            m = torch.zeros(x.numel(), dtype=torch.bool)
            m[x.abs().topk(k).indices] = True
            masks.append(m & (x != 0))
        bm = masks[0] & masks[1]
        both += int(bm.sum())
        differ += int((bm & (torch.sign(di[0]) != torch.sign(di[1]))).sum())
        union += int((masks[0] | masks[1]).sum())
    return {"norm_a": float(d[0].norm()), "norm_b": float(d[1].norm()),
            "cosine": float(d[0] @ d[1] / (d[0].norm() * d[1].norm())),
            f"conflict@{rho:g}": differ / both, f"overlap@{rho:g}": both / union, "params": d[0].numel()}


def test_figures_equal_a_direct_computation(models):
    _, base, a, b = models
    an = analyze_task_vectors(base, {"a": a, "b": b})
    t = an.table
    assert set(t.kind) == {"embed", "attn", "mlp", "head", "all"}
    for layer, kind in (("0", "attn"), ("5", "attn"), ("2", "mlp"), ("embed", "embed"), ("head", "head")):
        row = t[(t.layer == layer) & (t.kind == kind)].iloc[0]
        for rho in (0.2, 0.5, 0.8):
            want = _direct(base, [a, b], layer, kind, rho)
            for key, value in want.items():
                assert row[key] == pytest.approx(value, rel=1e-5, abs=1e-9), (layer, kind, key)
    # the `all` rows are sums over units, not means of rates
    allrow = t[(t.layer == "all") & (t.kind == "all")].iloc[0]
    units = t[~t.layer.isin(["all"])]
    assert allrow.params == units.params.sum()
    assert allrow.norm_a == pytest.approx(math.sqrt((units.norm_a ** 2).sum()), rel=1e-6)
    # the constructed conflict: last-third attention is anti-aligned
    late = t[(t.layer.isin(["4", "5"])) & (t.kind == "attn")]
    early = t[(t.layer.isin(["0", "1"])) & (t.kind == "attn")]
    assert (late.cosine < -0.9).all() and (early.cosine.abs() < 0.3).all()
    assert (late["conflict@0.5"] > 0.95).all()


def test_advice_names_the_conflicting_part(models):
    _, base, a, b = models
    advice = analyze_task_vectors(base, {"a": a, "b": b}).advice()
    assert any(s.startswith("attention task vectors conflict most in the last third") and "per_group" in s
               for s in advice), advice
    # no conflict anywhere special: the sentence says one density is enough
    calm = analyze_task_vectors(base, {"a": a, "c": save_tiny_model(a.parent / "c", base=base, seed=5, noise=0.05)})
    assert any("even across layers" in s for s in calm.advice()), calm.advice()


def test_cli_writes_csv_and_plot(models, tmp_path):
    from typer.testing import CliRunner

    from automerge.cli import app

    _, base, a, b = models
    res = CliRunner().invoke(app, ["analyze", str(base), f"a={a}", f"b={b}", "--csv", str(tmp_path / "t.csv"),
                                   "--plot", str(tmp_path / "h.png"), "--density", "0.3"])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(tmp_path / "t.csv")
    assert {"conflict@0.3", "overlap@0.3"} <= set(df.columns) and len(df) == 2 * LAYERS + 2 + 5
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    assert "conflict most" in res.output
    with pytest.raises(AnalysisError, match="at least two specialists"):
        analyze_task_vectors(base, {"a": a})
    with pytest.raises(AnalysisError, match="densities"):
        analyze_task_vectors(base, {"a": a, "b": b}, densities=[1.5])


def test_lora_specialists_are_analysed_with_zero_untouched_modules(models, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    _, base, a, _ = models
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    model = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"],
                                                       init_lora_weights=False))
    model.save_pretrained(str(tmp_path / "lora"))
    t = analyze_task_vectors(base, {"a": a, "lora": tmp_path / "lora"}).table
    mlp = t[(t.kind == "mlp") & (t.layer != "all")]
    assert (mlp.norm_b == 0).all() and mlp.cosine.isna().all()
    assert (t[(t.kind == "attn") & (t.layer != "all")].norm_b > 0).all()


def test_report_section(models, tmp_path):
    from types import SimpleNamespace

    from automerge.report.task_vector_section import task_vector_section

    _, base, a, b = models
    data = SimpleNamespace(space={"base": str(base), "specialists": [{"name": "a", "path": str(a)},
                                                                     {"name": "b", "path": str(b)}]})
    section, png = task_vector_section(data, tmp_path)
    assert "<h2>Task vectors</h2>" in section and "task-vector-table" in section and "conflict most" in section
    assert png == tmp_path / "task_vectors.png" and png.is_file()
    data.space["specialists"][1]["path"] = str(tmp_path / "missing")
    section, png = task_vector_section(data, tmp_path)
    assert "not analysed" in section and "does not exist" in section and png is None
