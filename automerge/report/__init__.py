"""Inspect a finished study and take merges out of it (read-only on the study).

    from automerge.report.study_reader import load_study
    from automerge.report.pareto_table import pareto_table, pick
    from automerge.report.html import write_report
    from automerge.report.export import export_trial

    data = load_study("night1")                    # results/night1/study.db, every rung
    pareto_table(data, "full")                     # front + baselines + references, retention
    write_report(data)                             # results/night1/report.html + PNGs
    export_trial(data, pick(data, "knee"), recipe="knee.yaml", model="out/knee")

CLI: `automerge pareto`, `automerge report`, `automerge export` (see `automerge.report.cli`).
Browse any study interactively: `optuna-dashboard sqlite:///results/night1/study.db`.
"""

__all__ = ["StudyData", "load_study"]


# On first use (PEP 562): study_reader imports pandas, which `automerge --help` must not load.
def __getattr__(name: str):
    if name in __all__:
        from automerge.report import study_reader

        return getattr(study_reader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
