"""Bad input to every command (issue 10): one row per mistake. Each is refused with one line,
``error: …`` naming the culprit and the fix, exit status 2, no traceback, and nothing new under
results/ (no half-created study)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "report"))  # report_study: a finished study in the real format

from report_study import make_study  # noqa: E402
from tiny_models import save_tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny models, a valid space, a finished study 'done' (its space in an unknown format), a started
    study 'started' and a corrupt study 'corrupt'."""
    root = tmp_path_factory.mktemp("bad-input")
    base = save_tiny_model(root / "m" / "base", arch="llama", seed=0, num_layers=2, hidden=32)
    code = save_tiny_model(root / "m" / "code", base=base, seed=1, noise=0.05)
    lang = save_tiny_model(root / "m" / "lang", base=base, seed=2, noise=0.05)
    space = {"name": "good", "base": str(base),
             "specialists": [{"name": "code", "path": str(code), "domain": "code"},
                             {"name": "lang", "path": str(lang), "domain": "nl"}],
             "methods": ["task_arithmetic", "ties"],
             "parameters": {"weight": {"low": 0.0, "high": 1.5}, "density": {"low": 0.2, "high": 1.0}},
             "objectives": [{"name": "code", "tasks": {"code_body_ll": 1.0}},
                            {"name": "nl", "tasks": {"prose_ll": 1.0}}],
             "rungs": {"items": [4], "eta": 3}, "budget": {"trials": 2}, "device": "cpu"}
    results = root / "results"
    (results / "done").mkdir(parents=True)
    make_study(f"sqlite:///{results / 'done' / 'study.db'}", "done", base=str(base),
               specialists={"code": str(code), "lang": str(lang)}, n_search=4)
    from automerge.search.space import SearchSpace
    from automerge.search.study import SearchStudy

    (results / "started").mkdir()
    SearchStudy.open("started", f"sqlite:///{results / 'started' / 'study.db'}",
                     SearchSpace.from_dict(dict(space, name="started"))).close()
    (results / "corrupt").mkdir()
    (results / "corrupt" / "study.db").write_bytes(b"this is not an SQLite database\n" * 64)
    return {"root": root, "space": space, "base": base}


def _space(world, name: str, change=None, text: str | None = None) -> str:
    path = world["root"] / f"{name}.yaml"
    if text is None:
        data = yaml.safe_load(yaml.safe_dump(world["space"]))
        data["name"] = name
        if change:
            change(data)
        text = yaml.safe_dump(data)
    path.write_text(text)
    return str(path)


def _set(*keys_value):
    *keys, value = keys_value

    def change(d):
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return change


# (row id, argv builder, fragments the one-line error must hold: the culprit, then the fix)
ROWS = [
    ("search: missing space file", lambda w: ["search", str(w["root"] / "nope.yaml")],
     ["nope.yaml does not exist"]),
    ("search: malformed YAML", lambda w: ["search", _space(w, "yaml", text="name: x\nbase: [open\n")],
     ["yaml.yaml: not valid YAML", "line 3", "demo.yaml shows the format"]),
    ("search: space is not a mapping", lambda w: ["search", _space(w, "list", text="- a\n- b\n")],
     ["list.yaml", "mapping"]),
    ("search: missing model path", lambda w: ["search", _space(w, "nomodel", _set("base", str(w["root"] / "gone")))],
     ["base", "gone", "does not exist"]),
    ("search: missing specialist path",
     lambda w: ["search", _space(w, "nospec", _set("specialists", 1, "path", str(w["root"] / "gone2")))],
     ["specialists", "gone2", "does not exist"]),
    ("search: unknown task", lambda w: ["search", _space(w, "task", _set("objectives", 0, "tasks", {"no_such": 1.0}))],
     ["objectives[0].tasks.no_such", "unknown task", "known:"]),
    ("search: unknown method", lambda w: ["search", _space(w, "method", _set("methods", ["frobnicate"]))],
     ["methods[0]", "frobnicate", "known:"]),
    ("search: inverted range",
     lambda w: ["search", _space(w, "inverted", _set("parameters", "weight", {"low": 1.0, "high": 0.2}))],
     ["parameters.weight", "low (1) is above high (0.2)"]),
    ("search: out-of-range range",
     lambda w: ["search", _space(w, "outside", _set("parameters", "density", {"low": 0.5, "high": 3.0}))],
     ["parameters.density", "high 3", "(0, 1]"]),
    ("search: non-finite range",
     lambda w: ["search", _space(w, "inf", _set("parameters", "weight", {"low": 0.0, "high": float("inf")}))],
     ["parameters.weight", "finite"]),
    ("search: bad --timeout", lambda w: ["search", _space(w, "timeout"), "--timeout", "soon"],
     ["--timeout", "'soon'", "90s"]),
    ("search: bad --trials", lambda w: ["search", _space(w, "trials"), "--trials", "-3"], ["--trials", ">= 0"]),
    ("search: bad --threads", lambda w: ["search", _space(w, "threads"), "--threads", "0"], ["--threads 0", "at least 1"]),
    ("search: bad --device", lambda w: ["search", _space(w, "device"), "--device", "tpu:3"],
     ["'tpu:3' is not a device", "cuda:N"]),
    ("search: unreachable --storage",
     lambda w: ["search", _space(w, "unreachable"), "--storage", "postgresql://nobody:secret@127.0.0.1:1/db"],
     ["postgresql://nobody:***@127.0.0.1:1/db", "refused", "server running"]),
    ("search: malformed --storage", lambda w: ["search", _space(w, "garbage"), "--storage", "foo://bar"],
     ["foo://bar", "sqlite:///PATH"]),
    ("search: --storage in an unwritable place",
     lambda w: ["search", _space(w, "unwritable"), "--storage", "sqlite:////proc/no/study.db"],
     ["/proc/no/study.db", "writable path"]),
    ("search: corrupt study.db", lambda w: ["search", _space(w, "corrupt")],
     ["corrupt/study.db", "not a database", "restore it"]),
    ("search: another space for an existing study",
     lambda w: ["search", _space(w, "started", _set("parameters", "weight", {"low": 0.1, "high": 0.9}))],
     ["study 'started'", "different search space", "--study NEW_NAME"]),
    ("search: a study stored in an unknown format", lambda w: ["search", _space(w, "done")],
     ["space stored in study 'done'", "another automerge version"]),
    ("search: --study that does not exist", lambda w: ["search", "--study", "ghost"],
     ["no study 'ghost'", "automerge search SPACE --study ghost"]),
    ("status: missing study", lambda w: ["status", "ghost"], ["no study 'ghost'", "--storage"]),
    ("status: corrupt study.db", lambda w: ["status", "corrupt"], ["corrupt/study.db", "not a database"]),
    ("pareto: missing study", lambda w: ["pareto", "ghost"], ["results/ghost/study.db", "automerge search"]),
    ("pareto: corrupt study.db", lambda w: ["pareto", "corrupt"], ["corrupt/study.db", "not a database"]),
    ("report: missing study", lambda w: ["report", "ghost"], ["results/ghost/study.db", "automerge search"]),
    ("report: corrupt study.db", lambda w: ["report", "corrupt"], ["corrupt/study.db", "not a database"]),
    ("export: missing study", lambda w: ["export", "ghost", "--trial", "1"], ["results/ghost/study.db"]),
    ("export: corrupt study.db", lambda w: ["export", "corrupt", "--trial", "1"], ["not a database"]),
    ("export: non-existent trial", lambda w: ["export", "done", "--trial", "999"],
     ["no trial 999", "pick another --trial"]),
    ("eval: missing model", lambda w: ["eval", str(w["root"] / "gone"), "--limit", "2"], ["gone", "does not exist"]),
    ("eval: unknown zoo model", lambda w: ["eval", "zoo:nonexistent", "--limit", "2"],
     ["zoo:nonexistent", "choose one of"]),
    ("eval: unknown task", lambda w: ["eval", str(w["base"]), "--task", "no_such_task", "--limit", "2"],
     ["no_such_task", "known:"]),
    ("eval: bad --device", lambda w: ["eval", str(w["base"]), "--device", "tpu", "--limit", "2"],
     ["--device 'tpu'", "use auto, cpu"]),
]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_is_refused_cleanly(row, world, monkeypatch, capsys):
    from automerge import cli

    _, argv, fragments = row
    monkeypatch.chdir(world["root"])
    args = argv(world)
    results = world["root"] / "results"
    before = _files(results)
    monkeypatch.setattr(sys, "argv", ["automerge", *args])
    with pytest.raises(SystemExit) as exited:
        cli.main()          # anything but an AutomergeError propagates here: the test fails with its traceback
    out = capsys.readouterr()
    assert exited.value.code == 2, (out.out, out.err)
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.err
    assert "Traceback" not in out.err + out.out
    for f in fragments:
        assert f in lines[0], f"{f!r} not in: {lines[0]}"
    after = _files(results)
    assert after == before, f"left behind under results/: {sorted(set(after) - set(before))}"


def _files(results: Path) -> list[Path]:
    """Everything under results/, except SQLite's -wal/-shm side files of a database that is already
    there (connections other rows of this process opened on it keep them; no new study is in them)."""
    return sorted(p.relative_to(results) for p in results.rglob("*")
                  if not (p.name.endswith(("-wal", "-shm")) and p.with_name(p.name[:-4]).is_file()))

