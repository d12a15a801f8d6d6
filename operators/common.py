"""Form pieces and execution helpers shared by every operator."""

from __future__ import annotations

import fiftyone as fo
import fiftyone.operators as foo
from fiftyone.operators import types


def operator_config(name: str, label: str, description: str) -> foo.OperatorConfig:
    """Every stage operator here: a dynamic form, immediate or delegated execution, and a generator, so that an
    immediate run streams its progress to the App (see :meth:`CurationOperator.execute`)."""
    return foo.OperatorConfig(name=name, label=label, description=description, dynamic=True,
                              execute_as_generator=True, allow_immediate_execution=True,
                              allow_delegated_execution=True)


class CurationOperator(foo.Operator):
    """Base: optional delegation (a ``delegate`` checkbox), progress reporting, the target view, and a clear
    error for parameters the form does not know (a typo would otherwise be ignored without a word)."""

    ALWAYS = {"view_target", "view", "delegate", "delegation_target", "request_delegation", "confirm"}

    def unknown_params(self, ctx) -> list[str]:
        known = set(self.resolve_input(ctx).type.properties) | self.ALWAYS
        return sorted(k for k in ctx.params if k not in known and ctx.params[k] is not None)

    def check_params(self, ctx) -> None:
        unknown = self.unknown_params(ctx)
        if unknown:
            raise ValueError(f"unknown parameter(s) {', '.join(map(repr, unknown))} for {self.config.name}")

    def resolve_delegation(self, ctx):
        # None (not False) so that a request_delegation from the caller still wins
        return True if ctx.params.get("delegate", False) else None

    def run(self, ctx, progress) -> dict:
        """The stage: call the library with ``progress`` (a ``callback(fraction, label)``) and return the outputs."""
        raise NotImplementedError

    def after(self, ctx, out: dict) -> list:
        """What the App does once an immediate run ends: reload the dataset (new fields, views and runs) and
        refresh the open curation panels."""
        from .panel import refresh_open_panels

        return [ctx.trigger("reload_dataset"), *refresh_open_panels(ctx)]

    def execute(self, ctx):
        """Delegated: run the stage here, its progress stored by FiftyOne for the runs list. Immediate: a generator
        (``execute_as_generator``) that streams the stage's progress to the App, then shows its outputs."""
        self.check_params(ctx)
        if ctx.delegated:
            return self.run(ctx, self.delegated_progress(ctx))
        return self._stream(ctx)

    def _stream(self, ctx):
        try:
            out = yield from stream_progress(ctx, lambda progress: self.run(ctx, progress))
        except Exception as e:  # FiftyOne cannot report an exception from inside a stream: say it first
            yield ctx.ops.notify(f"{self.config.label} failed: {e}", variant="error")
            raise
        yield ctx.ops.show_output(self.resolve_output(ctx).to_json(), out)
        yield from self.after(ctx, out)

    @staticmethod
    def delegated_progress(ctx):
        def report(fraction: float, label: str) -> None:
            ctx.set_progress(progress=_unit(fraction), label=label)

        return report


def _unit(fraction: float) -> float:
    return min(max(float(fraction), 0.0), 1.0)


def stream_progress(ctx, work):
    """Run ``work(progress)`` in a worker thread and yield its progress to the App as it comes (FiftyOne sends
    what a generator operator yields as soon as it is yielded); return its result, or raise its exception. Reports
    that arrive faster than they are sent are merged into the latest; if the generator is closed early (the App's
    stream is gone), the stage raises :class:`StageCancelled` at its next report."""
    import queue
    import threading

    updates: queue.Queue = queue.Queue()
    done, closed = object(), threading.Event()
    box: dict = {}

    def report(fraction: float, label: str) -> None:
        if closed.is_set():  # the App went away: stop at the stage's next report (its run records the failure)
            raise StageCancelled("the App closed the operation before it finished")
        updates.put((fraction, label))

    def target() -> None:
        try:
            box["out"] = work(report)
        except BaseException as e:  # re-raised in the generator (see CurationOperator._stream)
            box["error"] = e
        finally:
            updates.put(done)

    threading.Thread(target=target, name="ssl-curation-stage", daemon=True).start()
    try:
        while (item := updates.get()) is not done:
            while not updates.empty():  # a backlog: send only its latest report
                nxt = updates.get()
                if nxt is done:
                    updates.put(done)
                    break
                item = nxt
            fraction, label = item
            yield ctx.ops.set_progress(label=label, progress=_unit(fraction))
    finally:
        closed.set()  # ended, or closed by FiftyOne when the App's stream is gone
    if "error" in box:
        raise box["error"]
    return box["out"]


class StageCancelled(RuntimeError):
    """The App closed a streamed operation: the stage stops at its next progress report."""


def add_target(ctx, inputs: types.Object) -> None:
    """Dataset / current view / selected samples, as in FiftyOne's own operators."""
    inputs.view_target(ctx)


def add_device_and_delegate(inputs: types.Object, ctx) -> None:
    """Device choice (a form error if CUDA is asked for without a GPU) and the delegation checkbox."""
    import torch

    prop = radio(inputs, "device", {d: d for d in ("auto", "cpu", "cuda")}, "Device",
                 description="auto = CUDA when available, else CPU")
    if ctx.params.get("device") == "cuda" and not torch.cuda.is_available():
        prop.invalid = True
        prop.error_message = "No CUDA GPU is available on the server; choose auto or cpu"
    inputs.bool("delegate", default=False, label="Delegate",
                description="Queue the job for a delegated-operations worker (`fiftyone delegated launch`)")


def add_output_field(ctx, inputs: types.Object, name: str, default: str, label: str, run_key: str | None = None):
    """A field-name input that becomes a form error when it would overwrite a field the user owns."""
    from fo_plugin import runs

    value = ctx.params.get(name) or default
    prop = inputs.str(name, default=default, required=False, label=label)
    problem = runs.field_conflict(ctx.dataset, run_key or value, value) if ctx.dataset is not None else None
    if problem:
        prop.invalid = True
        prop.error_message = problem
    return value


def add_run_key(ctx, inputs: types.Object, default: str, fields_of) -> str:
    """A run-key input whose fields (``fields_of(key)``) must not overwrite a user's or another run's fields."""
    from fo_plugin import runs

    key = ctx.params.get("run_key") or default
    prop = inputs.str("run_key", default=default, required=False, label="Run key",
                      description="Names the run and prefixes its fields")
    try:
        runs.validate_run_key(key)
        problems = [p for f in fields_of(key) if (p := runs.field_conflict(ctx.dataset, key, f))]
    except ValueError as e:
        problems = [str(e)]
    if problems:
        prop.invalid = True
        prop.error_message = problems[0]
    return key


def positive_int(ctx, inputs: types.Object, name: str, default: int | None, label: str, description: str = "",
                 minimum: int = 1):
    """An integer input checked by :func:`fo_plugin.params.integer` (the Python API's own check)."""
    from fo_plugin import params

    prop = inputs.int(name, default=default, label=label, description=description, min=minimum)
    _check(prop, lambda: params.integer(name, ctx.params.get(name, default), minimum, none_ok=True))
    return prop


def _check(prop, check) -> None:
    """Show the library's own validation message as the form error."""
    try:
        check()
    except ValueError as e:
        prop.invalid = True
        prop.error_message = str(e)


def radio(inputs: types.Object, name: str, choices: dict[str, str], label: str, default: str | None = None,
          description: str | None = None):
    """Radio buttons: ``choices`` maps each value to its label; the default is the first value."""
    group = types.RadioGroup()
    for value, text in choices.items():
        group.add_choice(value, label=text)
    return inputs.enum(name, group.values(), default=default or next(iter(choices)), view=group, label=label,
                       description=description)


def dropdown(inputs: types.Object, name: str, values, label: str, default=None, required: bool = False,
             description: str | None = None):
    """A dropdown of ``values`` (each its own label)."""
    d = types.Dropdown()
    for v in values:
        d.add_choice(v, label=v)
    return inputs.enum(name, d.values(), default=default, view=d, label=label, required=required,
                       description=description)


def run_choice(ctx, inputs: types.Object, name: str, method: str, label: str, missing: str):
    """A dropdown of this library's runs of ``method``; an error notice (and None) when there are none yet."""
    from fo_plugin import runs

    keys = runs.list_runs(ctx.dataset, method)
    if not keys:
        inputs.view(f"need_{name}", types.Error(label=missing))
        return None
    dropdown(inputs, name, keys, label, default=keys[0])
    return keys


def bounded_float(ctx, inputs: types.Object, name: str, default: float, label: str, lo: float, hi: float,
                  description: str = "", open_min: bool = False) -> None:
    """A float input that is a form error outside [lo, hi]."""
    from fo_plugin import params

    prop = inputs.float(name, default=default, label=label, description=description)
    _check(prop, lambda: params.number(name, ctx.params.get(name, default), lo, hi, none_ok=True, open_min=open_min))


def categorical_fields(dataset) -> list[str]:
    """Fields whose values name groups (classifications, strings, ints, bools), less ids, paths and our own
    per-sample bookkeeping fields."""
    from fo_plugin.features import is_categorical

    skip = ("id", "filepath")
    return [n for n, f in dataset.get_field_schema().items()
            if is_categorical(f) and n not in skip and not n.endswith(("_error", "_dup_of", "_rank", "_rank_overall"))]


def vector_fields(dataset) -> list[str]:
    return [n for n, f in dataset.get_field_schema().items() if isinstance(f, (fo.VectorField, fo.ArrayField))]
