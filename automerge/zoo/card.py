"""The zoo card: held-out loss per domain for every zoo model and a few simple merges.

``python -m automerge.zoo.card [--zoo DIR] [--threads N] [--write-readme]`` measures the shipped files
(or a built zoo directory) and prints a Markdown table; ``--write-readme`` also replaces the card
block of ``automerge/zoo/README.md`` and writes ``DIR/data/card.json``.

Scoring (nats per token, token-weighted over a domain):

* text domains (code, prose, docstrings, tests, external code/prose, and the quality holdout
  ``hold-code``/``hold-prose``: the external records for which ``automerge.eval.is_quality_holdout``
  holds, which no proxy and no full evaluation reads): each record is ``<|endoftext|>``
  + its tokens, cut to the first ``max_doc_tokens`` predicted tokens, scored in windows of the model's
  context length;
* pair domains (generation, summarisation): ``<|endoftext|>`` + prompt + target, loss on the target
  tokens only (the prompt is cut from the left to fit the context).

Merges are computed here with plain torch in fp32 (the engine does the real thing):
task arithmetic ``base + sum_i lam_i (theta_i - base)``; linear 0.5/0.5 is lam = (0.5, 0.5); TIES
(``automerge.methods.ties``: trim each task vector to its top ``density`` by magnitude, elect the sign,
disjoint mean) with weights 1 and lam 1.

:func:`targets` states the zoo's acceptance targets (issue 9) as figures computed from the card rows on
the quality holdout; the card prints each with its threshold and met/missed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from automerge.eval import is_quality_holdout
from automerge.jsonl import read_jsonl

TEXT_DOMAINS = {"code": "heldout/code.jsonl", "prose": "heldout/prose.jsonl",
                "docstrings": "heldout/docstrings.jsonl", "tests": "heldout/tests.jsonl",
                "ext-code": "external/code.jsonl", "ext-prose": "external/prose.jsonl",
                "hold-code": "external/code.jsonl", "hold-prose": "external/prose.jsonl"}
QUALITY_HOLDOUT = {"hold-code", "hold-prose"}  # only the records is_quality_holdout(source) keeps
PAIR_DOMAINS = {"generation": "heldout/generation.jsonl", "summarisation": "heldout/summarisation.jsonl"}
DOMAIN_ORDER = ("code", "prose", "docstrings", "generation", "summarisation", "tests", "ext-code", "ext-prose",
                "hold-code", "hold-prose")
OWN_DOMAIN = {"code": ("code", "ext-code"), "lang": ("prose", "ext-prose"), "tests": ("tests",)}
TA_GRID = (0.5, 1.0)
TIES_DENSITY = 0.5
CARD_START, CARD_END = "<!-- zoo-card:start -->", "<!-- zoo-card:end -->"


def load_model(path: Path):
    from transformers import LlamaForCausalLM

    m = LlamaForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    m.eval()
    return m


def domain_stream(tok, texts: Sequence[str], eot: int, max_tokens: int) -> torch.Tensor:
    """Documents joined by ``<|endoftext|>`` (leading one too), cut to ``max_tokens``+1."""
    ids = [eot]
    for t in texts:
        ids.extend(tok(t, add_special_tokens=False, verbose=False)["input_ids"])
        ids.append(eot)
        if len(ids) > max_tokens + 1:
            break
    return torch.tensor(ids[: max_tokens + 1], dtype=torch.long)


def encode_domain(tok, records: list[dict], *, eot: int, seq_len: int, max_doc_tokens: int, pairs: bool):
    """Fixed windows: list of (input ids, target ids with -100 where unscored)."""
    rows: list[tuple[list[int], list[int]]] = []
    for r in records:
        if pairs:
            p = tok(r["prompt"], add_special_tokens=False, verbose=False)["input_ids"]
            full = tok(r["prompt"] + r["target"], add_special_tokens=False, verbose=False)["input_ids"]
            if full[: len(p)] != p:
                full = p + tok(r["target"], add_special_tokens=False, verbose=False)["input_ids"]
            ids = [eot] + full
            n_t = len(full) - len(p)
            ids = ids[-(seq_len + 1):]
            n_t = min(n_t, len(ids) - 1)
            tgt = [-100] * (len(ids) - 1 - n_t) + ids[len(ids) - n_t:]
            rows.append((ids[:-1], tgt))
        else:
            ids = [eot] + tok(r["text"], add_special_tokens=False, verbose=False)["input_ids"]
            ids = ids[: max_doc_tokens + 1]
            for s in range(0, len(ids) - 1, seq_len):
                chunk = ids[s: s + seq_len + 1]
                rows.append((chunk[:-1], chunk[1:]))
    return rows


@torch.no_grad()
def rows_loss(model, rows, *, pad_id: int, batch_size: int = 16) -> float:
    total, count = 0.0, 0
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))  # similar lengths together
    for b in range(0, len(order), batch_size):
        idx = order[b: b + batch_size]
        L = max(len(rows[i][0]) for i in idx)
        x = torch.full((len(idx), L), pad_id, dtype=torch.long)
        y = torch.full((len(idx), L), -100, dtype=torch.long)
        for j, i in enumerate(idx):
            inp, tgt = rows[i]
            x[j, : len(inp)] = torch.tensor(inp)
            y[j, : len(tgt)] = torch.tensor(tgt)
        logits = model(input_ids=x).logits
        total += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=-100,
                                       reduction="sum"))
        count += int((y != -100).sum())
    return total / max(1, count)


def load_states(models_dir: Path, names: Sequence[str]) -> dict[str, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return {n: {k: v.float() for k, v in load_file(str(models_dir / n / "model.safetensors")).items()}
            for n in names}


def task_arithmetic(base: Mapping[str, torch.Tensor], others: Sequence[Mapping[str, torch.Tensor]],
                    lams: Sequence[float]) -> dict[str, torch.Tensor]:
    out = {}
    for k, b in base.items():
        out[k] = b + sum(lam * (o[k] - b) for lam, o in zip(lams, others))
    return out


def ties_merge(base: Mapping[str, torch.Tensor], others: Sequence[Mapping[str, torch.Tensor]], *,
               density: float, lam: float = 1.0) -> dict[str, torch.Tensor]:
    """TIES over every tensor with weight 1 per specialist (the engine's pure function, fp32)."""
    from automerge.methods import ties

    k = len(others)
    return {n: ties(b, torch.stack([o[n] - b for o in others]), weights=[1.0] * k, densities=[density] * k, lam=lam)
            for n, b in base.items()}


def merge_list() -> list[tuple[str, tuple[str, ...], tuple[float, ...], float | None]]:
    """(label, specialists, lambdas, TIES density or None for task arithmetic) of the card's merges."""
    out: list[tuple[str, tuple[str, ...], tuple[float, ...], float | None]] = [
        ("linear code+lang 0.5/0.5", ("code", "lang"), (0.5, 0.5), None)]
    for lc in TA_GRID:
        for ll in TA_GRID:
            if (lc, ll) != (0.5, 0.5):
                out.append((f"TA code {lc} + lang {ll}", ("code", "lang"), (lc, ll), None))
    out.append((f"TIES code+lang density {TIES_DENSITY}", ("code", "lang"), (1.0, 1.0), TIES_DENSITY))
    return out


def measure(zoo: Path, *, max_doc_tokens: int = 768, progress: bool = True, reuse: Mapping | None = None) -> dict:
    """Losses of every zoo model and the card's merges on every domain: {"rows": {label: {domain: loss}}}."""
    from transformers import PreTrainedTokenizerFast

    models_dir, data_dir = zoo / "models", zoo / "data"
    tok = PreTrainedTokenizerFast.from_pretrained(str(models_dir / "base"))
    model = load_model(models_dir / "base")
    seq_len = model.config.max_position_embeddings
    eot, pad = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|pad|>")
    domains = {}
    for d in DOMAIN_ORDER:
        rel = TEXT_DOMAINS.get(d) or PAIR_DOMAINS[d]
        recs = read_jsonl(data_dir / rel)
        if d in QUALITY_HOLDOUT:
            recs = [r for r in recs if is_quality_holdout(r["source"])]
        domains[d] = encode_domain(tok, recs, eot=eot, seq_len=seq_len, max_doc_tokens=max_doc_tokens,
                                   pairs=d in PAIR_DOMAINS)
    states = load_states(models_dir, ("base", "code", "lang", "tests", "mix"))
    entries: list[tuple[str, dict]] = [(n, states[n]) for n in ("base", "code", "lang", "tests", "mix")]
    for label, names, lams, density in merge_list():
        others = [states[n] for n in names]
        if density is None:
            entries.append((label, task_arithmetic(states["base"], others, lams)))
        else:
            entries.append((label, ties_merge(states["base"], others, density=density, lam=lams[0])))
    rows: dict[str, dict[str, float]] = {}
    t0 = time.perf_counter()
    for i, (label, sd) in enumerate(entries):
        if reuse and label in reuse:  # rows measured earlier with the same settings
            rows[label] = dict(reuse[label])
            continue
        model.load_state_dict(sd, strict=False)
        rows[label] = {d: round(rows_loss(model, domains[d], pad_id=pad), 4) for d in DOMAIN_ORDER}
        if progress:
            print(f"[{i + 1}/{len(entries)}] {label}: {rows[label]}  ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr)
    return {"rows": rows, "tokens": {d: sum(sum(1 for t in r[1] if t != -100) for r in domains[d])
                                     for d in DOMAIN_ORDER}, "max_doc_tokens": max_doc_tokens}


def checks(rows: Mapping[str, Mapping[str, float]], margin: float = 0.3, front_eps: float = 0.05) -> dict:
    """The issue's acceptance checks, computed from the card rows."""
    out: dict = {"margins": {}, "wins": {}, "front": {}}
    for spec, doms in OWN_DOMAIN.items():
        for d in doms:
            others = {o: rows[o][d] for o in ("base", "code", "lang", "tests") if o != spec}
            out["margins"][f"{spec}@{d}"] = {o: round(v - rows[spec][d], 4) for o, v in others.items()}
            out["wins"][f"{spec}@{d}"] = all(v > rows[spec][d] for v in others.values())
    out["specialist_margin_ok"] = all(
        min(v for o, v in out["margins"][f"{s}@{OWN_DOMAIN[s][0]}"].items() if o != "base") >= margin
        for s in OWN_DOMAIN)
    out["external_wins_ok"] = out["wins"]["code@ext-code"] and out["wins"]["lang@ext-prose"]
    near = []
    for label, r in rows.items():
        if label in ("base", "code", "lang", "tests", "mix") or "lang" not in label or "code" not in label:
            continue
        gc, gp = r["code"] - rows["code"]["code"], r["prose"] - rows["lang"]["prose"]
        out["front"][label] = {"gap_code": round(gc, 4), "gap_prose": round(gp, 4)}
        if gc <= front_eps and gp <= front_eps:
            near.append(label)
    out["merges_within_eps_of_both"] = near
    out["front_ok"] = not near
    return out


HOLD = {"code": "hold-code", "lang": "hold-prose"}  # each specialist's own quality-holdout domain
TARGET_MERGES = ("linear code+lang 0.5/0.5", "TA code 1.0 + lang 1.0", f"TIES code+lang density {TIES_DENSITY}")
SPECIALIST_OVER_BASE, SPECIALIST_OVER_OTHER, MERGE_TRAILS = 0.25, 0.3, 0.1


def targets(rows: Mapping[str, Mapping[str, float]]) -> list[dict]:
    """The zoo's acceptance targets on the quality holdout (issue 9), each as a figure in nats/token.

    Every figure is "the loser's loss minus the winner's", so higher is better and a target is met when
    ``figure >= threshold`` (forgetting: ``> 0``, stated as threshold 0 with ``strict``).
    """
    out: list[dict] = []

    def add(target: str, figure: float, threshold: float, strict: bool = False) -> None:
        figure = round(figure, 4)
        out.append({"target": target, "figure": figure, "threshold": threshold, "strict": strict,
                    "met": figure > threshold if strict else figure >= threshold})

    other = {"code": "lang", "lang": "code"}
    for s, d in HOLD.items():
        add(f"{s} beats base on {d}", rows["base"][d] - rows[s][d], SPECIALIST_OVER_BASE)
    for s, d in HOLD.items():
        add(f"{s} beats {other[s]} on {d}", rows[other[s]][d] - rows[s][d], SPECIALIST_OVER_OTHER)
    for s, d in HOLD.items():
        od = HOLD[other[s]]
        add(f"{s} worse than base on {od} (forgetting)", rows[s][od] - rows["base"][od], 0.0, strict=True)
    for m in TARGET_MERGES:
        for s, d in HOLD.items():
            add(f"{m} trails {s} on {d}", rows[m][d] - rows[s][d], MERGE_TRAILS)
    return out


def render_targets(tgts: Sequence[Mapping]) -> str:
    lines = ["| target (quality holdout) | figure (nats/token) | needed | |", "|---|---:|---:|---|"]
    for t in tgts:
        need = f"> {t['threshold']:g}" if t["strict"] else f">= {t['threshold']:g}"
        lines.append(f"| {t['target']} | {t['figure']:+.3f} | {need} | {'met' if t['met'] else 'MISSED'} |")
    met = sum(t["met"] for t in tgts)
    lines.append("")
    lines.append(f"{met} of {len(tgts)} targets met.")
    return "\n".join(lines) + "\n"


def render(result: dict) -> str:
    rows = result["rows"]
    head = "| model | " + " | ".join(DOMAIN_ORDER) + " |"
    sep = "|---|" + "---:|" * len(DOMAIN_ORDER)
    lines = [head, sep]
    best = {d: min(r[d] for r in rows.values()) for d in DOMAIN_ORDER}
    for label, r in rows.items():
        cells = [(f"**{r[d]:.3f}**" if r[d] == best[d] else f"{r[d]:.3f}") for d in DOMAIN_ORDER]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    toks = result["tokens"]
    lines.append("")
    lines.append("Scored tokens per domain: " + ", ".join(f"{d} {toks[d]:,}" for d in DOMAIN_ORDER)
                 + f" (each record cut to its first {result['max_doc_tokens']} tokens; pairs: target tokens only).")
    ck = result.get("checks")
    if ck:
        lines.append("")
        lines.append("Margins (other model's loss minus the specialist's, nats/token):")
        lines.append("")
        for key, m in ck["margins"].items():
            lines.append(f"- {key}: " + ", ".join(f"vs {o} {v:+.3f}" for o, v in m.items()))
        worst = min(ck["front"].items(), key=lambda kv: max(kv[1]["gap_code"], kv[1]["gap_prose"]))
        lines.append("")
        lines.append(f"- Specialist margin >= 0.3 over the other specialists on its own held-out domain: "
                     f"{'yes' if ck['specialist_margin_ok'] else 'NO'}; specialists win their external domain: "
                     f"{'yes' if ck['external_wins_ok'] else 'NO'}.")
        lines.append(f"- Closest code+lang merge to both specialists: {worst[0]} (code +{worst[1]['gap_code']:.3f}, "
                     f"prose +{worst[1]['gap_prose']:.3f} nats); merges within 0.05 of both: "
                     f"{', '.join(ck['merges_within_eps_of_both']) or 'none'}.")
    if result.get("targets"):
        lines.append("")
        lines.append("Targets on the quality holdout (`hold-code`, `hold-prose`):")
        lines.append("")
        lines.append(render_targets(result["targets"]).rstrip("\n"))
    return "\n".join(lines) + "\n"


def write_readme(readme: Path, table: str) -> None:
    text = readme.read_text(encoding="utf-8")
    a, b = text.index(CARD_START) + len(CARD_START), text.index(CARD_END)
    readme.write_text(text[:a] + "\n" + table + text[b:], encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoo", type=Path, default=Path(__file__).resolve().parent)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-doc-tokens", type=int, default=768)
    ap.add_argument("--write-readme", action="store_true")
    ap.add_argument("--reuse", type=Path, help="JSON {label: {domain: loss}} of rows already measured")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    reuse = json.loads(args.reuse.read_text()) if args.reuse else None
    result = measure(args.zoo, max_doc_tokens=args.max_doc_tokens, reuse=reuse)
    result["checks"] = checks(result["rows"])
    result["targets"] = targets(result["rows"])
    table = render(result)
    print(table)
    print(json.dumps(result["checks"], indent=1))
    print(f"measured in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if args.write_readme:
        (args.zoo / "data" / "card.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        write_readme(Path(__file__).resolve().parent / "README.md", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
