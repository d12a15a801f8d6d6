"""Operator: CL-Core / SAS scores and a budgeted subset."""

from __future__ import annotations

import fiftyone as fo
import fiftyone.operators as foo
from fiftyone.operators import types

from .common import CurationOperator, add_device_and_delegate, add_run_key, add_target, positive_int, report_errors


def _label_fields(dataset) -> list[str]:
    out = []
    for name, f in dataset.get_field_schema().items():
        if isinstance(f, fo.EmbeddedDocumentField) and issubclass(f.document_type, fo.Classification) or isinstance(f, (fo.StringField, fo.IntField)) and name not in ("id", "filepath") and not name.endswith("_error"):
            out.append(name)
    return out


class ComputeCLCore(CurationOperator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="compute_clcore",
            label="SSL curation: CL-Core (SAS) subset",
            description="Rank samples by expected augmentation similarity within latent classes and keep a budget",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx):
        from fo_plugin import runs

        inputs = types.Object()
        add_target(ctx, inputs)
        emb_runs = runs.list_runs(ctx.dataset, "ssl_embeddings")
        if not emb_runs:
            inputs.view("need", types.Error(label="No SSL embeddings run yet",
                                            description="Run 'SSL curation: compute SSL embeddings' first"))
            return types.Property(inputs)
        choices = types.Dropdown()
        for k in emb_runs:
            choices.add_choice(k, label=k)
        inputs.enum("embeddings_run", choices.values(), default=emb_runs[0], view=choices,
                    label="Embeddings run (its model gives f)")

        latent = types.RadioGroup()
        latent.add_choice("kmeans", label="k-means on the proxy's projections (label-free)")
        latent.add_choice("label_field", label="An existing label field")
        inputs.enum("latent", latent.values(), default="kmeans", view=latent, label="Latent classes")
        if ctx.params.get("latent", "kmeans") == "kmeans":
            positive_int(ctx, inputs, "num_classes", 0, "Number of latent classes",
                         "0 = estimate it (silhouette)", minimum=0)
        else:
            fields = _label_fields(ctx.dataset)
            lf = types.Dropdown()
            for f in fields:
                lf.add_choice(f, label=f)
            inputs.enum("label_field", lf.values(), required=True, view=lf, label="Label field")

        positive_int(ctx, inputs, "num_views", 1, "Augmented views per image", "1 = unaugmented (authors' default)")
        prop = inputs.float("budget", default=0.8, label="Budget",
                            description="Fraction to keep (0-1], or a count of samples")
        budget = ctx.params.get("budget", 0.8)
        if budget is not None and (not isinstance(budget, (int, float)) or budget <= 0
                                   or (budget > 1 and float(budget) != int(budget))):
            prop.invalid = True
            prop.error_message = "Budget must be a fraction in (0, 1] or a whole number of samples"
        mode = types.RadioGroup()
        mode.add_choice("released", label="released: the authors' code (sort by score within class)")
        mode.add_choice("greedy", label="greedy: the paper's objective with the redundancy penalty")
        inputs.enum("mode", mode.values(), default="released", view=mode, label="Selection mode")
        from fo_plugin.clcore import fields_for

        add_run_key(ctx, inputs, "clcore", lambda k: fields_for(k, ctx.params.get("mode", "released")).values())
        add_device_and_delegate(inputs, ctx)
        return types.Property(inputs, view=types.View(label="CL-Core (SAS) subset"))

    def execute(self, ctx):
        from fo_plugin import compute_clcore

        p = ctx.params
        budget = p.get("budget", 0.8)
        summary = compute_clcore(
            ctx.target_view(),
            run_key=p.get("run_key") or "clcore",
            embeddings_run=p.get("embeddings_run", "ssl_embedding"),
            latent=p.get("latent", "kmeans"),
            num_classes=p.get("num_classes") or None,
            label_field=p.get("label_field"),
            num_views=int(p.get("num_views", 1)),
            budget=int(budget) if budget > 1 else float(budget),
            mode=p.get("mode", "released"),
            device=p.get("device", "auto"),
            progress=self.progress(ctx),
        )
        report_errors(ctx, summary)
        return summary

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("num_scored", label="Samples scored")
        outputs.int("num_selected", label="Samples kept")
        outputs.int("num_skipped", label="Samples skipped (no embedding / label)")
        outputs.int("num_classes", label="Latent classes")
        outputs.list("saved_views", types.String(), label="Saved views")
        return types.Property(outputs, view=types.View(label="CL-Core subset"))
