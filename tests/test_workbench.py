"""The curation panel's data (fo_plugin.workbench, export_plan) on real runs, and show_duplicate_group through
FiftyOne's operator execution."""

import os
import tempfile

from conftest import run_op


def _runs(ds):
    import fo_plugin

    dups = fo_plugin.find_near_duplicates(ds, "wb_dups", overwrite=True)
    outl = fo_plugin.find_outliers(ds, "wb_outl", fraction=0.05, overwrite=True)
    return dups, outl


def test_counts_histograms_and_plan_match_the_runs_and_the_export(curation_dataset):
    from fo_plugin import workbench
    from fo_plugin.export import export_curated, export_plan

    ds = curation_dataset
    dups, outl = _runs(ds)
    assert dups["num_groups"] > 0 and outl["num_flagged"] > 0
    by_key = {r["key"]: r for r in workbench.list_overview(ds)}
    assert by_key["wb_dups"]["counts"]["duplicate groups"] == dups["num_groups"]
    assert by_key["wb_dups"]["counts"]["samples to drop"] == dups["num_to_drop"]
    assert by_key["wb_outl"]["counts"]["outliers flagged"] == outl["num_flagged"]
    assert by_key["wb_dups"]["status"] == "complete" and by_key["wb_dups"]["settings"]["threshold"] > 0
    hists = {h["run"]: h for h in workbench.score_histograms(ds)}
    assert sum(hists["wb_outl"]["counts"]) == outl["num_scored"]
    assert hists["wb_outl"]["threshold"] == outl["cutoff"]
    plan = {"duplicates_run": "wb_dups", "outliers_run": "wb_outl"}
    dry = export_plan(ds, **plan)
    with tempfile.TemporaryDirectory() as d:
        done = export_curated(ds, export_dir=os.path.join(d, "out"), export_type="image_directory", **plan)
    assert (dry["num_kept"], dry["num_removed"], dry["removed_by_reason"]) == \
        (done["num_kept"], done["num_removed"], done["removed_by_reason"])
    assert dry["num_kept"] + dry["num_removed"] == len(ds)


def test_show_duplicate_group_operator_orders_kept_first_with_the_pair_evidence(curation_dataset):
    from fiftyone import ViewField as F

    from fo_plugin import runs

    ds = curation_dataset
    if "wb_dups" not in runs.list_runs(ds):
        _runs(ds)
    dropped = ds.match(F("wb_dups_keep") == False).first()  # noqa: E712
    res = run_op("show_duplicate_group", ds, {"run_key": "wb_dups", "sample_id": dropped.id})
    assert res.error is None, res.error
    out = res.result
    members = ds.match(F("wb_dups_group") == dropped["wb_dups_group"])
    assert sorted(out["ids"]) == sorted(members.values("id"))
    assert out["ids"][0] == out["keep"] and ds[out["keep"]]["wb_dups_keep"] is True
    assert out["pairs"] and all({p["a"], p["b"]} <= set(out["ids"]) for p in out["pairs"])
    assert all("cosine=" in e for e in out["evidence"])
    alone = ds.match(F("wb_dups_group") == None).first()  # noqa: E711
    assert run_op("show_duplicate_group", ds, {"run_key": "wb_dups", "sample_id": alone.id}).result["group"] is None


def test_panel_renders_the_runs_counts_and_plan(curation_dataset):
    import json

    from fo_plugin import runs, workbench

    ds = curation_dataset
    if "wb_dups" not in runs.list_runs(ds):
        _runs(ds)
    from fiftyone.operators.executor import ExecutionContext, Executor

    from operators.panel import CurationPanel

    ctx = ExecutionContext(request_params={"dataset_name": ds.name, "panel_id": "p1", "params": {
        "panel_id": "p1", "__method__": "on_load", "state": {}, "event_args": {}}}, executor=Executor())
    panel = CurationPanel()
    panel.on_load(ctx)
    rendered = json.dumps(panel.render(ctx).to_json())
    counts = {r["key"]: r["counts"] for r in workbench.list_overview(ds)}
    assert f"duplicate groups: **{counts['wb_dups']['duplicate groups']}**" in rendered
    assert f"outliers flagged: **{counts['wb_outl']['outliers flagged']}**" in rendered
