"""Checks of a search space: static ones when it is loaded (methods, parameter ranges, tasks,
samplers), and `check_models` (checkpoint headers) before a search starts."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from automerge.errors import AutomergeError, SpaceError
from automerge.search.space.schema import Choice, Range


class SpaceChecks:
    """The checks of `SearchSpace` (mixed into it)."""

    def _check_static(self, source: str) -> None:
        """Everything that needs no model: methods, parameter ranges, sampler, references, tasks."""

        def fail(where: str, msg: str) -> SpaceError:
            return SpaceError(f"{source}: {where}: {msg}")

        if not self.method_names:
            raise fail("methods", "no methods: list at least one merge method")
        for i, name in enumerate(self.method_names):
            self._check_method(i, name, fail)
        self._check_unused_parameters(fail)
        self._check_sampler(fail)
        names = set(self.specialist_names)
        for i, r in enumerate(self.references):
            if r.name in names:
                raise fail(f"references[{i}].name", f"{r.name!r} is also a specialist's name; rename it")
        self._check_tasks(fail)

    def _check_method(self, i: int, name: str, fail: Callable[[str, str], SpaceError]) -> None:
        """Method `name` (the i-th listed) exists, takes this many specialists, and every
        parameter the space sets for it is one it has, in its range."""
        from automerge.methods import METHODS

        where = f"methods.{name}" if isinstance(self.methods, Mapping) else f"methods[{i}]"
        if name not in METHODS:
            import difflib

            close = difflib.get_close_matches(name, list(METHODS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise fail(where, f"unknown merge method {name!r}{hint}; known: {', '.join(METHODS)}")
        m = METHODS[name]
        k = len(self.specialists)
        if k < m.min_models or (m.max_models is not None and k > m.max_models):
            raise fail(where, f"{name} merges {m._count_text()} specialist(s) with the base; the space has "
                              f"{k}; remove {name} or change the specialists"
                              + ("; nuslerp slerps two specialists over the base, multislerp any number"
                                 if name == "slerp" else ""))
        if m.needs_fisher:
            self._check_fisher_sources(fail)
        known = {p.name for p in m.params}
        for pname in self._method_spec(name):
            if pname not in known:
                raise fail(f"{where}.{pname}", f"{name} has no parameter {pname!r}; known: {', '.join(sorted(known))}")
        for p in m.params:
            for owner in ([s.name for s in self.specialists] if p.per_model else [None]):
                spec = self.param_spec(name, p.name, owner)
                path = self._spec_path(name, p.name, owner)
                if spec is None:
                    if p.required:
                        raise fail(f"parameters.{p.name}", f"method {name} needs parameter {p.name!r} "
                                                           f"({p.allowed()}); give a value or a range")
                    continue
                _check_spec_against(p, spec, fail=lambda msg, path=path: fail(path, msg))
        self._check_negation(name, m, fail)

    def _check_unused_parameters(self, fail: Callable[[str, str], SpaceError]) -> None:
        """Parameters no listed method takes are probably typos."""
        from automerge.methods import METHODS

        taken = {p.name for n in self.method_names for p in METHODS[n].params}
        for pname in self.parameters:
            if pname not in taken and pname not in ("weight", "density", "t"):
                raise fail(f"parameters.{pname}", f"no listed method takes {pname!r}; methods "
                                                  f"{', '.join(self.method_names)} take {', '.join(sorted(taken))}")
        for i, s in enumerate(self.specialists):
            for pname in s.parameters:
                if not any(p.per_model and p.name == pname for n in self.method_names for p in METHODS[n].params):
                    raise fail(f"specialists[{i}].parameters.{pname}", f"{pname!r} is not a per-specialist parameter "
                                                                       "of any listed method")

    def _check_sampler(self, fail: Callable[[str, str], SpaceError]) -> None:
        """The sampler's extra package is installed (its name is checked by the schema)."""
        from automerge.search.samplers import SAMPLERS

        needs = SAMPLERS[self.sampler].needs
        if needs is None:
            return
        import importlib.util

        if importlib.util.find_spec(needs) is None:
            others = ", ".join(k.name for k in SAMPLERS.values() if k.needs is None)
            raise fail("sampler", f"{self.sampler} needs the `{needs}` package (pip install {needs}), or use "
                                  f"one of {others}")

    def _check_negation(self, method: str, m: Any, fail: Callable[[str, str], SpaceError]) -> None:
        """Negative weights (negation: subtracting a task vector) only where no weight sum divides.

        A normalising merge divides by the sum of the (kept) weights; once a weight can be
        negative that sum can be 0 or tiny and the merge explodes, so such a space is refused.
        """
        normalize = next((p for p in m.params if p.name == "normalize"), None)
        if normalize is None:
            return
        spec = self.param_spec(method, "normalize")
        if spec is None:
            spec = normalize.default
        can_normalize = True in spec.choices if isinstance(spec, Choice) else bool(spec)
        if not can_normalize:
            return
        for s in self.specialists:
            spec = self.param_spec(method, "weight", s.name)
            values = ([spec.low] if isinstance(spec, Range) else spec.choices if isinstance(spec, Choice)
                      else [spec])
            if any(isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0 for v in values):
                raise fail(self._spec_path(method, "weight", s.name),
                           f"negative weights (negation) with {method}'s normalize=true divide by a weight sum "
                           f"that can be 0; set normalize: false for {method} (methods.{method}.normalize), "
                           "or use task_arithmetic for negation")

    def _check_fisher_sources(self, fail: Callable[[str, str], SpaceError]) -> None:
        """Method fisher: every specialist has an estimate file, data, or proxy items of its domain."""
        from automerge.search.fisher import proxy_tasks_for

        for i, s in enumerate(self.specialists):
            src = s.fisher
            if isinstance(src, str) or (src is not None and src.data is not None):
                continue
            if not proxy_tasks_for(self, s):
                raise fail(f"specialists[{i}].fisher", f"method fisher needs an estimate for {s.name}, and no proxy "
                                                       f"task of the objectives has its domain {s.domain!r}; give "
                                                       "fisher: FILE.safetensors or fisher: {data: FILE.jsonl}")

    def _check_tasks(self, fail: Callable[[str, str], SpaceError]) -> None:
        try:
            from automerge.eval import available_tasks
        except ImportError:  # evaluation package not installed: checked when the evaluator starts
            return
        from automerge.eval._data_tasks import is_data_task, parse
        from automerge.errors import EvalError

        known = available_tasks()

        def ok(task: str) -> bool:
            return task in known or task.startswith("lm_eval:") or is_data_task(task) or any(
                task.startswith(k.rstrip("*")) for k in known if k.endswith("*"))

        for i, o in enumerate(self.objectives):
            for field, tasks in (("tasks", o.tasks), ("full_tasks", o.full_tasks or {})):
                for t in tasks:
                    if is_data_task(t):
                        try:
                            parse(t)      # the name only: the file is read by check_models
                        except EvalError as err:
                            raise fail(f"objectives[{i}].{field}.{t}", str(err)) from None
                    if not ok(t):
                        raise fail(f"objectives[{i}].{field}.{t}",
                                   f"unknown task {t!r}; known: {', '.join(sorted(known))} or lm_eval:<task>")
        for j, t in enumerate(self.full_evaluation.tasks):
            if not ok(t):
                raise fail(f"full_evaluation.tasks[{j}]", f"unknown task {t!r}; known: {', '.join(sorted(known))}")

    def check_models(self) -> dict[str, Any]:
        """Open every checkpoint (config + safetensors headers, no tensor data) and check they can be
        merged; SpaceError names the YAML path. Returns {"num_layers": n}."""
        from automerge.checkpoints import Checkpoint, check_compatible

        src = self._source

        def open_at(where: str, path: str) -> Any:
            try:
                return Checkpoint.open(path)
            except AutomergeError as err:
                raise SpaceError(f"{src}: {where}: {err}") from None

        base = open_at("base", self.base)

        def open_against_base(where: str, path: str) -> Any:  # also LoRA adapters and state-dict files
            from automerge.specialists import open_specialist

            try:
                return open_specialist(path, base=base)
            except AutomergeError as err:
                raise SpaceError(f"{src}: {where}: {err}") from None

        specs = [open_against_base(f"specialists[{i}].path", s.path) for i, s in enumerate(self.specialists)]
        refs = [open_against_base(f"references[{i}].path", r.path) for i, r in enumerate(self.references)]
        for where, group in (("specialists", specs), ("references", refs)):
            for i, ck in enumerate(group):
                try:
                    check_compatible(base, [ck])
                except AutomergeError as err:
                    raise SpaceError(f"{src}: {where}[{i}].path: cannot be merged with base {self.base}: {err}") from None
        self._check_data_files()
        layers = base.num_layers
        too_many = [g for g in self.layer_groups.group_choices if g > layers]
        if too_many and self.any_per_group():
            raise SpaceError(f"{src}: layer_groups.num_groups: {too_many[0]} groups but the base has only "
                             f"{layers} layers; use at most {layers}")
        return {"num_layers": layers}

    def _check_data_files(self) -> None:
        """Read every data:PATH.jsonl task's file now, so a bad record fails before any model loads."""
        from automerge.eval._data_tasks import is_data_task, load
        from automerge.errors import EvalError

        for i, o in enumerate(self.objectives):
            for field, tasks in (("tasks", o.tasks), ("full_tasks", o.full_tasks or {})):
                for t in tasks:
                    if is_data_task(t):
                        try:
                            load(t)
                        except EvalError as err:
                            raise SpaceError(f"{self._source}: objectives[{i}].{field}.{t}: {err}") from None


def _check_spec_against(p: Any, spec: Any, *, fail: Callable[[str], SpaceError]) -> None:
    """A space entry must only produce values the method accepts."""
    if isinstance(spec, Range):
        if p.type not in (float, int):
            raise fail(f"{p.name} is a {p.type.__name__} parameter; give a value or {{choices: [...]}}, not a range")
        for end, v in (("low", spec.low), ("high", spec.high)):
            if not p.in_range(float(v)):
                raise fail(f"{end} {v:g} is outside what {p.name} allows: {p.allowed()}")
        return
    values = spec.choices if isinstance(spec, Choice) else [spec]
    for v in values:
        try:
            p.check(v, method="search space")
        except AutomergeError:
            raise fail(f"{v!r} is not allowed for {p.name}: {p.allowed()}") from None
