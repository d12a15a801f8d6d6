"""The App in headless Chromium uses our SSL embeddings: "sort by similarity" through our Brain similarity index
returns our nearest neighbours in the grid, and the Embeddings panel shows our 2-D map of every sample.

The sorted view reaches the App as a FiftyOne session's state (what ``session.view = ds.sort_by_similarity(...)``
does), so the App server itself evaluates the SortBySimilarity stage with our index; the grid's order is read from
the samples the server sends to the page. Screenshots: artifacts/app_similarity.png, artifacts/app_embeddings_map.png.

Needs Debian's chromium and tests/app/node_modules (``make app-deps``)."""

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import torch
from app_browser import APP_DIR, ARTIFACTS, free_port, needs_browser, start_server

SIM, MAP = "ssl_embedding_sim", "ssl_embedding_map"
pytestmark = needs_browser

# a FiftyOne session in its own process (the App server is a service of it), its view sorted by similarity
LAUNCH = """
import sys, time
import fiftyone as fo
name, query, k, key, port = sys.argv[1:6]
ds = fo.load_dataset(name)
session = fo.launch_app(view=ds.sort_by_similarity(query, k=int(k), brain_key=key), port=int(port),
                        address="127.0.0.1", auto=False, remote=True)
print("READY", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


@pytest.fixture(scope="module")
def similar_app(embedded):
    """The App serving the embedded cifar dataset sorted by similarity to a near-copy (its original is known)."""
    ds, _ = embedded
    ds.persistent = True  # the App server is another process
    query = ds.match_tags("copy").first()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    proc = start_server([sys.executable, "-c", LAUNCH, ds.name, query.id, "10", SIM, str(port)], url, 180,
                        stdin=subprocess.PIPE)
    time.sleep(3)  # the session pushes its view once connected
    try:
        yield ds, query, url
    finally:
        proc.stdin.close()
        proc.terminate()
        proc.wait(timeout=30)
        ds.persistent = False


def test_sort_by_similarity_and_the_embeddings_map_in_the_app(similar_app):
    ds, query, url = similar_app
    os.makedirs(ARTIFACTS, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(["node", os.path.join(APP_DIR, "drive_similarity.js"), url, ARTIFACTS, MAP,
                              "ground_truth.label", profile], cwd=APP_DIR, capture_output=True, text=True,
                             timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    page = json.loads(out.stdout.strip().splitlines()[-1])

    # the grid: the query, then its nearest neighbours by our kNN on the (Brain-centred) SSL embeddings
    from fo_plugin.core.knn import knn

    ids = ds.values("id")
    x = torch.as_tensor(np.stack(ds.values("ssl_embedding")))
    idx, _ = knn(x - x.mean(dim=0), 9, method="exact")  # Brain's sklearn index centres before its cosine
    ours = [ids[j] for j in idx[ids.index(query.id)]]
    grid = page["grid"]
    assert len(grid) == 10 and grid[0] == query.id
    assert grid[1] == query.copy_of  # a near-copy's original is its nearest neighbour
    assert len(set(grid[1:]) & set(ours)) >= 8, (grid, ours)
    assert grid == ds.sort_by_similarity(query.id, k=10, brain_key=SIM).values("id")
    assert "10 samples" in page["grid_text"]

    # the Embeddings panel: our map, one point per sample of the dataset
    assert MAP in page["map_text"] and f"{len(ds)} points" in page["map_text"]
    assert page["colored"], page["color_options"]  # coloured by a field of the dataset (here the label)
    for shot in ("app_similarity.png", "app_embeddings_map.png"):
        assert os.path.getsize(os.path.join(ARTIFACTS, shot)) > 10_000
