"""The curation workbench panel and the ``show_duplicate_group`` operator. Thin: every number comes from
:mod:`fo_plugin.workbench` (tested without the App); this module only renders it."""

from __future__ import annotations

import fiftyone.operators as foo
from fiftyone.operators import types

PLUGIN = "@fo-ssl/ssl-curation"
PANEL = "ssl_curation_panel"
_STORE = "ssl_curation_panels"  # the dataset's open curation panels: one key per panel (an execution store)
_OPEN_TTL = 24 * 3600  # renewed on each load and refresh; a tab closed without unloading is forgotten in a day


def refresh_open_panels(ctx) -> list:
    """Triggers that make the open curation panels of this dataset re-read the runs, so a finished run shows at
    once (``refresh`` is the panel's own method, called through FiftyOne's ``<panel>#<method>`` URI). A trigger
    reaches the App session that ran the operator; panels open elsewhere refresh on their next load or Refresh."""
    return [ctx.trigger(f"{PLUGIN}/{PANEL}#refresh", {"panel_id": key.removeprefix("panel:")})
            for key in ctx.store(_STORE).list_keys() if key.startswith("panel:")]


def _remember(ctx, is_open: bool) -> None:
    if ctx.dataset is None or not ctx.panel_id:
        return
    store = ctx.store(_STORE)
    if is_open:
        store.set(f"panel:{ctx.panel_id}", True, ttl=_OPEN_TTL)
    else:
        store.delete(f"panel:{ctx.panel_id}")


class CurationPanel(foo.Panel):
    @property
    def config(self):
        return foo.PanelConfig(name=PANEL, label="SSL curation", surfaces="grid",
                               help_markdown="Runs of the SSL-curation plugin, their counts, score histograms, "
                                             "saved views and the export plan.")

    def on_load(self, ctx):
        _remember(ctx, True)
        self._refresh(ctx)

    def on_unload(self, ctx):
        _remember(ctx, False)

    def on_change_dataset(self, ctx):
        _remember(ctx, True)  # under the new dataset (the old one's key expires)
        self._refresh(ctx)

    def refresh(self, ctx):
        _remember(ctx, True)
        self._refresh(ctx)

    def _refresh(self, ctx):
        from fo_plugin import workbench
        from fo_plugin.export import export_plan

        for h in workbench.score_histograms(ctx.dataset):
            x = [(a + b) / 2 for a, b in zip(h["edges"][:-1], h["edges"][1:])]
            traces = [{"type": "bar", "x": x, "y": h["counts"], "name": h["field"]}]
            if h["threshold"] is not None:
                traces.append({"type": "scatter", "mode": "lines", "x": [h["threshold"]] * 2,
                               "y": [0, max(h["counts"] or [0])], "name": f"threshold {h['threshold']:.3g}"})
            ctx.panel.set_data(f"hist_{h['run']}", traces)
        plan = workbench.default_plan(ctx.dataset)
        try:
            ctx.panel.set_state("plan", {**export_plan(ctx.dataset, **plan), "plan": plan} if plan else None)
        except ValueError as e:
            ctx.panel.set_state("plan", {"error": str(e)})

    def open_view(self, ctx):
        ctx.ops.set_view(name=ctx.params.get("name"))

    def open_export(self, ctx):
        plan = ctx.panel.get_state("plan") or {}
        ctx.prompt(f"{PLUGIN}/export_curated", params=plan.get("plan") or {})

    def show_group(self, ctx):
        ctx.prompt(f"{PLUGIN}/show_duplicate_group")

    def render(self, ctx):
        from fo_plugin import workbench

        panel = types.Object()
        overview = workbench.list_overview(ctx.dataset)
        panel.btn("refresh", label="Refresh", on_click=self.refresh)
        if not overview:
            panel.md("No SSL-curation runs on this dataset yet.", name="empty")
        for i, r in enumerate(overview):
            counts = "\n".join(f"- {k}: **{v}**" for k, v in r["counts"].items())
            # scalar settings only: nested ones (backbone, augmentation) are long dicts that swamp the panel
            settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items()
                                 if isinstance(v, (str, int, float, bool)) and len(str(v)) < 40)
            panel.md(f"**{r['key']}** · {r['method']} · {r['status']} · {r['when'][:19]}\n\n{counts}\n\n"
                     + (f"*{settings}*" if settings else ""), name=f"run_{i}")
            if r["status"] == "complete" and r["method"] in ("near_duplicates", "outliers"):
                panel.plot(f"hist_{r['key']}", layout={"title": f"{r['key']}_score", "height": 220})
            for j, v in enumerate(r["saved_views"]):
                panel.btn(f"view_{i}_{j}", label=f"Open view: {v}", on_click=self.open_view, params={"name": v})
        plan = ctx.panel.get_state("plan")
        if plan and "error" not in plan:
            reasons = "\n".join(f"- {k}: **{v}**" for k, v in plan["removed_by_reason"].items())
            panel.md(f"**Export plan**: keeps **{plan['num_kept']}** of {plan['num_source']}, removes "
                     f"**{plan['num_removed']}**\n\n{reasons}", name="plan_text")
            panel.btn("export", label="Export curated...", on_click=self.open_export)
        elif plan:
            panel.md(f"**Export plan**: {plan['error']}", name="plan_text")
        panel.btn("group", label="Show the selected sample's duplicate group", on_click=self.show_group)
        return types.Property(panel, view=types.GridView(orientation="vertical"))


class ShowDuplicateGroup(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="show_duplicate_group", label="SSL curation: show a sample's duplicate group",
                                  dynamic=True)

    def resolve_input(self, ctx):
        from fo_plugin import runs

        inputs = types.Object()
        keys = [k for k in runs.list_runs(ctx.dataset, "near_duplicates")
                if (runs.get_config(ctx.dataset, k) or {}).get("status") == "complete"]
        if not keys:
            inputs.view("none", types.Warning(label="No complete near-duplicates run: run find_near_duplicates first"))
            return types.Property(inputs)
        inputs.enum("run_key", keys, default=keys[-1], label="Near-duplicates run")
        inputs.str("sample_id", default=(ctx.selected or [None])[0], label="Sample id (default: the selected one)")
        return types.Property(inputs)

    def execute(self, ctx):
        from fo_plugin import workbench

        sid = ctx.params.get("sample_id") or (ctx.selected or [None])[0]
        if not sid:
            raise ValueError("select a sample first")
        g = workbench.duplicate_group(ctx.dataset, ctx.params["run_key"], sid)
        if g is None:
            return {"group": None, "message": f"sample {sid} is in no duplicate group"}
        ctx.ops.set_view(view=ctx.dataset.select(g["ids"], ordered=True))
        return {**g, "evidence": [workbench.format_evidence(p) for p in g["pairs"]]}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("keep", label="Kept member")
        outputs.list("ids", types.String(), label="Members (kept first)")
        outputs.list("evidence", types.String(), label="Pair evidence")
        return types.Property(outputs)
