"""``automerge eval``: score models on the proxy or full suite; a retention table against the
specialists and the gain over the base (printed with rich, written with pandas)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated

import typer

from automerge.errors import EvalError

ZOO_SPECIALISTS = (("code", "code"), ("lang", "nl"))


def _resolve(path: str) -> Path:
    try:
        from automerge.checkpoints import resolve_model_path
    except ImportError:  # pragma: no cover - checkpoints.py is the lead's; a fallback keeps eval usable
        resolve_model_path = None
    if resolve_model_path is not None:
        return Path(resolve_model_path(path))
    if path.startswith("zoo:"):
        return Path(__file__).resolve().parent.parent / "zoo" / "models" / path[4:]
    return Path(path).expanduser()


def _label(path: str) -> str:
    return path[4:] if path.startswith("zoo:") else path


def _zoo_has(name: str) -> bool:
    try:
        return (_resolve(f"zoo:{name}") / "config.json").is_file()
    except Exception:  # noqa: BLE001 - a missing zoo is not an error here
        return False


def parse_specialist(text: str) -> tuple[str, str, str]:
    """NAME=PATH:DOMAIN -> (name, path, domain). PATH may itself be zoo:NAME."""
    if "=" not in text:
        raise EvalError(f"--specialist {text!r}: expected NAME=PATH:DOMAIN (e.g. code=zoo:code:code or "
                        f"lang=./models/lang:nl)")
    name, rest = text.split("=", 1)
    path, sep, domain = rest.rpartition(":")
    if not sep or domain not in ("nl", "code") or not path:
        raise EvalError(f"--specialist {text!r}: DOMAIN after the last ':' must be 'nl' or 'code' "
                        f"(e.g. {name or 'code'}=PATH:code)")
    if not name:
        raise EvalError(f"--specialist {text!r}: give the specialist a NAME before '='")
    return name, path, domain


def _load_against_base(path: str, base: str | None, device):
    """A LoRA adapter or a state-dict file: the base model with the specialist's weights written in."""
    import torch

    from automerge.checkpoints import Checkpoint
    from automerge.specialists import open_specialist

    if base is None:
        raise EvalError(f"model {path!r} is a LoRA adapter or a state-dict file: it is read against its base; "
                        "give --base BASE")
    model, tok = _load(base, device)
    ckpt = open_specialist(path, base=Checkpoint.open(_resolve(base)))
    live = model.state_dict()
    with torch.no_grad():
        for name in ckpt.names:
            if name not in live:
                raise EvalError(f"model {path!r}: tensor {name} has no parameter in the loaded base {base}")
            live[name].copy_(ckpt.read(name, dtype=live[name].dtype, device=live[name].device))
    return model, tok


def _load(path: str, device, base: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from automerge.specialists import needs_base

    if needs_base(path):
        return _load_against_base(path, base, device)
    p = _resolve(path)
    if not (p / "config.json").is_file():
        raise EvalError(f"model {path!r}: no config.json in {p}; give a Hugging Face model directory or zoo:NAME "
                        "(build the zoo with `automerge zoo build`)")
    dtype = torch.float32 if device.type == "cpu" else "auto"
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=dtype).to(device).eval()
        tok = AutoTokenizer.from_pretrained(str(p))
    except Exception as e:  # noqa: BLE001
        raise EvalError(f"model {path!r} ({p}) could not be loaded: {type(e).__name__}: {e}") from e
    return model, tok


def evaluate_models(
    models: list[str],
    *,
    suite: str = "proxy",
    base: str | None = None,
    specialists: list[tuple[str, str, str]] | None = None,
    tasks: list[str] | None = None,
    limit: int | None = None,
    device: str = "auto",
    batch_tokens: int | None = None,
    data_dir: Path | None = None,
    progress=None,
):
    """Run the suite on base, specialists and models; returns (long DataFrame, results by label)."""
    from ._evaluator import Evaluator
    from ._retention import retention_table

    task_list = _task_list(suite, tasks)
    dev = _device(device)
    entries, spec_domains = _entries(models, base, specialists or [])
    plan = _plan(entries)
    ev = None
    results = {}
    for label, path, reuse in plan:
        if reuse is not None:
            results[label] = results[reuse]
            continue
        if progress:
            progress(f"evaluating {label} ({path}) on {len(task_list)} task(s)")
        model, tok = _load(path, dev, base)
        if ev is None:
            ev = Evaluator(tokenizer=tok, device=dev, batch_tokens=batch_tokens, data_dir=data_dir)
        results[label] = ev.run(model, task_list, limit=limit)
        del model
    base_label = plan[0][0] if base else None
    df = retention_table(results, base=base_label, specialists=spec_domains)
    return df, results


def _task_list(suite: str, tasks: list[str] | None) -> list[str]:
    """The tasks to run: given, else the suite's; names and data files checked before any model loads."""
    from . import _data_tasks
    from ._tasks import FULL_TASKS, PROXY_TASKS

    if suite not in ("proxy", "full"):
        raise EvalError(f"--suite must be 'proxy' or 'full', not {suite!r}")
    task_list = list(tasks) if tasks else list(PROXY_TASKS) + (list(FULL_TASKS) if suite == "full" else [])
    for t in task_list:                 # a bad data file fails before any model loads
        if _data_tasks.is_data_task(t):
            _data_tasks.load(t)
    return task_list


def _device(device: str):
    import torch

    try:
        dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    except (RuntimeError, TypeError):
        raise EvalError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"--device {device!r}: CUDA is not available on this machine; use --device cpu")
    return dev


def _entries(models: list[str], base: str | None, specialists: list[tuple[str, str, str]]):
    """([(label, path, is_plain_model)] base first, then specialists, then models; {specialist: domain})."""
    entries: list[tuple[str, str, bool]] = []
    if base:
        entries.append(("base" if base == "zoo:base" else _label(base), base, False))
    spec_domains: dict[str, str] = {}
    for name, path, domain in specialists:
        entries.append((name, path, False))
        spec_domains[name] = domain
    for m in models:
        entries.append((_label(m), m, True))
    if not entries:
        raise EvalError("nothing to evaluate: give MODEL paths (or zoo:NAME), --base or --specialist")
    return entries, spec_domains


def _plan(entries: list[tuple[str, str, bool]]) -> list[tuple[str, str, str | None]]:
    """(label, path, label whose results it reuses): a model given twice is evaluated once."""
    by_path: dict[Path, str] = {}       # resolved path -> label evaluated
    labels: dict[str, Path] = {}
    plan: list[tuple[str, str, str | None]] = []
    for label, path, plain in entries:
        rp = _resolve(path).resolve()
        if label in labels and labels[label] != rp:
            raise EvalError(f"two models are labelled {label!r} ({labels[label]} and {rp}); rename a specialist")
        if label in labels:
            continue
        if rp in by_path and plain:
            continue                   # already in the table as base or specialist
        labels[label] = rp
        plan.append((label, path, by_path.get(rp)))
        by_path.setdefault(rp, label)
    return plan


def _fmt(v: float, pct: bool = False, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if pct:
        return f"{100 * v:.0f}%"
    return f"{v:+.4f}" if signed else f"{v:.4f}"


def print_table(df, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    from ._retention import domain_summary

    console = console or Console()
    models = list(dict.fromkeys(df["model"]))
    tasks = list(dict.fromkeys(df["task"]))
    t = Table(title="automerge eval — score · retention · gain over base", show_lines=False)
    t.add_column("task", style="bold")
    t.add_column("dom")
    t.add_column("metric")
    for m in models:
        role = df.loc[df["model"] == m, "role"].iloc[0]
        t.add_column(f"{m}\n({role})", justify="right")
    for task in tasks:
        sub = df[df["task"] == task]
        row = [task, sub["domain"].iloc[0], sub["metric"].iloc[0]]
        for m in models:
            r = sub[sub["model"] == m]
            if r.empty:
                row.append("")
                continue
            r = r.iloc[0]
            if r["failed"]:
                row.append("[red]failed[/red]")
                continue
            cell = _fmt(r["score"])
            extra = []
            if not math.isnan(r["retention"]):
                extra.append(_fmt(r["retention"], pct=True))
            if not math.isnan(r["gain_over_base"]) and r["role"] != "base":
                extra.append(_fmt(r["gain_over_base"], signed=True))
            row.append(cell + ("\n" + " ".join(extra) if extra else ""))
        t.add_row(*row)
    summ = domain_summary(df)
    for dom in dict.fromkeys(summ["domain"]):
        row = ["mean retention", dom, ""]
        for m in models:
            r = summ[(summ["model"] == m) & (summ["domain"] == dom)]
            row.append(_fmt(float(r["mean_retention"].iloc[0]), pct=True) if not r.empty else "")
        t.add_row(*row, style="italic")
    console.print(t)
    failed = df[df["failed"] != ""]
    for _, r in failed.iterrows():
        console.print(f"[red]{r['model']} / {r['task']}: {r['failed']}[/red]")


def register(app: typer.Typer) -> None:
    """Add the ``eval`` command to the automerge app."""

    @app.command("eval")
    def eval_cmd(
        models: Annotated[list[str] | None, typer.Argument(help="model directories or zoo:NAME to evaluate")] = None,
        suite: Annotated[str, typer.Option(help="proxy: the proxy tasks; full: + HumanEval and summarisation")] = "proxy",
        csv: Annotated[Path | None, typer.Option("--csv", help="write the long table (one row per model × task)")] = None,
        base: Annotated[str | None, typer.Option(help="the base model (default zoo:base when the zoo is built)")] = None,
        specialist: Annotated[list[str] | None, typer.Option(
            "--specialist", help="NAME=PATH:DOMAIN, repeatable; DOMAIN is nl or code "
                                 "(default code=zoo:code:code and lang=zoo:lang:nl when the zoo is built)")] = None,
        task: Annotated[list[str] | None, typer.Option(
            "--task", help="run only these tasks (repeatable; a proxy, humaneval, summarization, "
                           "lm_eval:<name-or-yaml> or data:<file>.jsonl[?domain=code])")] = None,
        limit: Annotated[int | None, typer.Option(help="first N items of each task (default: all)")] = None,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, …")] = "auto",
        batch_tokens: Annotated[int | None, typer.Option(
            help="padded tokens per forward pass (default: 2048 on CPU, 8192 on GPU)")] = None,
        list_tasks: Annotated[bool, typer.Option("--list-tasks", help="list the tasks and exit")] = False,
    ) -> None:
        """Score models on every task of a suite, with retention (score ÷ the specialist's score on
        its own domain) and the gain over the base."""
        from rich.console import Console

        from ._evaluator import available_tasks

        console = Console()
        if list_tasks:
            for name, desc in available_tasks().items():
                console.print(f"[bold]{name}[/bold]  {desc}")
            return
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            from transformers.utils import logging as hf_logging
            hf_logging.disable_progress_bar()
            hf_logging.set_verbosity_error()
        except Exception:  # noqa: BLE001
            pass
        b = base if base is not None else ("zoo:base" if _zoo_has("base") else None)
        if specialist:
            specs = [parse_specialist(s) for s in specialist]
        else:
            specs = [(n, f"zoo:{n}", d) for n, d in ZOO_SPECIALISTS if _zoo_has(n)]
        df, _ = evaluate_models(list(models or []), suite=suite, base=b, specialists=specs, tasks=task,
                                limit=limit, device=device, batch_tokens=batch_tokens,
                                progress=lambda msg: console.print(f"[dim]{msg}[/dim]"))
        print_table(df, console)
        if csv is not None:
            csv.parent.mkdir(parents=True, exist_ok=True)
            df.to_csv(csv, index=False)
            console.print(f"wrote {csv}")
