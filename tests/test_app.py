"""The App in headless Chromium: it serves our dataset, lists our operators in the operator browser, and renders
an operator's form; the curation panel shows a run's counts and opens its saved view; an operator executed from its
form shows its outputs and the open panel lists the new run. Screenshots are kept in artifacts/ (the README shows
some).

Needs Debian's chromium and tests/app/node_modules (``make app-deps``, run by ``make test``)."""

import json
import os
import subprocess
import sys
import tempfile

import pytest
from app_browser import APP_DIR, ARTIFACTS, free_port, needs_browser, start_server

pytestmark = needs_browser


@pytest.fixture(scope="module")
def app_server(curation_dataset):
    import fo_plugin

    ds = curation_dataset
    ds.persistent = True  # the App server is another process
    fo_plugin.find_outliers(ds, "outliers", fraction=0.05, overwrite=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server([sys.executable, "-m", "fiftyone.server.main", "--port", str(port), "--address", "127.0.0.1"],
                        url, 120)
    yield ds, url
    proc.terminate()
    proc.wait(timeout=30)
    ds.persistent = False


def test_app_lists_our_operators_renders_a_form_and_the_curation_panel(app_server):
    ds, url = app_server
    os.makedirs(ARTIFACTS, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(["node", os.path.join(APP_DIR, "drive_app.js"), f"{url}/datasets/{ds.name}", ARTIFACTS,
                              "SSL curation: find outliers", profile, "SSL curation: find image quality issues",
                              "Image quality issues"],
                             cwd=APP_DIR, capture_output=True, text=True, timeout=420)
    assert out.returncode == 0, out.stderr[-2000:]
    pages = json.loads(out.stdout.strip().splitlines()[-1])
    for label in ("SSL curation: compute SSL embeddings", "SSL curation: CL-Core (SAS) subset",
                  "SSL curation: label-free influence", "SSL curation: find near-duplicates",
                  "SSL curation: find outliers", "SSL curation: find image quality issues",
                  "SSL curation: export curated subset"):
        assert label in pages["listed"], f"{label!r} not in the operator browser"
    assert "Fraction to flag" in pages["form"] and "Embeddings field" in pages["form"]
    assert "Combine image statistics" in pages["form"]
    # the curation panel shows the run's own counts, and its "Open view" button loads that saved view in the grid
    from fo_plugin import workbench

    counts = workbench.run_counts(ds, "outliers")
    assert counts["outliers flagged"] > 0
    for label, n in counts.items():
        assert f"{label}: {n}" in pages["panel"], f"{label}: {n} not shown in the panel"
    assert "Export plan: keeps" in pages["panel"] and "Traceback" not in pages["panel"]
    name = pages["view"].removeprefix("Open view: ")
    assert pages["countBefore"].startswith(f"{len(ds):,} samples")
    assert pages["countAfter"].startswith(f"{len(ds.load_saved_view(name)):,}"), (pages["countAfter"], name)
    # an operator executed in the App (a generator: progress streamed) shows its outputs when it ends, and the open
    # panel lists the new run without a click on Refresh
    ds.reload()  # the run was recorded by the App's server process
    quality = [r for r in workbench.list_overview(ds) if r["key"] == "quality"]
    assert quality and quality[0]["status"] == "complete", "the quality run executed in the App did not complete"
    assert "Images with at least one issue" in pages["ran"], pages["ran"][-1500:]
    header = f"{quality[0]['key']} · {quality[0]['method']} · complete"
    assert header not in pages["panel"] and header in pages["panelAfterRun"], pages["panelAfterRun"][-1500:]
    for label, n in workbench.run_counts(ds, "quality").items():
        assert f"{label}: {n}" in pages["panelAfterRun"], f"{label}: {n} not shown after the run"
    for shot in ("app_grid.png", "app_operator_browser.png", "app_operator_form.png", "app_panel.png",
                 "app_panel_view.png", "app_operator_output.png", "app_panel_after_run.png"):
        assert os.path.getsize(os.path.join(ARTIFACTS, shot)) > 10_000
