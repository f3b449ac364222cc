"""The zoo's LoRA specialists: PEFT adapters on the shipped base, trained on the code and language
mixtures of the full specialists (``models/code-lora``, ``models/lang-lora``; use as zoo:code-lora).

They are built by ``zoo build`` after the full models, from the saved (fp16-rounded) base, so their
task vectors scale·B·A are relative to the shipped base exactly as the full specialists' are. The
adapters are plain PEFT directories (adapter_config.json + adapter_model.safetensors) that
automerge reads as specialists (automerge.specialists) and PEFT loads onto zoo:base.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from automerge.names import ZOO_ADAPTERS
from automerge.zoo.train import Stage

LORA_NAMES = ZOO_ADAPTERS
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraPlan:
    r: int
    alpha: int
    stages: tuple[Stage, ...]


def lora_plan(size: str, *, code_mix: Mapping[str, float], lang_mix: Mapping[str, float]) -> LoraPlan:
    """Rank, scale and training of each adapter (a quarter of a full specialist's tokens on the full zoo)."""
    if size == "full":
        tokens, lr, bs, warmup, r = 125_000, 1e-2, 16, 10, 8
    else:
        tokens, lr, bs, warmup, r = 8192, 2e-2, 8, 2, 4
    return LoraPlan(r=r, alpha=2 * r, stages=(Stage("code-lora", dict(code_mix), tokens, lr, bs, warmup),
                                              Stage("lang-lora", dict(lang_mix), tokens, lr, bs, warmup)))


def build_adapters(models_dir: Path, streams: Mapping, lp: LoraPlan, *, seed: int,
                   log: Callable[[str], None] = lambda msg: None) -> dict:
    """Train every adapter of ``lp`` on ``models_dir/base`` and save it beside it; returns the zoo.json entry."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    from automerge.zoo.train import train_stage

    out = {}
    for k, st in enumerate(lp.stages):
        torch.manual_seed(seed * 1000 + 100 + k)
        model = AutoModelForCausalLM.from_pretrained(str(models_dir / "base"), dtype=torch.float32)
        config = peft.LoraConfig(task_type="CAUSAL_LM", r=lp.r, lora_alpha=lp.alpha, lora_dropout=0.0,
                                 target_modules=list(TARGETS))
        model = peft.get_peft_model(model, config)
        res = train_stage(model, streams, st, seed=seed * 1000 + 100 + k)
        log(f"{st.name}: {res['steps']} steps, {res['tokens']:,} tokens, train loss {res['final_loss']:.3f}, "
            f"{res['seconds']:.0f} s")
        path = models_dir / st.name
        model.save_pretrained(str(path))
        _make_reproducible(path)
        out[st.name] = {**st.to_json(), "steps": res["steps"], "tokens_trained": res["tokens"],
                        "r": lp.r, "lora_alpha": lp.alpha, "target_modules": list(TARGETS),
                        "init": "base (fp16 weights as shipped)"}
    return {"plan": {"r": lp.r, "alpha": lp.alpha}, "adapters": out} if out else {}


def _make_reproducible(path: Path) -> None:
    """Drop what names the build's temp dir (PEFT records the base's path): same seed, same bytes."""
    (path / "README.md").unlink(missing_ok=True)
    cfg_file = path / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    cfg["base_model_name_or_path"] = None  # the base is zoo:base (models/base beside this adapter)
    cfg["target_modules"] = sorted(cfg["target_modules"])  # PEFT writes a set: hash order varies by run
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


__all__ = ["LORA_NAMES", "LoraPlan", "lora_plan", "build_adapters"]
