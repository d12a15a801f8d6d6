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
    radio,
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

        radio(inputs, "latent", {"kmeans": "k-means on the proxy's projections (label-free)",
                                 "label_field": "An existing label field",
                                 "clip_zero_shot": "CLIP zero-shot over class names (needs CLIP weights)"},
              "Latent classes")
        if ctx.params.get("latent", "kmeans") == "kmeans":
            positive_int(ctx, inputs, "num_classes", 0, "Number of latent classes",
                         "0 = estimate it (silhouette)", minimum=0)
        elif ctx.params.get("latent") == "label_field":
            dropdown(inputs, "label_field", categorical_fields(ctx.dataset), "Label field", required=True)
        else:
            prop = inputs.str("class_names", required=True, label="Class names (comma-separated)")
            names = [c.strip() for c in (ctx.params.get("class_names") or "").split(",") if c.strip()]
            if ctx.params.get("class_names") is not None and len(set(names)) < 2:
                prop.invalid = True
                prop.error_message = "Give at least two class names"
            inputs.str("clip_model", default="ViT-B-32", label="open_clip architecture")
            inputs.str("clip_checkpoint", label="Local CLIP checkpoint file (offline)", required=False)
            inputs.str("clip_pretrained", default="openai", label="...or a pretrained tag (cached weights)",
                       required=False)

        positive_int(ctx, inputs, "num_views", 1, "Augmented views per image", "1 = unaugmented (authors' default)")
        prop = inputs.float("budget", default=0.8, label="Budget",
                            description="Fraction to keep (0-1], or a count of samples")
        budget = ctx.params.get("budget", 0.8)
        if budget is not None and (not isinstance(budget, (int, float)) or budget <= 0
                                   or (budget > 1 and float(budget) != int(budget))):
            prop.invalid = True
            prop.error_message = "Budget must be a fraction in (0, 1] or a whole number of samples"
        radio(inputs, "mode", {"released": "released: the authors' code (sort by score within class)",
                               "greedy": "greedy: the paper's objective with the redundancy penalty"},
              "Selection mode")
        from fo_plugin.clcore import fields_for

        add_run_key(ctx, inputs, "clcore", lambda k: fields_for(k, ctx.params.get("mode", "released")).values())
        add_device_and_delegate(inputs, ctx)
        return types.Property(inputs, view=types.View(label="CL-Core (SAS) subset"))

    def run(self, ctx, progress):
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
            class_names=[c.strip() for c in (p.get("class_names") or "").split(",") if c.strip()] or None,
            clip_model=p.get("clip_model") or "ViT-B-32",
            clip_checkpoint=p.get("clip_checkpoint") or None,
            clip_pretrained=p.get("clip_pretrained") or None,
            num_views=p.get("num_views", 1),
            budget=int(budget) if isinstance(budget, float) and budget > 1 and budget.is_integer() else budget,
            mode=p.get("mode", "released"),
            device=p.get("device", "auto"),
            progress=progress,
        )
        return summary

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("num_scored", label="Samples scored")
        outputs.int("num_selected", label="Samples kept")
        outputs.int("num_skipped", label="Samples skipped (no embedding / label)")
        outputs.int("num_classes", label="Latent classes")
        outputs.list("saved_views", types.String(), label="Saved views")
        return types.Property(outputs, view=types.View(label="CL-Core subset"))
