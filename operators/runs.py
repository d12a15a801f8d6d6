"""Operator: delete one of our runs (its fields, saved views and artifacts), after an explicit confirmation."""

from __future__ import annotations

import fiftyone.operators as foo
from fiftyone.operators import types

from .common import CurationOperator


class DeleteSSLRun(CurationOperator):
    @property
    def config(self):
        return foo.OperatorConfig(name="delete_ssl_run", label="SSL curation: delete a run", dynamic=True)

    def resolve_input(self, ctx):
        from fo_plugin import runs

        inputs = types.Object()
        keys = runs.list_runs(ctx.dataset)
        if not keys:
            inputs.view("none", types.Warning(label="This dataset has no SSL-curation runs"))
            return types.Property(inputs)
        choices = types.Dropdown()
        for k in keys:
            choices.add_choice(k, label=k)
        inputs.enum("run_key", choices.values(), required=True, label="Run", view=choices)
        key = ctx.params.get("run_key")
        if key in keys:
            fields = runs.get_config(ctx.dataset, key).get("fields", [])
            inputs.view("warning", types.Warning(
                label=f"Deletes run {key!r} and its fields {', '.join(fields)} on all samples"))
            inputs.bool("confirm", default=False, required=True, label="I understand; delete it")
        return types.Property(inputs, view=types.View(label="Delete an SSL-curation run"))

    def execute(self, ctx):
        self.check_params(ctx)
        from fo_plugin import runs

        if not ctx.params.get("confirm"):
            raise ValueError("deletion not confirmed")
        runs.delete_run(ctx.dataset, ctx.params["run_key"])
        if not ctx.delegated:
            from .panel import refresh_open_panels

            ctx.trigger("reload_dataset")
            refresh_open_panels(ctx)
        return {"deleted": ctx.params["run_key"]}
