"""Form pieces and execution helpers shared by every operator."""

from __future__ import annotations

import fiftyone.operators as foo
from fiftyone.operators import types


class CurationOperator(foo.Operator):
    """Base: optional delegation (a ``delegate`` checkbox), progress reporting, the target view."""

    def resolve_delegation(self, ctx):
        # None (not False) so that a request_delegation from the caller still wins
        return True if ctx.params.get("delegate", False) else None

    @staticmethod
    def progress(ctx):
        def report(fraction: float, label: str) -> None:
            ctx.set_progress(progress=min(max(fraction, 0.0), 1.0), label=label)

        return report


def add_target(ctx, inputs: types.Object) -> None:
    """Dataset / current view / selected samples, as in FiftyOne's own operators."""
    inputs.view_target(ctx)


def add_device_and_delegate(inputs: types.Object, ctx) -> None:
    """Device choice (a form error if CUDA is asked for without a GPU) and the delegation checkbox."""
    import torch

    choices = types.RadioGroup()
    for d in ("auto", "cpu", "cuda"):
        choices.add_choice(d, label=d)
    prop = inputs.enum("device", choices.values(), default="auto", view=choices, label="Device",
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
        runs.validate_name(key, "run key")
        problems = [p for f in fields_of(key) if (p := runs.field_conflict(ctx.dataset, key, f))]
    except ValueError as e:
        problems = [str(e)]
    if problems:
        prop.invalid = True
        prop.error_message = problems[0]
    return key


def positive_int(ctx, inputs: types.Object, name: str, default: int, label: str, description: str = "",
                 minimum: int = 1):
    prop = inputs.int(name, default=default, label=label, description=description, min=minimum)
    value = ctx.params.get(name, default)
    if value is not None and (not isinstance(value, int) or value < minimum):
        prop.invalid = True
        prop.error_message = f"{label} must be an integer >= {minimum}"
    return prop


def report_errors(ctx, summary: dict) -> None:
    """Reload the App after fields changed (immediate mode only)."""
    if not ctx.delegated:
        ctx.trigger("reload_dataset")
