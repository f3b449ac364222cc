from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from automerge.errors import AutomergeError
from automerge.zoo import MODEL_NAMES, ZooError, build_zoo
from automerge.zoo import build as B
from automerge.zoo import corpus as C

MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json"}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout(test_zoo):
    for name in MODEL_NAMES:
        d = test_zoo / "models" / name
        assert MODEL_FILES <= {p.name for p in d.iterdir()}
    for name in ("code", "prose", "tests", "docstrings", "generation", "summarisation"):
        recs = list(C.read_jsonl(test_zoo / "data" / "heldout" / f"{name}.jsonl"))
        assert recs, name
        keys = {"id", "source", "prompt", "target"} if name in ("generation", "summarisation") else {"id", "source", "text"}
        assert all(keys <= set(r) for r in recs)
        assert len({r["id"] for r in recs}) == len(recs)
    for name in ("code", "prose"):
        assert (test_zoo / "data" / "external" / f"{name}.jsonl").exists()
    assert (test_zoo / "data" / "DATA_CARD.md").read_text().startswith("# Demo zoo data card")
    info = json.loads((test_zoo / "zoo.json").read_text())
    assert info["size"] == "test" and info["seed"] == 0
    assert 10_000 < info["parameters"] < 100_000
    assert set(info["stages"]) == set(MODEL_NAMES)
    assert not list(test_zoo.parent.glob(".zoo.building-*"))


def test_models_load_with_transformers(test_zoo):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = test_zoo / "models" / "code"
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
        assert "lm_head.weight" not in set(f.keys())  # tied embeddings
    model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(d))
    assert tok.bos_token == tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 0
    ids = tok("def f(x):\n    return x\n", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "def f(x):\n    return x\n"
    out = model(input_ids=torch.tensor([[0] + ids])).logits
    assert torch.isfinite(out).all()


def test_specialists_differ_from_base(test_zoo):
    from safetensors.torch import load_file

    base = load_file(str(test_zoo / "models" / "base" / "model.safetensors"))
    for name in ("code", "lang", "tests", "mix"):
        other = load_file(str(test_zoo / "models" / name / "model.safetensors"))
        assert base.keys() == other.keys()
        assert any(not (base[k] == other[k]).all() for k in base)


def test_rebuild_is_byte_identical(test_zoo, tmp_path):
    again = build_zoo(size="test", out=tmp_path / "again", seed=0, progress=False)
    a, b = _files(test_zoo), _files(again)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_nonempty_output_dir_is_refused(tmp_path):
    out = tmp_path / "zoo"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ZooError, match="not empty"):
        build_zoo(size="test", out=out, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_empty_output_dir_is_used(tmp_path):
    out = tmp_path / "zoo"
    out.mkdir()
    assert build_zoo(size="test", out=out, progress=False) == out
    assert (out / "zoo.json").exists()


def test_unwritable_output_dir(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ZooError, match="--out"):
        build_zoo(size="test", out=blocker / "zoo", progress=False)
    monkeypatch.setattr(B.os, "access", lambda *a, **k: False)
    with pytest.raises(ZooError, match="not writable"):
        build_zoo(size="test", out=tmp_path / "zoo", progress=False)
    assert not (tmp_path / "zoo").exists()


def test_missing_doc_package_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "doc_sources_dir", lambda *a, **k: None)
    with pytest.raises(ZooError) as err:
        build_zoo(size="full", out=tmp_path / "zoo", progress=False)
    v = sys.version_info
    assert f"apt-get install python{v.major}.{v.minor}-doc" in str(err.value)
    assert "--size test" in str(err.value)
    assert isinstance(err.value, AutomergeError)
    assert list(tmp_path.iterdir()) == []


def test_failure_leaves_nothing(tmp_path, monkeypatch):
    import automerge.zoo.train as T

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(T, "train_stage", boom)
    with pytest.raises(RuntimeError, match="boom"):
        build_zoo(size="test", out=tmp_path / "zoo", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_build(tmp_path):
    from typer.testing import CliRunner

    from automerge.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["zoo", "build", "--size", "test", "--out", str(tmp_path / "z"), "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "z" / "zoo.json").read_text())["seed"] == 1
    res = runner.invoke(app, ["zoo", "build", "--size", "test", "--out", str(tmp_path / "z")])
    assert isinstance(res.exception, ZooError)
    res = runner.invoke(app, ["zoo", "build", "--size", "huge", "--out", str(tmp_path / "y")])
    assert isinstance(res.exception, ZooError)


def test_cache_resumes_with_same_bytes(test_zoo, tmp_path):
    cache = tmp_path / "cache"
    first = build_zoo(size="test", out=tmp_path / "a", seed=0, progress=False, cache=cache)
    assert sorted(p.name.split("-")[0] for p in cache.iterdir()) == sorted(MODEL_NAMES)
    second = build_zoo(size="test", out=tmp_path / "b", seed=0, progress=False, cache=cache)
    assert _files(first) == _files(second) == _files(test_zoo)


def test_cache_key_covers_only_the_streams_a_stage_reads():
    """Changing one domain's text changes the keys of the stages that read it (and their children) only."""
    import torch

    zp = B.plan("test")
    streams = {d: torch.arange(100) for d in ("code", "bare_code", "tests", "prose", "docstrings",
                                              "summarisation")}
    keys = lambda s: B.stage_keys(zp, size="test", seed=0, tokenizer_json="{}", streams=s)  # noqa: E731
    before = keys(streams)
    assert keys({**streams, "summarisation": torch.arange(101)}) == before  # no stage reads it
    after = keys({**streams, "bare_code": torch.arange(101)})
    assert {n for n in before if after[n] != before[n]} == {"code", "mix"}
    after = keys({**streams, "prose": torch.arange(101)})
    assert all(after[n] != before[n] for n in before)  # the base reads prose: every child changes too


def test_package_import_is_light():
    import subprocess

    code = "import sys, automerge.zoo; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sigterm_leaves_nothing(tmp_path, monkeypatch):
    import os
    import signal

    import automerge.zoo.train as T

    def term(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(T, "train_stage", term)
    with pytest.raises(SystemExit):
        build_zoo(size="test", out=tmp_path / "zoo", progress=False)
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
