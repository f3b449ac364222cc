"""The streamed one-off merge (automerge.stream) writes the bytes ResidentMerger.save writes, and
a bad input fails in one line before anything is written."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from automerge import stream
from automerge.checkpoints import save_checkpoint
from automerge.engine import ResidentMerger
from automerge.errors import AutomergeError
from automerge.files import staged_dir
from automerge.methods import METHODS, get_method
from automerge.recipe import Recipe
from entry_point import automerge_cmd, cli_env
from tiny_models import save_tiny_model

STREAMED = [m for m in METHODS if stream.resident_reason(m) is None]
DTYPES = ["float32", "bfloat16", "float16"]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stream")
    base = save_tiny_model(root / "base", arch="llama", seed=0, num_layers=4, hidden=32, dtype=torch.bfloat16)
    return {
        "base": base,
        "code": save_tiny_model(root / "code", base=base, seed=1, noise=0.05, dtype=torch.bfloat16),
        "lang": save_tiny_model(root / "lang", base=base, seed=2, noise=0.05, dtype=torch.bfloat16),
    }


def recipe_for(zoo: dict[str, Path], method: str) -> Recipe:
    """A recipe of `method` with per-group values, every model parameter set, seed fixed."""
    m = get_method(method)
    names = ["code", "lang"][: m.max_models or 2]
    per_model = {}
    for i, n in enumerate(names):
        p = {}
        for param in m.model_params:
            if param.name == "weight":
                p["weight"] = {"block0": 0.3, "default": 0.7} if i == 0 else 0.6
            elif param.name == "density":
                p["density"] = {"attn": 0.4, "default": 0.7} if i == 0 else 0.5
        per_model[n] = p
    params = {"t": 0.3} if any(p.name == "t" for p in m.global_params) and m.param("t").required else {}
    models = [{"name": n, "path": str(zoo[n]), "parameters": p} for n, p in per_model.items()]
    return Recipe.from_dict(dict(method=method, base=str(zoo["base"]), models=models, parameters=params,
                                 num_groups=2, split_attn_mlp=True, seed=5))


def weight_files(d: Path) -> list[Path]:
    return sorted(d.glob("*.safetensors"))


def assert_same_model(ours: Path, ref: Path) -> None:
    """Same files; each safetensors file has the same header (as JSON: safetensors orders the
    metadata keys by a hash map, differently on every call) and byte-identical tensor data."""
    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in ref.iterdir())
    for f in weight_files(ref):
        a, b = (ours / f.name).read_bytes(), f.read_bytes()
        na, nb = int.from_bytes(a[:8], "little"), int.from_bytes(b[:8], "little")
        assert na == nb, f.name
        assert json.loads(a[8:8 + na]) == json.loads(b[8:8 + nb]), f.name
        assert a[8 + na:] == b[8 + nb:], f"{f.name}: tensor bytes differ"
    for f in ref.iterdir():
        if f.suffix != ".safetensors":
            assert (ours / f.name).read_bytes() == f.read_bytes(), f.name


@pytest.fixture(scope="module")
def mergers(zoo) -> dict[int, ResidentMerger]:
    """ResidentMerger per specialist count, as `automerge merge` built it before streaming."""
    return {k: ResidentMerger(base=zoo["base"], specialists={n: zoo[n] for n in ["code", "lang"][:k]},
                              dtype="float32") for k in (1, 2)}


@pytest.mark.parametrize("method", STREAMED)
def test_streamed_merge_equals_resident_save_bit_for_bit(method, zoo, mergers, tmp_path):
    rec = recipe_for(zoo, method)
    merger = mergers[len(rec.models)]
    merger.apply(rec)
    meta = {"automerge_recipe": rec.to_yaml()}
    for dtype in DTYPES:
        ref = merger.save(tmp_path / f"ref-{dtype}", dtype=dtype, metadata=meta)
        ours = stream.merge_to_dir(rec, tmp_path / f"ours-{dtype}", dtype=dtype, device="cpu", metadata=meta)
        assert_same_model(ours, ref)


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "dare_ties"])
def test_blocks_and_shards_change_no_byte(method, zoo, mergers, tmp_path, monkeypatch):
    """Tensors merged in blocks of rows (linear / TA / TIES) and several output shards: same bytes."""
    rec = recipe_for(zoo, method)
    merger = mergers[2]
    merger.apply(rec)
    ref = save_checkpoint(merger.state_dict_iter(), tmp_path / "ref", source=merger.base_checkpoint,
                          dtype=torch.bfloat16, max_shard_bytes=20_000, metadata={"k": "v"})
    monkeypatch.setattr(stream, "BLOCK_ELEMENTS", 100)
    ours = tmp_path / "ours"
    ours.mkdir()
    stream.StreamedMerge(rec, device="cpu").write(ours, dtype="bfloat16", metadata={"k": "v"}, max_shard_bytes=20_000)
    assert len(weight_files(ref)) > 2 and (ref / "model.safetensors.index.json").is_file()
    assert_same_model(ours, ref)


def test_shard_header_is_save_files_byte_for_byte(tmp_path):
    tensors = {"b.w": torch.randn(3, 5).to(torch.bfloat16), "a.w": torch.randn(4), "c": torch.zeros(0),
               "é.x": torch.randn(2, 2).half(), "n": torch.tensor(1.5)}
    save_file(tensors, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
    with stream._ShardFile(tmp_path / "ours.safetensors", {n: (t.dtype, tuple(t.shape)) for n, t in tensors.items()},
                           {"format": "pt"}) as shard:
        for n, t in tensors.items():
            shard.write(n, t.float())
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


def test_every_resident_method_is_documented():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "merge-methods.md").read_text()
    assert stream.RESIDENT, "no method falls back: drop this test and the docs section"
    for method in stream.RESIDENT:
        assert f"`{method}`" in doc.split("## Streamed one-off merges")[1]


# -- bad input: one line, before any output ----------------------------------------------------------


def _cli_merge(zoo_paths: dict[str, Path], tmp_path: Path, out: Path) -> subprocess.CompletedProcess:
    rec = tmp_path / "r.yaml"
    rec.write_text(f"method: task_arithmetic\nbase: {zoo_paths['base']}\nmodels:\n"
                   f"  - name: code\n    path: {zoo_paths['code']}\n    parameters: {{weight: 0.5}}\n")
    return subprocess.run([*automerge_cmd(), "merge", str(rec), str(out), "--device", "cpu"], env=cli_env(),
                          capture_output=True, text=True, timeout=300)


def _drop_tensor(src: Path, dst: Path, *, drop: str | None = None, reshape: str | None = None) -> Path:
    from safetensors.torch import load_file

    import shutil

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    if drop:
        del tensors[drop]
    if reshape:
        tensors[reshape] = tensors[reshape][:-1].clone()
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("flaw", ["missing", "shape"])
def test_bad_specialist_fails_in_one_line_and_writes_nothing(flaw, zoo, tmp_path):
    name = "model.layers.2.mlp.up_proj.weight"
    bad = _drop_tensor(zoo["code"], tmp_path / "bad", **({"drop": name} if flaw == "missing" else {"reshape": name}))
    out = tmp_path / "out" / "merged"
    result = _cli_merge({**zoo, "code": bad}, tmp_path, out)
    assert result.returncode == 2, result.stdout + result.stderr
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and name in message and not result.stdout, message
    assert not (tmp_path / "out").exists()


def test_failure_mid_merge_leaves_nothing_behind(zoo, tmp_path, monkeypatch):
    """A tensor that cannot be read halfway through: no output directory, no staging directory."""
    calls = []
    real = stream._RowReader.read

    def read(self, ckpt, name, *args, **kw):
        calls.append(name)
        if len(calls) == 40:
            raise AutomergeError(f"disk error reading {name}")
        return real(self, ckpt, name, *args, **kw)

    monkeypatch.setattr(stream._RowReader, "read", read)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(AutomergeError, match="disk error"):
        stream.merge_to_dir(recipe_for(zoo, "ties"), out, device="cpu")
    assert len(calls) == 40
    assert list(tmp_path.iterdir()) == [out] and not any(out.iterdir())


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_nan_in_a_specialist_is_named_and_nothing_is_written(method, zoo, tmp_path):
    from safetensors.torch import load_file

    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(zoo["lang"], bad)
    tensors = load_file(str(bad / "model.safetensors"))
    name = "model.layers.3.self_attn.o_proj.weight"
    tensors[name][1, 2] = float("nan")
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    rec = recipe_for({**zoo, "lang": bad}, method)
    with pytest.raises(AutomergeError, match=f"tensor '{name}' in .* holds 1 NaN/Inf"):
        stream.merge_to_dir(rec, tmp_path / "out" / "m", device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


def test_overwrite_replaces_and_a_non_empty_target_is_refused(zoo, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "old.txt").write_text("x")
    rec = recipe_for(zoo, "linear")
    with pytest.raises(AutomergeError, match="not empty"):
        stream.merge_to_dir(rec, out, device="cpu")
    stream.merge_to_dir(rec, out, device="cpu", overwrite=True, files={"README.md": "card"})
    assert not (out / "old.txt").exists() and (out / "README.md").read_text() == "card"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


# -- files.staged_dir ----------------------------------------------------------------------------------


def test_staged_dir_renames_on_success_and_removes_everything_on_failure(tmp_path):
    target = tmp_path / "a" / "b" / "out"
    with pytest.raises(RuntimeError):
        with staged_dir(target) as tmp:
            (tmp / "f").write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # the parents it made are gone too
    with staged_dir(target) as tmp:
        (tmp / "f").write_text("done")
    assert (target / "f").read_text() == "done"
    assert [p.name for p in target.parent.iterdir()] == ["out"]


def test_staged_dir_never_replaces_a_filled_directory_unless_asked(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(AutomergeError, match="filled by someone else"):
        with staged_dir(target) as tmp:
            (tmp / "new").write_text("new")
            target.mkdir()
            (target / "theirs").write_text("theirs")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (target / "theirs").is_file()
    with staged_dir(target, replace=True) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
