"""Operators: label-free SSL influence, and "what shaped this image"."""

from __future__ import annotations

from fiftyone.operators import types

from .common import (
    CurationOperator,
    add_device_and_delegate,
    add_run_key,
    add_target,
    operator_config,
    positive_int,
    radio,
    run_choice,
)


class ComputeSSLInfluence(CurationOperator):
    @property
    def config(self):
        return operator_config("compute_ssl_influence", "SSL curation: label-free influence",
                               "Self-influence of each sample on the SSL model (augmentations in place of labels)")

    def resolve_input(self, ctx):
        from fo_plugin.influence import influence_fields

        inputs = types.Object()
        add_target(ctx, inputs)
        if run_choice(ctx, inputs, "embeddings_run", "ssl_embeddings", "Embeddings run (its model is f)",
                       "No SSL embeddings run yet: run 'compute SSL embeddings' first") is None:
            return types.Property(inputs)
        radio(inputs, "curvature", {"ekfac": "EK-FAC (the paper)",
                                    "diagonal": "diagonal Fisher (cheaper)",
                                    "identity": "identity: squared gradient norm (cheapest; TracIn)"}, "Curvature")
        positive_int(ctx, inputs, "num_augs", 4, "Augmentations per image (K)")
        radio(inputs, "output", {"projection": "projection head", "backbone": "backbone features"},
              "Representation f")
        add_run_key(ctx, inputs, "influence", lambda k: influence_fields(k).values())
        positive_int(ctx, inputs, "batch_size", 64, "Batch size")
        add_device_and_delegate(inputs, ctx)
        return types.Property(inputs, view=types.View(label="Label-free SSL influence"))

    def run(self, ctx, progress):
        from fo_plugin import compute_ssl_influence

        p = ctx.params
        out = compute_ssl_influence(
            ctx.target_view(), p.get("run_key") or "influence",
            embeddings_run=p.get("embeddings_run", "ssl_embedding"), curvature=p.get("curvature", "ekfac"),
            num_augs=p.get("num_augs", 4), output=p.get("output", "projection"),
            batch_size=p.get("batch_size", 64), device=p.get("device", "auto"), progress=progress)
        return out

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("num_scored", label="Samples scored")
        outputs.int("num_skipped", label="Samples skipped (unreadable)")
        outputs.list("fields", types.String(), label="Fields")
        return types.Property(outputs, view=types.View(label="Influence computed"))


class FindInfluentialTrainingSamples(CurationOperator):
    @property
    def config(self):
        return operator_config("find_influential_training_samples", "SSL curation: what shaped this image?",
                               "Training samples with the largest influence (proponents, opponents) on the selected samples")

    def resolve_input(self, ctx):
        inputs = types.Object()
        if not ctx.selected:
            inputs.view("select", types.Warning(label="Select one or more samples in the grid first"))
            prop = inputs.str("selection", required=True, label="Selected samples", view=types.HiddenView())
            prop.invalid = True
            prop.error_message = "Select one or more samples in the grid first"
            return types.Property(inputs)
        inputs.view("info", types.Notice(label=f"Explaining {len(ctx.selected)} selected sample(s)"))
        if run_choice(ctx, inputs, "influence_run", "ssl_influence", "Influence run",
                       "No influence run yet: run 'label-free influence' first") is None:
            return types.Property(inputs)
        positive_int(ctx, inputs, "k", 20, "How many proponents / opponents")
        radio(inputs, "method", {"exact": "exact (EK-FAC pairwise, or streamed gradients)",
                                 "projected": "projected gradient sketch (fast; identity / diagonal runs)"}, "Method")
        add_run_key(ctx, inputs, "shaped", lambda k: [f"{k}_influence"])
        add_device_and_delegate(inputs, ctx)
        return types.Property(inputs, view=types.View(label="What shaped this image?"))

    def run(self, ctx, progress):
        from fo_plugin import find_influential_training_samples

        p = ctx.params
        out = find_influential_training_samples(
            ctx.dataset, list(ctx.selected), p.get("influence_run", "influence"), p.get("run_key") or "shaped",
            k=p.get("k", 20), method=p.get("method", "exact"), device=p.get("device", "auto"),
            progress=progress)
        return out

    def after(self, ctx, out):
        return [*super().after(ctx, out), ctx.ops.set_view(name=out["saved_views"][0])]  # what shaped them

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("field", label="Influence field (negative = proponent)")
        outputs.list("saved_views", types.String(), label="Saved views")
        return types.Property(outputs, view=types.View(label="Most influential training samples"))
