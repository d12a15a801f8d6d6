"""Operator: compute SSL embeddings (proxy trained here, or your model)."""

from __future__ import annotations

from fiftyone.operators import types

from .common import (
    CurationOperator,
    add_device_and_delegate,
    add_output_field,
    add_target,
    operator_config,
    positive_int,
)

BACKBONES = {
    "proxy": "SimCLR proxy trained on these images (offline default)",
    "open_clip": "open_clip model (name + pretrained tag or local checkpoint)",
    "torchvision": "torchvision architecture + local weights file",
    "torchscript": "TorchScript file",
}


class ComputeSSLEmbeddings(CurationOperator):
    @property
    def config(self):
        return operator_config("compute_ssl_embeddings", "SSL curation: compute SSL embeddings",
                               "Embed images with a self-supervised model; the proxy is trained on the images themselves")

    def resolve_input(self, ctx):
        inputs = types.Object()
        add_target(ctx, inputs)
        choices = types.Dropdown()
        for k, v in BACKBONES.items():
            choices.add_choice(k, label=v)
        inputs.enum("backbone", choices.values(), default="proxy", view=choices, label="Backbone")
        backbone = ctx.params.get("backbone", "proxy")
        if backbone == "proxy":
            positive_int(ctx, inputs, "epochs", 10, "Proxy training epochs",
                         "Skipped when this run already holds a proxy trained with the same settings")
            positive_int(ctx, inputs, "train_limit", None, "Train the proxy on at most N images (optional)",
                         "A random subset of the view trains the proxy, every image is embedded: training costs "
                         "epochs x images (e.g. 10000 for a large collection on CPU)", minimum=2)
            inputs.str("checkpoint", label="Existing proxy checkpoint (optional)", required=False)
        else:
            inputs.str("model_name", required=backbone != "torchscript", label="Architecture name",
                       description="e.g. ViT-B-32 (open_clip) or resnet18 (torchvision)")
            inputs.str("checkpoint", required=backbone != "open_clip", label="Local weights / checkpoint file")
            if backbone == "open_clip":
                inputs.str("pretrained", required=False, label="Pretrained tag (needs cached weights offline)")
        add_output_field(ctx, inputs, "embeddings_field", "ssl_embedding", "Embeddings field")
        inputs.bool("resume", default=True, label="Resume",
                    description="Keep what an interrupted run with identical inputs embedded; only embed the rest")
        inputs.bool("similarity_index", default=True, label="Similarity index",
                    description="Register a Brain similarity index on the field (Brain key <field>_sim), so the App's "
                                "'sort by similarity' on a selected image uses these embeddings")
        inputs.bool("embeddings_map", default=True, label="Embeddings map",
                    description="Register a 2-D map of the embeddings (Brain key <field>_map; UMAP where umap-learn "
                                "is installed, else PCA) for the App's Embeddings panel")
        positive_int(ctx, inputs, "batch_size", 256, "Batch size", minimum=2)
        add_device_and_delegate(inputs, ctx)
        return types.Property(inputs, view=types.View(label="Compute SSL embeddings"))

    def run(self, ctx, progress):
        from fo_plugin import compute_ssl_embeddings

        p = ctx.params
        summary = compute_ssl_embeddings(
            ctx.target_view(),
            embeddings_field=p.get("embeddings_field", "ssl_embedding"),
            backbone=p.get("backbone", "proxy"),
            model_name=p.get("model_name") or None,
            checkpoint=p.get("checkpoint") or None,
            pretrained=p.get("pretrained") or None,
            epochs=p.get("epochs", 10),
            train_limit=p.get("train_limit") or None,
            batch_size=p.get("batch_size", 256),
            resume=bool(p.get("resume", True)),
            similarity_index=bool(p.get("similarity_index", True)),
            embeddings_map=bool(p.get("embeddings_map", True)),
            device=p.get("device", "auto"),
            progress=progress,
        )
        return {k: v for k, v in summary.items() if k != "train_history"}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("embeddings_field", label="Embeddings field")
        outputs.int("num_embedded", label="Images embedded")
        outputs.int("num_failed", label="Images that could not be read (see the error field)")
        outputs.str("error_field", label="Error field")
        outputs.bool("trained_proxy", label="Trained a new proxy")
        outputs.str("checkpoint", label="Checkpoint")
        outputs.str("similarity_brain_key", label="Similarity index (Brain key)")
        outputs.str("map_brain_key", label="Embeddings map (Brain key)")
        return types.Property(outputs, view=types.View(label="SSL embeddings computed"))
