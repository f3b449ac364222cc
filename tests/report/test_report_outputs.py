"""PNGs, the self-contained HTML report, optuna-dashboard, and the CLI commands."""

from __future__ import annotations

import base64
import io
import json
import re
from wsgiref.util import setup_testing_defaults

import numpy as np
import optuna
import pytest
from PIL import Image
from typer.testing import CliRunner

from automerge.errors import AutomergeError
from automerge.report import plots
from automerge.report.html import write_report
from automerge.report.pareto_table import pareto_table
from automerge.report.study_reader import load_study


@pytest.fixture(scope="module")
def data(synthetic_study):
    return load_study(synthetic_study.name, results_dir=synthetic_study.results)


@pytest.fixture(scope="module")
def report_dir(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    write_report(data, out)
    return out


def _image(path_or_bytes) -> np.ndarray:
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with Image.open(src) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def _colours(img: np.ndarray) -> int:
    packed = (img[..., 0].astype(np.int32) << 16) | (img[..., 1].astype(np.int32) << 8) | img[..., 2]
    return len(np.unique(packed))


def _blue_pixels(img: np.ndarray) -> int:
    """Pixels of the front's colour (#1f77b4) — the front was drawn, not just axes."""
    target = np.array([0x1F, 0x77, 0xB4])
    return int((np.abs(img.astype(int) - target).sum(axis=2) < 30).sum())


def test_pareto_png_is_a_real_image_of_the_size_asked(data, tmp_path):
    path = plots.plot_pareto(data, tmp_path / "front.png", rung="0", size=(900, 600))
    img = _image(path)
    assert img.shape == (600, 900, 3)
    assert _colours(img) > 50  # not blank: text, markers, lines
    assert (img < 128).any(axis=2).mean() > 0.005  # dark ink somewhere
    assert _blue_pixels(img) > 100
    assert not list(tmp_path.glob(".*"))  # no temp file left beside it


@pytest.mark.parametrize("name,size", [("pareto.png", plots.DEFAULT_SIZE), ("fronts.png", (1440, 420)),
                                       ("hypervolume.png", (1200, 450)), ("importances.png", (1000, 600)),
                                       ("profiles.png", (1200, 500))])
def test_report_pngs(report_dir, name, size):
    img = _image(report_dir / name)
    assert img.shape == (size[1], size[0], 3)
    assert _colours(img) > 20


def test_html_is_self_contained(report_dir, data):
    text = (report_dir / "report.html").read_text()
    # plotly.js is inlined once; no script, stylesheet or image is loaded from anywhere
    scripts = re.findall(r"<script[^>]*>", text)
    assert all("src=" not in s for s in scripts)
    bundle = max(re.findall(r"<script type='text/javascript'>(.*?)</script>", text, re.S), key=len)
    assert "plotly" in bundle.lower() and len(bundle) > 1_000_000
    # outside plotly.js itself (whose strings name map-tile servers of map traces never drawn
    # here) the page holds no URL at all: no src/href/url() to fetch, no link, no import
    rest = text.replace(bundle, "")
    assert "<link" not in rest and "@import" not in rest and "<iframe" not in rest
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", rest)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", rest)
    assert not re.search(r"https?://", rest), re.findall(r".{40}https?://.{40}", rest)[:3]
    # every figure is embedded: interactive divs with inline data, and the PNGs as data URIs
    for div in ["pareto-0", "pareto-1", "pareto-full", "hypervolume", "importances", "profiles"]:
        assert f'id="{div}"' in text
        assert re.search(rf'Plotly\.newPlot\(\s*"{div}"', text)
    pngs = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert len(pngs) == 5
    for b64 in pngs:
        assert _image(base64.b64decode(b64)).shape[0] > 100
    # the sortable trials table lists every trial of every rung
    table = re.search(r'<table id="trials-table".*?</table>', text, re.S).group(0)
    assert table.count("<tr>") == 1 + len(data.trials)
    assert "sortTable(" in text
    # the front table marks baselines and the reference
    assert "kind-baseline" in text and "kind-reference" in text


def test_report_csvs_match_tables(report_dir, data):
    import pandas as pd

    front = pd.read_csv(report_dir / "pareto.csv", keep_default_na=False)
    assert front["trial"].tolist() == pareto_table(data, "full")["trial"].tolist()
    trials = pd.read_csv(report_dir / "trials.csv")
    assert len(trials) == len(data.trials)


def test_optuna_dashboard_lists_the_study(synthetic_study):
    """optuna-dashboard reads every rung study as it is (in-process WSGI app, no server)."""
    import optuna_dashboard

    app = optuna_dashboard.wsgi(synthetic_study.url)

    def get(path: str) -> dict:
        env: dict = {}
        setup_testing_defaults(env)
        env["PATH_INFO"] = path
        status: list[str] = []
        body = b"".join(app(env, lambda s, h, e=None: status.append(s)))
        assert status[0].startswith("200"), (path, status, body[:200])
        return json.loads(body)

    studies = {s["study_name"]: s["study_id"] for s in get("/api/studies")["study_summaries"]}
    assert set(studies) == {"demo", "demo:r1", "demo:full"}
    for name, sid in studies.items():
        detail = get(f"/api/studies/{sid}")
        stored = optuna.load_study(study_name=name, storage=synthetic_study.url).get_trials()
        assert [t["number"] for t in detail["trials"]] == [t.number for t in stored]
        assert [t["values"] for t in detail["trials"]] == [t.values for t in stored]
        assert detail["objective_names"] == ["nl", "code"]
        kinds = {a["value"] for t in detail["trials"] for a in t["user_attrs"] if a["key"] == "kind"}
        assert kinds == {"search", "baseline", "reference"}


# -- CLI ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app():
    from automerge.cli import app

    return app  # the real command line, as installed


def test_cli_pareto(app, synthetic_study, data, tmp_path):
    res = CliRunner().invoke(app, ["pareto", "demo", "--results-dir", str(synthetic_study.results), "--rung", "0",
                                   "--csv", str(tmp_path / "f.csv"), "--plot", str(tmp_path / "f.png")])
    assert res.exit_code == 0, res.output
    table = pareto_table(data, "0")
    for t in table["trial"]:
        assert f"#{t}" in res.output
    for label in ("code alone", "lang alone", "uniform linear", "mix"):
        assert label in res.output
    assert "ret. vs code" in res.output and "dominates" in res.output
    assert (tmp_path / "f.csv").read_text().splitlines()[0].startswith("rung,trial,kind,label,on_front")
    assert _image(tmp_path / "f.png").shape[:2] == (plots.DEFAULT_SIZE[1], plots.DEFAULT_SIZE[0])


def test_cli_pareto_with_storage_url(app, synthetic_study):
    res = CliRunner().invoke(app, ["pareto", "demo", "--storage", synthetic_study.url])
    assert res.exit_code == 0, res.output
    assert "rung full" in res.output


def test_cli_report(app, synthetic_study, tmp_path):
    res = CliRunner().invoke(app, ["report", "demo", "--storage", synthetic_study.url, "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "report.html").stat().st_size > 1_000_000


def test_cli_errors_are_automerge_errors(app, synthetic_study, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["pareto", "nope", "--results-dir", str(tmp_path)])
    assert isinstance(res.exception, AutomergeError) and "study.db" in str(res.exception)
    res = runner.invoke(app, ["export", "demo", "--storage", synthetic_study.url])
    assert isinstance(res.exception, AutomergeError) and "--trial" in str(res.exception)
    mix = next(r for _, r in load_study("demo", storage=synthetic_study.url).rung("full").iterrows()
               if r["kind"] == "reference")
    res = runner.invoke(app, ["export", "demo", "--storage", synthetic_study.url, "--trial", str(mix["trial"]),
                              "--recipe", str(tmp_path / "r.yaml")])
    assert isinstance(res.exception, AutomergeError) and "reference" in str(res.exception)
    assert not (tmp_path / "r.yaml").exists()


def test_main_cli_has_the_commands():
    """The real entry point has the report commands (a missing registration fails, not skips)."""
    from automerge.cli import app as main_app

    names = {c.name for c in main_app.registered_commands}
    assert {"pareto", "report", "export"} <= names


def test_html_scripts_parse(report_dir, tmp_path):
    """The page's own JavaScript (sorting, filtering, each figure's call) is valid (node --check)."""
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    text = (report_dir / "report.html").read_text()
    scripts = re.findall(r"<script[^>]*>(.*?)</script>", text, re.S)
    own = [s for s in scripts if len(s) < 1_000_000]  # everything but the plotly.js bundle
    assert any("function sortTable" in s for s in own) and sum("Plotly.newPlot" in s for s in own) >= 6
    for i, script in enumerate(own):
        path = tmp_path / f"s{i}.js"
        path.write_text(script)
        res = subprocess.run([node, "--check", str(path)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, (res.stderr, script[:300])
