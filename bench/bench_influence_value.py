"""What label-free influence adds to outlier detection and to near-duplicate confirmation, per curvature, in one run.

Material (all 32 px, real CIFAR-10 train JPEGs): ``--n`` photos; planted out-of-domain images, ``--per-kind``
scattered images of each ``core.ood_images`` kind (documents, textures, line drawings, microscopy, screenshots, flat)
and one tight group of ``--group`` jittered crops of one MNIST digit (``ood_group("digits")``), JPEG-encoded like the
CIFAR files; planted near-duplicate pairs, ``--dups`` copies of each ``core.transforms`` kind, each of another train
image that is added too. A SimCLR proxy is trained ``--epochs`` on all of it (as ``compute_ssl_embeddings`` does);
its features are the SSL embedding, and influence (K = 4, projection output) is taken on it with each curvature:
``identity`` (||g||^2), ``diagonal`` (diagonal empirical Fisher), ``ekfac`` (EK-FAC, the paper's).

Outliers: AUROC of each planted kind against the photos (the duplicate pairs count as photos) for the default outlier
score (``outlier_scores`` with the embedding and image statistics), for self-influence alone (each curvature), and
for the default score with self-influence as an extra Fisher component (weight 1, as ``find_outliers(...,
influence_run=...)`` combines it).

Duplicates: candidates are the product's (each other's 10 nearest neighbours with cosine >= 0.8 in the embedding)
UNION the planted pairs (so recall measures the confirmation step; the candidate recall is printed); pairs touching
the digit group (which are near-copies of one another by construction) are left out. Precision and recall of the
aligned verifier alone (score >= ``DUPLICATE_THRESHOLD``) vs the verifier AND an influence-gradient cosine >=
0.5 / 0.7 / 0.9 (0.9: ``find_near_duplicates``' ``influence_threshold`` default), the cosine under each curvature's
metric, exact (no sketch): identity cos(g_a, g_b) (what the influence run's gradient sketch approximates for identity
AND for ekfac runs: the sketch is of the raw gradient there); diagonal cos(D^-1/2 g_a, D^-1/2 g_b) (the sketch of a
diagonal run); EK-FAC the normalised train-to-sample influence -I(a, b) / sqrt(SI(a) SI(b)) (EK-FAC pairwise
scores among the verifier-confirmed pairs' members). Also the AUROC of each cosine for telling the true pairs from
the false ones among the verifier-confirmed pairs (0.5: it adds nothing there; below 0.5: it prefers false pairs).
The EK-FAC factors are fitted on ``--fit-max`` images (``EKFAC.fit``'s max_examples), then score all.

Measured (seed 0 with the defaults, 652 images, 27 min on the 2-core machine under a load of ~8, EK-FAC 17 min of
it, ~4 min on an idle one by the README's per-sample costs; seed 1 with --n 400 --fit-max 200, 25 min): see the
README ("Label-free influence"). Neither use earned a default. Self-influence alone ranks the planted kinds at or
below the photos (AUROC 0.09-0.67; the digit group 0.09 on seed 1) except screenshots (0.60-0.96). As a fourth Fisher component it
changes the worst kind 0.926 -> 0.857-0.871 (seed 0) and 0.864 -> 0.835-0.893 (seed 1): identity helps on seed 1
only, diagonal and EK-FAC on neither. The gradient cosine after the aligned verifier mostly removes planted pairs:
at 0.9, recall 0.97 -> 0.00-0.50 (seed 0) and 0.11-0.47 (seed 1), removing 2-4 of the 4 false pairs (seed 0) and
the 1 (seed 1). (Seed 0 ran with the outlier defaults before the group term, seed 1 with it at GROUP_Z 6.)
Re-run at today's outlier defaults (tails 1.5, group term at GROUP_Z 4, the spot statistics; identity and diagonal
only, ``--curvatures identity,diagonal``, the other defaults; 3.4 / 2.2 min, seeds 0 / 1): the default score's worst
kind 0.926 / 0.933 (screenshots / microscopy-like); with self-influence as a fourth component 0.942 / 0.969
(identity: screenshots 0.926 -> 0.985 and 0.948 -> 0.977, microscopy-like 0.961 -> 0.942 and 0.933 -> 0.969, the
others within -0.008) and 0.936 / 0.943 (diagonal). Duplicates: cosine >= 0.9 after the verifier, recall 0.97 ->
0.50 / 0.53 (identity), 0.42 / 0.42 (diagonal), removing 1 of 3 / 2 of 2 false pairs; AUROC among verified pairs
0.28 / 0.71 (identity). EK-FAC not re-run.

    nice python bench/bench_influence_value.py [--n 500] [--epochs 10] [--seed 0] [--fit-max 300]
        [--curvatures identity,diagonal,ekfac]   (a subset skips the others; without ekfac most of the time)
"""

from __future__ import annotations

import argparse
import tempfile
import time

import common  # noqa: F401  (environment, sys.path)
import numpy as np
import torch
from bench_outliers import cifar, jpeg
from torch import nn

from fo_plugin.core import transforms
from fo_plugin.core.backbones import Backbone, BackboneSpec
from fo_plugin.core.duplicates import DUPLICATE_THRESHOLD, embedding_candidates
from fo_plugin.core.ekfac import EKFAC
from fo_plugin.core.embed import embed_array
from fo_plugin.core.image_stats import image_stats
from fo_plugin.core.images import to_float
from fo_plugin.core.influence import InfluenceConfig, SSLOutput, fit_diagonal, per_example_grads
from fo_plugin.core.ood_images import KINDS, ood_group, ood_images
from fo_plugin.core.outliers import auroc, outlier_scores
from fo_plugin.core.rng import sample_keys
from fo_plugin.core.train import TrainConfig, train_proxy
from fo_plugin.core.verify import aligned_pair_scores

CURVATURES = ("identity", "diagonal", "ekfac")


def material(a) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """images (N, 32, 32, 3), kind per image ("none" = photo), planted pairs (P, 2), kind per pair (P,)."""
    rng = np.random.default_rng(a.seed)
    n_src = a.dups * len(transforms.KINDS)
    photos = cifar(a.n + n_src, seed=a.seed)
    pop, orig = photos[:a.n], photos[a.n:]
    dkind = np.repeat(transforms.KINDS, a.dups)
    copies = np.stack([transforms.apply(im, k, rng) for im, k in zip(orig, dkind)])
    ood = [(k, ood_images(k, a.per_kind, 32, a.seed + 1)) for k in KINDS]
    ood.append(("digit_group", ood_group("digits", a.group, 32, a.seed + 1)))
    images = np.concatenate([pop, orig, copies] + [jpeg(v) for _, v in ood])
    kind = np.array(["none"] * (a.n + 2 * n_src) + [k for k, v in ood for _ in v])
    pairs = np.stack([a.n + np.arange(n_src), a.n + n_src + np.arange(n_src)], 1)
    return images, kind, pairs, dkind


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--per-kind", type=int, default=10)
    ap.add_argument("--group", type=int, default=20)
    ap.add_argument("--dups", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--num-augs", type=int, default=4)
    ap.add_argument("--fit-max", type=int, default=300, help="images the EK-FAC factors are fitted on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--curvatures", default=",".join(CURVATURES),
                    help="comma-separated subset of identity,diagonal,ekfac (EK-FAC is most of the run's time)")
    a = ap.parse_args()
    unknown = set(a.curvatures.split(",")) - set(CURVATURES)
    if unknown:
        ap.error(f"unknown curvature(s) {sorted(unknown)}: choose from {CURVATURES}")
    curv = tuple(c for c in CURVATURES if c in a.curvatures.split(","))
    torch.set_num_threads(2)
    dev, bs, t0 = torch.device("cpu"), 64, time.perf_counter()
    images, kind, true, dkind = material(a)
    n = len(images)
    proxy, _ = train_proxy(images, sample_keys(range(n)), TrainConfig(epochs=a.epochs, seed=a.seed), dev)
    emb = torch.as_tensor(embed_array(proxy.features, images, 32, dev))
    stats = image_stats(images)
    print(f"{n} images ({a.n} photos, {len(true)} planted pairs, {int((kind != 'none').sum())} out-of-domain); "
          f"proxy {a.epochs} epochs + embedding: {time.perf_counter() - t0:.0f} s")

    # duplicate candidates and the verifier, before influence: its confirmed pairs' members get pairwise influence
    cand = embedding_candidates(emb, 10, 0.8)[:, :2].astype(np.int64)
    key, tkey = cand[:, 0] * n + cand[:, 1], true[:, 0] * n + true[:, 1]
    print(f"candidate pairs {len(cand)}, holding {np.isin(tkey, key).mean():.2f} of the planted pairs")
    pairs = np.unique(np.concatenate([cand, true]), axis=0)
    grp = kind == "digit_group"
    pairs = pairs[~(grp[pairs[:, 0]] | grp[pairs[:, 1]])]
    is_true = np.isin(pairs[:, 0] * n + pairs[:, 1], tkey)
    ver = aligned_pair_scores(images, pairs)["score"] >= DUPLICATE_THRESHOLD
    members = np.unique(pairs[ver].ravel())
    pos = {int(m): r for r, m in enumerate(members)}  # image -> row of the members' matrices

    net = Backbone(nn.Identity(), 32, proxy.cfg.mean, proxy.cfg.std, BackboneSpec(), proxy=proxy).to(dev).eval()
    f = SSLOutput(net).eval()

    def batches():
        for s in range(0, n, bs):
            yield to_float(images[s:s + bs], dev)

    si, gm, secs = {}, {}, {}
    t = time.perf_counter()
    g_all = [per_example_grads(f, x, InfluenceConfig(num_augs=a.num_augs)) for x in batches()]  # [(B, P)]
    secs["identity"] = time.perf_counter() - t
    si["identity"] = torch.cat([g.double().pow(2).sum(1) for g in g_all]).numpy()
    g_mem = torch.cat(g_all)[torch.as_tensor(members)]  # (M, P)
    gm["identity"] = g_mem
    t = time.perf_counter()
    cfg = InfluenceConfig(num_augs=a.num_augs, curvature="diagonal")
    diag, lam = fit_diagonal(f, None, cfg, sums=(sum(g.pow(2).sum(0) for g in g_all), n))
    scale = (diag + lam).rsqrt()
    si["diagonal"] = torch.cat([(g * scale).double().pow(2).sum(1) for g in g_all]).numpy()
    gm["diagonal"] = g_mem * scale
    secs["diagonal"] = secs["identity"] + time.perf_counter() - t
    del g_all
    cos = {}
    if "ekfac" in curv:
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            ek = EKFAC(f, InfluenceConfig(num_augs=a.num_augs, curvature="ekfac"), d, dev, bs)
            ek.fit(images, a.fit_max)
            si["ekfac"] = ek.self_influence(images)
            secs["ekfac"] = time.perf_counter() - t
            inf = -ek.pairwise(images[members], images[members]) if len(members) else np.zeros((0, 0))  # g^T H^-1 g
        dd = np.sqrt(np.clip(np.diag(inf), 1e-30, None))
        cos["ekfac"] = inf / dd[:, None] / dd[None, :]
    for c in ("identity", "diagonal"):
        u = torch.nn.functional.normalize(gm[c].double(), dim=1)
        cos[c] = (u @ u.T).numpy()
    print("influence seconds (all images): " + ", ".join(f"{c} {secs[c]:.0f}" for c in curv) +
          f"; P = {g_mem.shape[1]} parameters" + (f"; pairwise EK-FAC among {len(members)} images" if "ekfac" in curv else ""))

    # outliers
    default = outlier_scores(emb, stats=stats)
    with_si = {c: outlier_scores(emb, stats=stats, extra={"influence": si[c]}) for c in curv}
    rows = []
    for k in list(KINDS) + ["digit_group"]:
        m = (kind == "none") | (kind == k)
        p = kind[m] == k
        row = {"kind": k, "default": auroc(default["score"][m], p)}
        row.update({f"SI {c}": auroc(si[c][m], p) for c in curv})
        row.update({f"default+SI {c}": auroc(with_si[c]["score"][m], p) for c in curv})
        rows.append(row)
    cols = [c for c in rows[0] if c != "kind"]
    rows += [{"kind": "MEAN", **{c: float(np.mean([r[c] for r in rows])) for c in cols}},
             {"kind": "MIN", **{c: float(np.min([r[c] for r in rows])) for c in cols}}]
    common.table(rows, f"Outlier AUROC per planted kind among {a.n + 2 * len(true)} CIFAR-10 photos "
                       f"({a.epochs}-epoch proxy, seed {a.seed})")

    # duplicates
    def pr(ok: np.ndarray) -> dict:
        tp, fp = int((ok & is_true).sum()), int((ok & ~is_true).sum())
        return {"precision": tp / max(tp + fp, 1), "recall": tp / len(true), "true": tp, "false": fp}

    rows = [{"check": f"aligned verifier >= {DUPLICATE_THRESHOLD}", **pr(ver), "AUROC among verified": ""}]
    vi = np.flatnonzero(ver)
    for c in curv:
        pc = np.full(len(pairs), -1.0)
        pc[vi] = [cos[c][pos[int(i)], pos[int(j)]] for i, j in pairs[vi]]
        sep = auroc(pc[vi], is_true[vi]) if 0 < is_true[vi].sum() < len(vi) else float("nan")
        for th in (0.5, 0.7, 0.9):
            rows.append({"check": f"+ {c} gradient cosine >= {th}", **pr(ver & (pc >= th)),
                         "AUROC among verified": sep if th == 0.9 else ""})
    common.table(rows, f"Planted near-duplicate pairs ({len(true)}: {a.dups} of each of {len(transforms.KINDS)} "
                       f"kinds), {len(pairs)} candidate pairs; {time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
