"""Curation operators: near-duplicates, outliers, subgroup audit, and the explicitly confirmed export."""

from __future__ import annotations

import fiftyone as fo
import fiftyone.operators.types as types

from .common import (
    CurationOperator,
    add_run_key,
    add_target,
    bounded_float,
    categorical_fields,
    dropdown,
    operator_config,
    positive_int,
    vector_fields,
)


def _embeddings_input(ctx, inputs) -> bool:
    fields = vector_fields(ctx.dataset)
    if not fields:
        inputs.view("need", types.Error(label="No embeddings yet: run 'compute SSL embeddings' first"))
        return False
    dropdown(inputs, "embeddings_field", fields, "Embeddings field",
              default="ssl_embedding" if "ssl_embedding" in fields else fields[0])
    return True


class FindNearDuplicates(CurationOperator):
    @property
    def config(self):
        return operator_config("find_near_duplicates", "SSL curation: find near-duplicates",
                       "Group near-duplicates (SSL neighbours confirmed by pixel similarity) and keep one per group")

    def resolve_input(self, ctx):
        from fo_plugin import runs
        from fo_plugin.core.duplicates import DUPLICATE_THRESHOLD, PIXEL_K
        from fo_plugin.duplicates import POLICIES, duplicate_fields

        inputs = types.Object()
        add_target(ctx, inputs)
        if not _embeddings_input(ctx, inputs):
            return types.Property(inputs)
        bounded_float(ctx, inputs, "threshold", 0.8, "SSL cosine threshold", 0.0, 1.0, open_min=True)
        inputs.bool("pixel_check", default=True, label="Confirm with pixel similarity")
        if ctx.params.get("pixel_check", True):
            bounded_float(ctx, inputs, "verify_threshold", DUPLICATE_THRESHOLD, "Pixel confirmation threshold", 0.0,
                          1.0, "Aligned thumbnail score (shifts, crops, flips, recolouring tolerated); higher: "
                          "fewer, surer pairs")
            positive_int(ctx, inputs, "pixel_k", PIXEL_K, "Pixel-window candidates per image",
                         "Each image's best matches by aligned pixel windows join the SSL candidates (shifted and "
                         "cropped copies the embedding ranks too far); 0: SSL candidates only", minimum=0)
        infl = runs.list_runs(ctx.dataset, "ssl_influence")
        if infl:
            dropdown(inputs, "influence_run", infl, "Also confirm with influence gradients (optional)")
        dropdown(inputs, "keep", POLICIES, "Representative", default="first",
                  description="clcore: highest CL-Core score; influence: lowest self-influence; largest_file; first")
        strings = [k for k, f in ctx.dataset.get_field_schema().items() if isinstance(f, fo.StringField)
                   and k not in ("filepath", "id")]
        dropdown(inputs, "split", ["auto", "none", "tags", *strings], "Split (leaky-split check)", default="auto",
                 description="auto: a string field named 'split', else train/test/val tags; groups that cross "
                             "splits get <key>_leaky and the saved view 'leaky split pairs'")
        add_run_key(ctx, inputs, "dups", lambda k: duplicate_fields(k).values())
        return types.Property(inputs, view=types.View(label="Find near-duplicates"))

    def run(self, ctx, progress):
        from fo_plugin import find_near_duplicates
        from fo_plugin.core.duplicates import DUPLICATE_THRESHOLD, PIXEL_K

        p = ctx.params
        out = find_near_duplicates(
            ctx.target_view(), p.get("run_key") or "dups", embeddings_field=p.get("embeddings_field", "ssl_embedding"),
            threshold=p.get("threshold", 0.8),
            verify_threshold=p.get("verify_threshold", DUPLICATE_THRESHOLD) if p.get("pixel_check", True) else None,
            pixel_k=p.get("pixel_k", PIXEL_K), influence_run=p.get("influence_run") or None, keep=p.get("keep", "first"),
            split=None if p.get("split", "auto") == "auto" else p["split"], progress=progress)
        return out

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("num_groups", label="Duplicate groups")
        outputs.str("split", label="Split used for the leaky-split check (None: no split found)")
        outputs.obj("leaky_fraction", label="Fraction of each split with a duplicate in another split")
        outputs.int("num_exact_groups", label="...of which byte-identical copies (found by hashing)")
        outputs.int("num_in_groups", label="Samples in groups")
        outputs.int("num_to_drop", label="Duplicates an export would drop (keep = False)")
        outputs.list("saved_views", types.String(), label="Saved views")
        return types.Property(outputs, view=types.View(label="Near-duplicates"))


class FindQualityIssues(CurationOperator):
    @property
    def config(self):
        return operator_config("find_quality_issues", "SSL curation: find image quality issues",
                               "Too dark, too bright, blurry, low information, grayscale, odd aspect ratio or size")

    def resolve_input(self, ctx):
        from fo_plugin.core.quality import THRESHOLDS
        from fo_plugin.quality import quality_fields

        inputs = types.Object()
        add_target(ctx, inputs)
        inputs.view("about", types.Notice(label="A sample is flagged when a flag's statistic exceeds its threshold "
                                                "(higher = worse); the defaults flag well under 1% of ordinary photos"))
        for flag, default in THRESHOLDS.items():
            bounded_float(ctx, inputs, f"threshold_{flag}", default, f"{flag.replace('_', ' ')} threshold", 0.0,
                          1e6)
        add_run_key(ctx, inputs, "quality", lambda k: quality_fields(k).values())
        return types.Property(inputs, view=types.View(label="Find image quality issues"))

    def run(self, ctx, progress):
        from fo_plugin import find_quality_issues
        from fo_plugin.core.quality import THRESHOLDS

        p = ctx.params
        out = find_quality_issues(ctx.target_view(), p.get("run_key") or "quality",
                                  thresholds={f: p[f"threshold_{f}"] for f in THRESHOLDS
                                              if p.get(f"threshold_{f}") is not None},
                                  progress=progress)
        out["counts_table"] = [{"flag": f, "samples": n, "threshold": out["thresholds"][f]}
                               for f, n in out["counts"].items()]
        return out

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("num_flagged", label="Images with at least one issue")
        outputs.int("num_skipped", label="Images that could not be read (see the error field)")
        table = types.TableView()
        for c in ("flag", "samples", "threshold"):
            table.add_column(c, label=c)
        outputs.list("counts_table", types.Object(), label="Flags", view=table)
        return types.Property(outputs, view=types.View(label="Image quality issues"))


class FindOutliers(CurationOperator):
    @property
    def config(self):
        return operator_config("find_outliers", "SSL curation: find outliers",
                       "Multi-scale kNN distance in the SSL embedding space (optionally with influence)")

    def resolve_input(self, ctx):
        from fo_plugin import runs
        from fo_plugin.outliers import outlier_fields

        inputs = types.Object()
        add_target(ctx, inputs)
        if not _embeddings_input(ctx, inputs):
            return types.Property(inputs)
        bounded_float(ctx, inputs, "fraction", 0.02, "Fraction to flag", 0.0, 1.0,
                       "Pick it by eye from the histogram of a first run; 0 flags none")
        inputs.bool("image_stats", default=True, label="Combine image statistics",
                    description="Colour, exposure, sharpness, entropy, edges: catches documents, textures, drawings, "
                                "screenshots and flat colour that an embedding of photos can miss")
        infl = runs.list_runs(ctx.dataset, "ssl_influence")
        if infl:
            dropdown(inputs, "influence_run", infl, "Also combine self-influence (optional)")
        add_run_key(ctx, inputs, "outliers", lambda k: outlier_fields(k).values())
        return types.Property(inputs, view=types.View(label="Find outliers"))

    def run(self, ctx, progress):
        from fo_plugin import find_outliers

        p = ctx.params
        out = find_outliers(ctx.target_view(), p.get("run_key") or "outliers",
                            embeddings_field=p.get("embeddings_field", "ssl_embedding"),
                            fraction=p.get("fraction", 0.02), influence_run=p.get("influence_run") or None,
                            image_stats=p.get("image_stats", True),
                            progress=progress)
        h = out["histogram"]
        centres = [(a + b) / 2 for a, b in zip(h["edges"][:-1], h["edges"][1:])]
        out["histogram_plot"] = [{"type": "bar", "x": centres, "y": h["counts"], "name": "samples"}]
        return out

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("num_flagged", label="Outliers flagged")
        outputs.float("cutoff", label="Score cut-off")
        outputs.plot("histogram_plot", label="Outlier score histogram",
                     layout={"xaxis": {"title": "outlier score"}, "yaxis": {"title": "samples"}, "height": 300})
        return types.Property(outputs, view=types.View(label="Outliers"))


class AuditSubgroups(CurationOperator):
    @property
    def config(self):
        return operator_config("audit_subgroups", "SSL curation: subgroup audit",
                       "Over- / under-representation of groups among influential, hard, outlier, duplicate, pruned")

    def resolve_input(self, ctx):
        from fo_plugin.audit import PROPERTIES

        inputs = types.Object()
        add_target(ctx, inputs)
        fields = categorical_fields(ctx.dataset) + list(PROPERTIES)
        dropdown(inputs, "group_field", fields, "Group by", required=True,
                  description="A categorical field, or an image property binned into quartiles")
        bounded_float(ctx, inputs, "top_fraction", 0.05, "Top fraction (influence, hardness)", 0.001, 1.0)
        inputs.str("run_key", default="audit", label="Run key")
        return types.Property(inputs, view=types.View(label="Subgroup audit"))

    def run(self, ctx, progress):
        from fo_plugin import audit_subgroups

        p = ctx.params
        out = audit_subgroups(ctx.target_view(), p["group_field"], p.get("run_key") or "audit",
                              top_fraction=p.get("top_fraction", 0.05))
        traces = {}
        for r in out["rows"]:
            traces.setdefault(r["selection"], {"type": "bar", "name": r["selection"], "x": [], "y": []})
            traces[r["selection"]]["x"].append(r["group"])
            traces[r["selection"]]["y"].append(r["ratio"])
        out["ratio_plot"] = list(traces.values())
        out["table"] = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in out["rows"]]
        return out

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.plot("ratio_plot", label="Share in selection / share overall (1 = proportional)",
                     layout={"barmode": "group", "yaxis": {"title": "over-representation ratio"}, "height": 360})
        table = types.TableView()
        for c in ("selection", "group", "n_group_selected", "n_selected", "share_overall", "share_selected",
                  "ratio", "p_value"):
            table.add_column(c, label=c)
        outputs.list("table", types.Object(), label="Audit", view=table)
        return types.Property(outputs, view=types.View(label="Subgroup audit"))


class ExportCurated(CurationOperator):
    @property
    def config(self):
        return operator_config("export_curated", "SSL curation: export curated subset",
                       "Write the curated subset to a new dataset or directory; the source is never modified")

    def resolve_input(self, ctx):
        from fo_plugin import runs
        from fo_plugin.export import EXPORT_TYPES, curation_plan

        inputs = types.Object()
        add_target(ctx, inputs)
        for method, name, label in (("near_duplicates", "duplicates_run", "Drop non-representative duplicates of"),
                                    ("outliers", "outliers_run", "Drop outliers flagged by"),
                                    ("clcore", "clcore_run", "Keep the CL-Core subset of")):
            keys = runs.list_runs(ctx.dataset, method)
            if keys:
                dropdown(inputs, name, keys, label + " (optional)")
        if ctx.params.get("clcore_run"):
            inputs.float("drop_least_fraction", label="...or only drop this least-valuable fraction (optional)")
        inputs.str("keep_tag", label="Keep only samples with this tag (optional)")
        inputs.str("name", label="New dataset name", description="Leave empty to only export files")
        inputs.str("export_dir", label="Export directory (new or empty; optional)")
        dropdown(inputs, "export_type", list(EXPORT_TYPES), "Export format", default="fiftyone")
        inputs.str("label_field", label="Label field (classification tree / COCO)")
        p = ctx.params
        plan = {k: p.get(k) or None for k in ("duplicates_run", "outliers_run", "clcore_run", "keep_tag")}
        plan["drop_least_fraction"] = p.get("drop_least_fraction")
        try:
            target = ctx.target_view()
            kept, _ = curation_plan(target, **plan)
            n_kept, n_all = len(kept), len(target)
            msg = (f"Keeps {n_kept} of {n_all} samples and leaves out {n_all - n_kept} "
                   f"(listed with reasons in removed_manifest.csv). The source dataset is not modified.")
            inputs.view("warning", types.Warning(label=msg))
        except ValueError as e:
            inputs.view("error", types.Error(label=str(e)))
        prop = inputs.bool("confirm", default=False, label="Create the curated copy", required=True)
        if not p.get("confirm"):
            prop.invalid = True
            prop.error_message = "Confirm to create the curated copy"
        if not (p.get("name") or p.get("export_dir")):
            prop.invalid = True
            prop.error_message = "Give a new dataset name or an export directory"
        elif p.get("name") and fo.dataset_exists(p["name"]):
            prop.invalid = True
            prop.error_message = f"Dataset {p['name']!r} already exists: choose a new name"
        return types.Property(inputs, view=types.View(label="Export curated subset"))

    def run(self, ctx, progress):
        from fo_plugin import export_curated

        p = ctx.params
        if not p.get("confirm"):
            raise ValueError("export not confirmed")
        return export_curated(
            ctx.target_view(), name=p.get("name") or None, export_dir=p.get("export_dir") or None,
            export_type=p.get("export_type", "fiftyone"), label_field=p.get("label_field") or None,
            duplicates_run=p.get("duplicates_run") or None, outliers_run=p.get("outliers_run") or None,
            clcore_run=p.get("clcore_run") or None, drop_least_fraction=p.get("drop_least_fraction"),
            keep_tag=p.get("keep_tag") or None)

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("num_kept", label="Samples kept")
        outputs.int("num_removed", label="Samples left out")
        outputs.str("dataset", label="New dataset")
        outputs.str("manifest", label="Manifest of removed samples")
        return types.Property(outputs, view=types.View(label="Curated subset written"))
