from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from tiny_models import read_tensors, save_tiny_model, write_tensors

import automerge
from automerge.checkpoints import Checkpoint, check_compatible, resolve_model_path, save_checkpoint
from automerge.errors import CheckpointError, IncompatibleModelsError


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Read-only models shared by the tests; tests that damage one copy it first."""
    root = tmp_path_factory.mktemp("ckpt")
    base = save_tiny_model(root / "base", seed=0)
    return {
        "root": root,
        "base": base,
        "spec": save_tiny_model(root / "spec", base=base, seed=1),
        "sharded": save_tiny_model(root / "sharded", seed=0, shard_bytes=20_000),
        "tied": save_tiny_model(root / "tied", seed=0, tie_embeddings=True),
        "gpt2": save_tiny_model(root / "gpt2", arch="gpt2", seed=0, tie_embeddings=True),
        "mistral": save_tiny_model(root / "mistral", arch="mistral", seed=0),
        "vocab400": save_tiny_model(root / "vocab400", seed=0, vocab_size=400),
        "deep": save_tiny_model(root / "deep", seed=0, num_layers=6),
        "wide": save_tiny_model(root / "wide", seed=0, hidden=48),
    }


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def entries(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


# --- resolve_model_path ------------------------------------------------------------------------


def test_resolve_zoo_name(tmp_path, monkeypatch):
    pkg = tmp_path / "automerge"
    (pkg / "zoo" / "models" / "code").mkdir(parents=True)
    monkeypatch.setattr(automerge, "__file__", str(pkg / "__init__.py"))
    assert resolve_model_path("zoo:code") == pkg / "zoo" / "models" / "code"
    with pytest.raises(CheckpointError, match=r"zoo:nope.*zoo:base, zoo:code"):
        resolve_model_path("zoo:nope")
    with pytest.raises(CheckpointError, match="zoo:lang.*not built"):
        resolve_model_path("zoo:lang")


def test_resolve_plain_path(tmp_path):
    assert resolve_model_path(tmp_path) == tmp_path
    with pytest.raises(CheckpointError, match="missing-model.*does not exist"):
        resolve_model_path(tmp_path / "missing-model")


# --- Checkpoint.open ----------------------------------------------------------------------------


def test_open_reads_config_and_tensor_table(zoo):
    ckpt = Checkpoint.open(zoo["base"])
    tensors = read_tensors(zoo["base"])
    assert ckpt.architecture == "LlamaForCausalLM" and ckpt.num_layers == 4
    assert not ckpt.tied_embeddings
    assert sorted(ckpt.names) == sorted(tensors)
    for name, t in tensors.items():
        assert ckpt.shape(name) == tuple(t.shape) and ckpt.dtype(name) == t.dtype
        assert torch.equal(ckpt.read(name), t)
    assert ckpt.read("model.norm.weight", dtype=torch.float16).dtype == torch.float16
    with pytest.raises(CheckpointError, match="no tensor 'nope'"):
        ckpt.read("nope")


def test_open_sharded_equals_single(zoo):
    single, sharded = Checkpoint.open(zoo["base"]), Checkpoint.open(zoo["sharded"])
    assert len({sharded.file_of(n) for n in sharded.names}) > 1
    assert sorted(single.names) == sorted(sharded.names)
    for name in single.names:
        assert torch.equal(single.read(name), sharded.read(name))


@pytest.mark.parametrize("key", ["tied", "gpt2"])
def test_tied_embeddings(zoo, key):
    ckpt = Checkpoint.open(zoo[key])
    assert ckpt.tied_embeddings and "lm_head.weight" not in ckpt.names
    assert not Checkpoint.open(zoo["base"]).tied_embeddings


def test_tied_is_the_default_when_config_is_silent(zoo, tmp_path):
    d = copy(zoo["gpt2"], tmp_path / "old_gpt2")  # old GPT-2 configs omit tie_word_embeddings
    config = json.loads((d / "config.json").read_text())
    del config["tie_word_embeddings"]
    (d / "config.json").write_text(json.dumps(config))
    assert Checkpoint.open(d).tied_embeddings


def test_open_rejects_non_directory_and_missing_pieces(zoo, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Checkpoint.open(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="not a directory"):
        Checkpoint.open(zoo["base"] / "config.json")

    no_config = copy(zoo["base"], tmp_path / "no_config")
    (no_config / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"no_config has no config\.json"):
        Checkpoint.open(no_config)

    bad_config = copy(zoo["base"], tmp_path / "bad_config")
    (bad_config / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"bad_config/config\.json"):
        Checkpoint.open(bad_config)

    no_weights = copy(zoo["base"], tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no_weights has no weights"):
        Checkpoint.open(no_weights)


def test_config_without_layer_count_is_named(zoo, tmp_path):
    d = copy(zoo["base"], tmp_path / "nolayers")
    config = json.loads((d / "config.json").read_text())
    del config["num_hidden_layers"]
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"nolayers/config\.json.*num_hidden_layers"):
        Checkpoint.open(d)


def test_lora_adapter_dir_gets_a_hint(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no weights.*adapter.*merge it into its base"):
        Checkpoint.open(tmp_path)


def test_missing_shard_is_named(zoo, tmp_path):
    d = copy(zoo["sharded"], tmp_path / "m")
    shard = sorted(d.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"shard .*{shard.name} .*missing"):
        Checkpoint.open(d)


def test_index_naming_tensor_not_in_its_shard(zoo, tmp_path):
    d = copy(zoo["sharded"], tmp_path / "m")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    moved = next(n for n, f in index["weight_map"].items() if f != first)
    index["weight_map"][moved] = first
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"'{moved}'.*{first}.*does not contain it"):
        Checkpoint.open(d)


def _corrupt_header(file: Path, how: str) -> None:
    data = file.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    if how == "garbage":
        data = data[:8] + b"\xff" * n + data[8 + n:]
    elif how == "huge_length":
        data = struct.pack("<Q", 2**40) + data[8:]
    elif how == "truncated":
        data = data[: 8 + n + 100]
    elif how == "tiny":
        data = data[:5]
    file.write_bytes(data)


@pytest.mark.parametrize("how", ["garbage", "huge_length", "truncated", "tiny"])
def test_corrupt_header_names_the_file(zoo, tmp_path, how):
    d = copy(zoo["sharded"], tmp_path / "m")
    shard = sorted(d.glob("model-*.safetensors"))[-1]
    _corrupt_header(shard, how)
    with pytest.raises(CheckpointError, match=f"corrupt safetensors file .*{shard.name}"):
        Checkpoint.open(d)


def test_nan_is_found_on_read_not_on_open(zoo, tmp_path):
    d = copy(zoo["base"], tmp_path / "nan")
    tensors = read_tensors(d)
    tensors["model.layers.2.mlp.up_proj.weight"][0, 0] = float("nan")
    tensors["model.norm.weight"][1] = float("inf")
    write_tensors(tensors, d)
    ckpt = Checkpoint.open(d)  # headers only: the bad data is not seen yet
    ckpt.read("model.layers.2.mlp.down_proj.weight")
    where = r"'model\.layers\.2\.mlp\.up_proj\.weight' in .*nan/model\.safetensors.*NaN/Inf"
    with pytest.raises(CheckpointError, match=where):
        ckpt.read("model.layers.2.mlp.up_proj.weight")
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight.*NaN/Inf"):
        ckpt.read("model.norm.weight", dtype=torch.float32)


def test_overflow_on_cast_is_reported(zoo, tmp_path):
    d = copy(zoo["base"], tmp_path / "big")
    tensors = read_tensors(d)
    tensors["model.norm.weight"][0] = 1e6  # finite in fp32, inf in fp16
    write_tensors(tensors, d)
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight.*overflows.*float16"):
        Checkpoint.open(d).read("model.norm.weight", dtype=torch.float16)


# --- check_compatible ---------------------------------------------------------------------------


def test_compatible_specialist_passes(zoo):
    check_compatible(Checkpoint.open(zoo["base"]), [Checkpoint.open(zoo["spec"]), Checkpoint.open(zoo["sharded"])])


def test_different_architecture(zoo):
    with pytest.raises(IncompatibleModelsError, match=r"LlamaForCausalLM.*mistral/config\.json.*MistralForCausalLM"):
        check_compatible(Checkpoint.open(zoo["base"]), [Checkpoint.open(zoo["mistral"])])


def test_different_layer_count(zoo):
    with pytest.raises(IncompatibleModelsError, match="layer counts differ.*4.*6"):
        check_compatible(Checkpoint.open(zoo["base"]), [Checkpoint.open(zoo["deep"])])


def test_different_vocab_size_names_files_and_fix(zoo):
    with pytest.raises(IncompatibleModelsError) as err:
        check_compatible(Checkpoint.open(zoo["base"]), [Checkpoint.open(zoo["vocab400"])])
    msg = str(err.value)
    assert "base/config.json has 320" in msg and "vocab400/config.json has 400" in msg
    assert "resize/align the tokenizer" in msg and "fine-tuned from this base" in msg


def test_different_tokenizer_same_size_names_files(zoo, tmp_path):
    d = copy(zoo["spec"], tmp_path / "retok")
    tok = json.loads((d / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # same size, different ids
    (d / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(IncompatibleModelsError) as err:
        check_compatible(Checkpoint.open(zoo["base"]), [Checkpoint.open(d)])
    msg = str(err.value)
    assert "base/tokenizer.json" in msg and "retok/tokenizer.json" in msg and "resize/align" in msg


def test_reformatted_tokenizer_is_still_the_same(zoo, tmp_path):
    d = copy(zoo["spec"], tmp_path / "reformatted")
    tok = json.loads((d / "tokenizer.json").read_text())
    tok["model"]["merges"] = [m.split(" ") if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    (d / "tokenizer.json").write_text(json.dumps(tok, indent=4))
    check_compatible(Checkpoint.open(zoo["base"]), [Checkpoint.open(d)])


def test_specialist_without_tokenizer_files_is_not_checked(zoo, tmp_path):
    d = copy(zoo["spec"], tmp_path / "notok")
    for f in d.glob("tokenizer*"):
        f.unlink()
    check_compatible(Checkpoint.open(zoo["base"]), [Checkpoint.open(d)])


def test_missing_and_extra_tensors(zoo, tmp_path):
    d = copy(zoo["spec"], tmp_path / "missing")
    tensors = read_tensors(d)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.1.mlp.extra.weight"] = torch.zeros(2)
    write_tensors(tensors, d)
    with pytest.raises(IncompatibleModelsError,
                       match=r"lacks 1 tensor.*layers\.1\.mlp\.up_proj.*has 1 tensor.*layers\.1\.mlp\.extra"):
        check_compatible(Checkpoint.open(zoo["base"]), [Checkpoint.open(d)])


def test_tied_vs_untied_is_explained(zoo):
    with pytest.raises(IncompatibleModelsError, match=r"lm_head\.weight.*ties lm_head"):
        check_compatible(Checkpoint.open(zoo["base"]), [Checkpoint.open(zoo["tied"])])


def test_mismatched_shape_names_tensor_and_both_files(zoo, tmp_path):
    d = copy(zoo["spec"], tmp_path / "shape")
    tensors = read_tensors(d)
    tensors["model.layers.0.mlp.up_proj.weight"] = torch.zeros(65, 32)
    write_tensors(tensors, d)
    where = (r"'model\.layers\.0\.mlp\.up_proj\.weight'.*\[64, 32\].*base/model\.safetensors"
             r".*\[65, 32\].*shape/model\.safetensors")
    with pytest.raises(IncompatibleModelsError, match=where):
        check_compatible(Checkpoint.open(zoo["base"]), [Checkpoint.open(d)])
    with pytest.raises(IncompatibleModelsError, match="shape"):  # hidden size differs everywhere
        check_compatible(Checkpoint.open(zoo["base"]), [Checkpoint.open(zoo["wide"])])


def test_integer_weights_cannot_be_merged(zoo, tmp_path):
    d = copy(zoo["spec"], tmp_path / "int")
    tensors = read_tensors(d)
    tensors["model.norm.weight"] = torch.ones(32, dtype=torch.int8)
    write_tensors(tensors, d)
    with pytest.raises(IncompatibleModelsError, match=r"model\.norm\.weight.*int8"):
        check_compatible(Checkpoint.open(zoo["base"]), [Checkpoint.open(d)])


# --- save_checkpoint ----------------------------------------------------------------------------


def test_save_sharded_round_trip_loads_in_transformers(zoo, tmp_path):
    from transformers import AutoModelForCausalLM

    src = Checkpoint.open(zoo["base"])
    tensors = {n: src.read(n) for n in src.names}
    out = save_checkpoint(tensors.items(), tmp_path / "out", source=src, max_shard_bytes=30_000,
                          metadata={"recipe": "ties"})
    assert entries(tmp_path) == ["out"]  # no temp dirs left beside it
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file()
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / f).is_file()

    saved = Checkpoint.open(out)
    assert sorted(saved.names) == sorted(tensors)
    files = [saved.file_of(n).name for n in tensors]
    assert files == sorted(files)  # shards are filled in the order the tensors came
    assert all(torch.equal(saved.read(n), t) for n, t in tensors.items())
    from safetensors import safe_open
    with safe_open(str(shards[0]), framework="pt") as f:
        assert f.metadata()["recipe"] == "ties"

    model = AutoModelForCausalLM.from_pretrained(out)
    state = model.state_dict()
    assert all(torch.equal(state[n], t) for n, t in tensors.items())


def test_save_single_file_with_dtype(zoo, tmp_path):
    from transformers import AutoModelForCausalLM

    src = Checkpoint.open(zoo["tied"])
    out = save_checkpoint(((n, src.read(n)) for n in src.names), tmp_path / "a" / "b" / "out",
                          source=src, dtype=torch.float16)
    assert (out / "model.safetensors").is_file() and not (out / "model.safetensors.index.json").exists()
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    saved = Checkpoint.open(out)
    assert saved.tied_embeddings and all(saved.dtype(n) == torch.float16 for n in saved.names)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.float16
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert torch.equal(model.model.embed_tokens.weight, src.read("model.embed_tokens.weight").half())


def test_save_accepts_views_of_live_model_memory(zoo, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(zoo["tied"])
    src = Checkpoint.open(zoo["tied"])
    state = model.state_dict()  # shares storage with the live model (and lm_head with embed)
    out = save_checkpoint(((n, state[n]) for n in src.names), tmp_path / "out", source=src)
    assert torch.equal(Checkpoint.open(out).read("model.norm.weight"), model.model.norm.weight)


def test_save_refuses_non_empty_dir_unless_overwrite(zoo, tmp_path):
    src = Checkpoint.open(zoo["base"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="out exists and is not empty.*overwrite"):
        save_checkpoint(((n, src.read(n)) for n in src.names), out, source=src)
    assert entries(out) == ["keep.txt"] and entries(tmp_path) == ["out"]

    save_checkpoint(((n, src.read(n)) for n in src.names), out, source=src, overwrite=True)
    assert "keep.txt" not in entries(out) and entries(tmp_path) == ["out"]
    with pytest.raises(CheckpointError, match="source model"):
        save_checkpoint(((n, src.read(n)) for n in src.names), zoo["base"], source=src, overwrite=True)


def test_save_into_existing_empty_dir(zoo, tmp_path):
    src = Checkpoint.open(zoo["base"])
    (tmp_path / "out").mkdir()
    save_checkpoint(((n, src.read(n)) for n in src.names), tmp_path / "out", source=src)
    assert (tmp_path / "out" / "model.safetensors").is_file()


def _failing(src: Checkpoint, after: int):
    for i, n in enumerate(src.names):
        if i == after:
            raise RuntimeError("merge blew up")
        yield n, src.read(n)


@pytest.mark.parametrize("overwrite", [False, True])
def test_failure_leaves_nothing_behind(zoo, tmp_path, overwrite):
    src = Checkpoint.open(zoo["base"])
    if overwrite:
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="blew up"):
        save_checkpoint(_failing(src, after=20), tmp_path / "nested" / "out" if not overwrite else tmp_path / "out",
                        source=src, max_shard_bytes=10_000, overwrite=overwrite)
    if overwrite:  # the old output is untouched
        assert entries(tmp_path) == ["out"] and entries(tmp_path / "out") == ["old.txt"]
    else:  # even the parent dirs it created are gone
        assert entries(tmp_path) == []


def test_wrong_tensor_set_is_refused_and_nothing_written(zoo, tmp_path):
    src = Checkpoint.open(zoo["base"])
    with pytest.raises(CheckpointError, match=r"no tensor for .*model\.norm\.weight"):
        save_checkpoint(((n, src.read(n)) for n in src.names if n != "model.norm.weight"), tmp_path / "o", source=src)
    with pytest.raises(CheckpointError, match=r"'bogus\.weight'"):
        save_checkpoint([("bogus.weight", torch.zeros(1))], tmp_path / "o", source=src)
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight.*shape \[3\]"):
        save_checkpoint([("model.norm.weight", torch.zeros(3))], tmp_path / "o", source=src)
    assert entries(tmp_path) == []


def test_write_tensors_helper_round_trips(tmp_path):
    # tiny_models' writer is used above to plant bad data; make sure it is itself faithful
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.float16)}
    write_tensors(tensors, tmp_path, shard_bytes=20)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    back = read_tensors(tmp_path)
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
