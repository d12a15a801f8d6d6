"""Operator: CL-Core / SAS scores and a budgeted subset."""

from __future__ import annotations

from fiftyone.operators import types

from .common import (
    CurationOperator,
    add_device_and_delegate,
    add_run_key,
    add_target,
    categorical_fields,
    dropdown,
    operator_config,
    positive_int,
    report_errors,
    run_choice,
)


class ComputeCLCore(CurationOperator):
    @property
    def config(self):
        return operator_config("compute_clcore", "SSL curation: CL-Core (SAS) subset",
                               "Rank samples by expected augmentation similarity within latent classes and keep a budget")

    def resolve_input(self, ctx):
        inputs = types.Object()
        add_target(ctx, inputs)
        if run_choice(ctx, inputs, "embeddings_run", "ssl_embeddings", "Embeddings run (its model gives f)",
                      "No SSL embeddings run yet: run 'SSL curation: compute SSL embeddings' first") is None:
            return types.Property(inputs)

        latent = types.RadioGroup()
        latent.add_choice("kmeans", label="k-means on the proxy's projections (label-free)")
        latent.add_choice("label_field", label="An existing label field")
        inputs.enum("latent", latent.values(), default="kmeans", view=latent, label="Latent classes")
        if ctx.params.get("latent", "kmeans") == "kmeans":
            positive_int(ctx, inputs, "num_classes", 0, "Number of latent classes",
                         "0 = estimate it (silhouette)", minimum=0)
        else:
            dropdown(inputs, "label_field", categorical_fields(ctx.dataset), "Label field", required=True)

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
