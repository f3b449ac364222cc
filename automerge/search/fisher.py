"""Fisher estimates of a search's specialists (method `fisher`): once per study, before sampling.

    paths = study_fisher(study, study_dir, device="cpu")   # {specialist: results/<study>/fisher/<name>-<key>.safetensors}

Where each estimate comes from (`Specialist.fisher` in the space):

* ``fisher: FILE.safetensors``: that file, as made by `automerge fisher`;
* ``fisher: {data: FILE.jsonl, max_tokens: N, seq_len: L}``: estimated on that text;
* nothing (or ``fisher: {max_tokens: N}``): estimated on the space's proxy items of the
  specialist's domain — the objectives' proxy tasks whose domain is the specialist's, each
  item's context and gold continuation, taken round-robin over the tasks from the *end* of the
  evaluator's item order: a rung scores the first n items, so the low rungs do not score the
  items the estimate saw (the full evaluation, which scores every item, does).

Estimates are stored beside the study, under ``results/<study>/fisher/``, named by specialist
and cache key (model directory and its weight files' sizes and mtimes, the texts, the settings:
`automerge.fisher.fisher_cache_key`), so every worker sharing the results directory and every
resumed run uses the same file; a file lock makes the first worker estimate while the others
wait. The estimate runs deterministically (`automerge.fisher.deterministic`), and the first
worker records each file's sha256 in the study (user attr ``fisher:<specialist>``): a worker
that cannot reach the file (PostgreSQL storage, another machine) computes its own and must get
the same bytes — if not (another kind of machine, another torch), it stops with the fix instead
of merging with other weights than its peers.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from automerge.errors import SpaceError

ATTR_PREFIX = "fisher:"


def proxy_tasks_for(space: Any, specialist: Any) -> list[str]:
    """The objectives' proxy tasks (rung tasks, in order) of the specialist's domain."""
    from automerge.eval._tasks import PROXY_TASKS

    tasks: list[str] = []
    for o in space.objectives:
        for t in o.tasks:
            if t in PROXY_TASKS and PROXY_TASKS[t].domain == specialist.domain and t not in tasks:
                tasks.append(t)
    return tasks


def proxy_texts(space: Any, specialist: Any, *, data_dir: Path | None = None) -> list[str]:
    """Texts (context + gold continuation) of the specialist's domain's proxy items, round-robin
    over its tasks, each task from the end of the evaluation order (see the module doc)."""
    from automerge.eval import _tasks

    per_task = []
    for task in proxy_tasks_for(space, specialist):
        items = _tasks.ordered(_tasks.load_items(task, data_dir), task, space.seed)[::-1]
        texts = []
        for it in items:
            gold = it["choices"][it["gold"]] if _tasks.PROXY_TASKS[task].kind == "mc" else it["continuation"]
            texts.append(it["context"] + gold)
        per_task.append(texts)
    out = []
    for i in range(max((len(t) for t in per_task), default=0)):
        out.extend(t[i] for t in per_task if i < len(t))
    return out


def check_sources(space: Any) -> None:
    """Method fisher: every `fisher:` file and data file of the space exists (SpaceError names it)."""
    from automerge.methods import METHODS

    if not any(METHODS[m].needs_fisher for m in space.method_names):
        return
    for i, s in enumerate(space.specialists):
        src = s.fisher
        path, key = (src, "fisher") if isinstance(src, str) else (getattr(src, "data", None), "fisher.data")
        if path is not None and not Path(path).is_file():
            raise SpaceError(f"{space._source}: specialists[{i}].{key}: {path} does not exist (relative paths are "
                             "relative to the working directory, like the models' paths); fix the path"
                             + (f", or make it with `automerge fisher {s.path} DATA.jsonl {path}`" if key == "fisher"
                                else ""))


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on directory/.lock (workers on this machine, or on a shared filesystem)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def study_fisher(
    study: Any,
    study_dir: Path,
    *,
    device: str = "cpu",
    data_dir: Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Path]:
    """Estimate file of every specialist of a study whose space lists a fisher method ({} when none).

    progress(specialist, done, total) reports each estimate's examples as they are processed.
    """
    from automerge.fisher import cached_fisher, file_sha256, read_texts
    from automerge.methods import METHODS
    from automerge.search.space import SpecialistFisher

    space = study.space
    if not any(METHODS[m].needs_fisher for m in space.method_names):
        return {}
    out_dir = Path(study_dir) / "fisher"
    out: dict[str, Path] = {}
    for i, s in enumerate(space.specialists):
        src = s.fisher
        if isinstance(src, str):
            path = Path(src)
            if not path.is_file():
                raise SpaceError(f"specialists[{i}].fisher: Fisher file {path} does not exist; make it with "
                                 f"`automerge fisher {s.path} DATA.jsonl {path}`, or drop the key to estimate it "
                                 "from the space's proxy items")
        else:
            src = src or SpecialistFisher()
            texts = read_texts(src.data) if src.data is not None else proxy_texts(space, s, data_dir=data_dir)
            if not texts:
                raise SpaceError(f"specialists[{i}].fisher: no text to estimate {s.name}'s Fisher from; give "
                                 "fisher: {data: FILE.jsonl}")
            with _locked(out_dir):  # the first worker estimates; the others wait, then find the file
                recorded = _recorded(study, s.name)
                if recorded is not None and (out_dir / recorded["file"]).is_file():
                    path = out_dir / recorded["file"]  # the study's own file, whatever this machine's key
                else:
                    path = cached_fisher(s.path, texts, cache_dir=out_dir, name=s.name, max_tokens=src.max_tokens,
                                         seq_len=src.seq_len, device=device,
                                         progress=(lambda d, t, n=s.name: progress(n, d, t)) if progress else None)
        _check_same_bytes(study, s.name, path, file_sha256(path))
        out[s.name] = path.resolve()
    return out


def _recorded(study: Any, name: str) -> dict | None:
    storage = study.storage
    return storage.get_study_user_attrs(storage.get_study_id_from_name(study.rung_names[0])).get(ATTR_PREFIX + name)


def _check_same_bytes(study: Any, name: str, path: Path, sha: str) -> None:
    """Record the estimate's sha256 in the study (first worker), or check it against the record."""
    storage = study.storage
    study_id = storage.get_study_id_from_name(study.rung_names[0])
    key = ATTR_PREFIX + name
    recorded = _recorded(study, name)
    if recorded is None:
        storage.set_study_user_attr(study_id, key, {"sha256": sha, "file": path.name})
        recorded = storage.get_study_user_attrs(study_id)[key]  # another worker may have raced us
    if recorded["sha256"] != sha:
        raise SpaceError(
            f"the Fisher estimate of {name} here ({path}, sha256 {sha[:12]}…) differs from the one study "
            f"{study.name!r} uses ({recorded['file']}, sha256 {recorded['sha256'][:12]}…): this machine computed "
            "other bytes (another kind of CPU/GPU, another torch?) or the specialist changed since the study "
            f"began; copy results/{study.name}/fisher/{recorded['file']} from the machine that made it to "
            f"{path.parent}/ (or share results/ between the machines) and run again"
        )

