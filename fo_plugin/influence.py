"""``compute_ssl_influence`` (self-influence, augmentation loss, rank, duplicate pairs) and
``find_influential_training_samples`` ("what shaped this image"), as fields, saved views and recorded runs.

The method and its reconstruction from the paper are described in :mod:`fo_plugin.core.influence`.
"""

from __future__ import annotations

import os
import shutil
import time

import fiftyone as fo
import numpy as np
import torch
from fiftyone import ViewField as F

from . import params, runs
from .core import distributed
from .core.device import resolve_device
from .core.ekfac import EKFAC, FACTORS_FILE
from .core.fingerprint import fingerprint
from .core.influence import (
    CURVATURES,
    OUTPUTS,
    CountSketch,
    InfluenceConfig,
    SSLOutput,
    aug_losses,
    fisher_sums,
    fit_diagonal,
    per_example_grads,
    preconditioner,
    squared_norms,
    tracked_parameters,
)
from .core.knn import knn
from .features import DecodedImages, canonical, load_run_model
from .progress import ProgressArg, reporter

METHOD = runs.METHOD_PREFIX + "ssl_influence"
QUERY_METHOD = runs.METHOD_PREFIX + "influence_query"


def influence_fields(run_key: str) -> dict[str, str]:
    """The sample fields an influence run writes (prefixed with its key)."""
    return {k: f"{run_key}_{k}" for k in ("self_influence", "rank", "percentile", "aug_loss", "dup_of", "dup_score",
                                          "error")}


FIELD_TYPES = {"self_influence": fo.FloatField, "rank": fo.IntField, "percentile": fo.FloatField,
               "aug_loss": fo.FloatField, "dup_of": fo.StringField, "dup_score": fo.FloatField, "error": fo.StringField}


def _config(cfg: dict | None, **overrides) -> InfluenceConfig:
    from .core.augment import AugmentConfig

    d = {**(cfg or {}), **overrides}
    d["augment"] = AugmentConfig.from_dict(d["augment"]) if isinstance(d.get("augment"), dict) else d["augment"]
    return InfluenceConfig(**d)


def compute_ssl_influence(
    samples: fo.core.collections.SampleCollection,
    run_key: str = "influence",
    *,
    embeddings_run: str = "ssl_embedding",
    curvature: str = "ekfac",
    num_augs: int = 4,
    output: str = "projection",
    damping: float | None = None,
    seed: int = 0,
    fit_max_examples: int | None = None,
    project_dim: int = 512,
    batch_size: int = 64,
    device: str = "auto",
    overwrite: bool = False,
    progress: ProgressArg = None,
) -> dict:
    """Label-free self-influence of every sample on the SSL model of an embeddings run.

    Args:
        samples: a dataset or view (the training set whose influence is measured).
        run_key ("influence"): the run's name and the prefix of its fields: ``_self_influence``, ``_rank``
            (0 = most influential), ``_percentile``, ``_aug_loss`` (l(x)), ``_dup_of`` / ``_dup_score`` (the
            sample with the most similar gradient and that cosine: the duplicate signal).
        embeddings_run ("ssl_embedding"): the ssl_embeddings run whose model is f.
        curvature ("ekfac"): ``"ekfac"`` (EK-FAC, fitted as kronfluence fits it), ``"diagonal"`` or ``"identity"``
            (||g||^2).
        num_augs (4): K. output ("projection"): f's output. damping (None): lambda (None: a heuristic).
        seed (0): augmentation seed. fit_max_examples (None): cap on the EK-FAC fitting examples.
        project_dim (512): size of the gradient sketch kept with the run for duplicate pairs and fast
            train-to-sample queries (0: keep none).
        batch_size (64), device ("auto"), overwrite (False), progress (None): as elsewhere.

    Returns:
        a summary dict; the top duplicate pairs are in the run results (``pairs``).
    """
    dataset = samples._dataset
    runs.validate_run_key(run_key)
    params.choice("curvature", curvature, CURVATURES)
    params.choice("output", output, OUTPUTS)
    num_augs = params.integer("num_augs", num_augs, 1)
    damping = params.number("damping", damping, 0, none_ok=True)
    seed = params.integer("seed", seed, 0)
    fit_max_examples = params.integer("fit_max_examples", fit_max_examples, 2, none_ok=True)
    project_dim = params.integer("project_dim", project_dim, 0)
    batch_size = params.integer("batch_size", batch_size, 1)
    dev = resolve_device(device)
    if curvature == "ekfac" and distributed.context().world > 1 and torch.cuda.is_available():
        # rank 0 fits the factors alone while the other ranks wait in a collective: untested with NCCL (a long fit
        # may outlast its timeout), so not offered there yet
        raise ValueError("curvature='ekfac' is not supported in a multi-GPU torchrun job yet; use 'diagonal' or "
                         "'identity' there, or run EK-FAC in one process")
    ecfg = runs.require(dataset, embeddings_run, "ssl_embeddings", "compute_ssl_embeddings")
    names = influence_fields(run_key)
    ids, paths = canonical(samples)
    settings = {"embeddings_run": embeddings_run, "num_augs": num_augs, "output": output, "curvature": curvature,
                "damping": damping, "seed": seed, "fit_max_examples": fit_max_examples, "project_dim": project_dim}
    run = runs.Run(samples, run_key, "ssl_influence", {k: (v, FIELD_TYPES[k], {}) for k, v in names.items()},
                   {**settings, "device": str(dev)}, fingerprint_parts=(settings, ecfg.get("fingerprint"), ids),
                   overwrite=overwrite, minimum=2, what="influence")
    with run, reporter(progress, "self-influence") as progress:
        net, aug = load_run_model(dataset, embeddings_run, dev)
        cfg = InfluenceConfig(num_augs=num_augs, output=output, curvature=curvature, damping=damping, seed=seed,
                              augment=aug)
        f = SSLOutput(net, output).eval()
        rdir = run.artifacts
        run.config.update(backbone=net.spec.to_dict(), influence=cfg.to_dict())
        t0 = time.perf_counter()
        # in a torchrun job each rank decodes and scores its contiguous share of the samples and the results are
        # gathered in order; EK-FAC (not sharded: rank 0 fits it) needs every image, so there each rank decodes all
        part = range(len(ids)) if curvature == "ekfac" else distributed.shard(len(ids))
        pool = DecodedImages(paths[part.start:part.stop], ids[part.start:part.stop], net.image_size, rdir)
        try:
            if curvature == "ekfac":
                scored, mine = pool.ids, distributed.shard(len(pool.ids))
                rows, first = np.arange(mine.start, mine.stop), mine.start  # first: this rank's first scored row
            else:
                scored, counts = distributed.gather_list(pool.ids), distributed.gather_list([len(pool.ids)])
                rows, first = np.arange(len(pool.ids)), sum(counts[:distributed.context().rank])
            n = len(scored)
            if n < 2:
                raise ValueError(f"influence needs at least 2 readable images; {n} of {len(ids)} could be decoded")
            # every chunk below is kept as it completes (run.chunk): a re-run after a kill redoes only the rest;
            # names carry the decoded set, batch size and (global) rows, so rows can never shift onto other samples
            tag = fingerprint(scored, batch_size, length=10)
            loss = np.concatenate([run.chunk(f"{tag}-loss-{first + b * 256}-{first + b * 256 + len(x)}",
                                             lambda x=x: {"loss": aug_losses(f, x, cfg).cpu().numpy()})["loss"]
                                   for b, x in enumerate(pool.batches(dev, 256, rows))] or [np.zeros(0, np.float32)])
            loss = distributed.gather_rows(loss)
            progress(0.1, "augmentation losses")

            diag, lam, sketch, layers = None, None, None, None
            if curvature == "diagonal":
                def sums_once() -> dict[str, np.ndarray]:  # this rank's sums only: no collective inside a chunk
                    total, count = fisher_sums(f, lambda: pool.batches(dev, batch_size, rows), cfg)
                    return {"total": total.cpu().numpy(), "n": np.int64(count)}

                fit = run.chunk(f"{tag}-diagonal-{first}-{first + len(rows)}", sums_once)
                diag, lam = fit_diagonal(f, None, cfg, sums=(torch.as_tensor(fit["total"]).to(dev), int(fit["n"])))
                if run.primary:
                    torch.save({"diag": diag.cpu(), "damping": lam}, os.path.join(rdir, "diagonal.pt"))
                progress(0.4, "diagonal Fisher fitted")
            if curvature == "ekfac":  # the fit is not sharded: rank 0 fits, every rank scores its rows with it
                if run.primary:
                    ek = EKFAC(f, cfg, os.path.join(rdir, "ekfac"), dev, batch_size)
                    progress(0.1, "fitting EK-FAC factors")
                    ek.fit(pool.subset(), fit_max_examples)
                    shutil.rmtree(os.path.join(rdir, "kronfluence"), ignore_errors=True)  # an earlier version's factors
                    layers = [tuple(t.cpu() if torch.is_tensor(t) else t for t in lay) for lay in ek.preconditioner()]
                layers = [tuple(t.to(dev) if torch.is_tensor(t) else t for t in layer)
                          for layer in distributed.broadcast(layers)]
                lam = cfg.damping
                progress(0.4, "EK-FAC factors fitted")
            scale = preconditioner(cfg, diag, lam)
            tracked = set(tracked_parameters(f, cfg))
            n_params = sum(p.numel() for name, p in f.named_parameters() if name in tracked)
            if project_dim:
                sketch = CountSketch(n_params, project_dim, seed, dev)
            si, sketches = np.zeros(len(rows)), [torch.zeros(0, project_dim)]
            for b, x in enumerate(pool.batches(dev, batch_size, rows)):
                s0 = b * batch_size
                g0 = first + s0
                kind = "ekfac-grads" if layers is not None else "grads"  # never an older run's chunk without SI
                out = run.chunk(f"{tag}-{kind}-{g0}-{g0 + len(x)}",
                                lambda x=x: _grad_chunk(f, x, cfg, scale, sketch, layers))
                si[s0:s0 + len(x)] = out["si"]
                if sketch is not None:
                    sketches.append(torch.as_tensor(out["sketch"]))
                progress(0.4 + 0.3 * min(1.0, (b + 1) * batch_size / max(len(rows), 1)), "per-example gradients")
            si = distributed.gather_rows(si)
            z = distributed.gather_rows(torch.cat(sketches)) if sketch is not None else None
            if not np.isfinite(si).all() or not np.isfinite(loss).all():
                raise FloatingPointError("influence scores are not finite (the model or its gradients hold NaN)")
        finally:
            pool.close()

        rank = np.empty(n, dtype=np.int64)
        rank[np.lexsort((np.arange(n), -si))] = np.arange(n)
        pct = 100.0 * (1 - rank / max(n - 1, 1))
        columns = {"self_influence": si, "rank": rank, "percentile": pct, "aug_loss": loss}
        pairs, dup_of, dup_score = [], [None] * n, [None] * n
        if z is not None:
            if run.primary:
                np.save(os.path.join(rdir, "grad_sketch.npy"), z.numpy())
                with open(os.path.join(rdir, "grad_sketch_ids.txt"), "w") as fh:
                    fh.write("\n".join(scored))
            nn = knn(z.to(dev), 1) if run.primary else None  # the one kNN: bounded blocks, IVF at scale
            nn_idx, nn_sim = (a[:, 0] for a in distributed.broadcast(nn))  # rank 0's (n >= 2: checked above)
            dup_of = [scored[j] if j >= 0 else None for j in nn_idx]  # -1: an approximate search found none
            dup_score = [float(v) if j >= 0 else None for j, v in zip(nn_idx, nn_sim)]
            seen = set()
            for i in np.argsort(-nn_sim):
                if nn_idx[i] < 0:
                    continue
                pair = tuple(sorted((scored[i], scored[nn_idx[i]])))
                if pair not in seen:
                    seen.add(pair)
                    pairs.append({"a": pair[0], "b": pair[1], "cosine": float(nn_sim[i])})
                if len(pairs) >= 1000:
                    break
        for k, v in columns.items():
            run.write(k, scored, np.asarray(v).tolist())
        run.write("dup_of", scored, dup_of)
        run.write("dup_score", scored, dup_score)
        done = set(scored)
        bad = [i for i in ids if i not in done]
        run.write("error", bad, ["the image could not be decoded"] * len(bad))
        summary = run.commit(fields=list(names.values()), num_samples=len(ids), num_scored=n,
                             num_skipped=len(ids) - n, curvature=curvature, damping=lam, num_params=int(n_params),
                             device=str(dev), seconds=time.perf_counter() - t0, pairs=pairs[:1000])
    progress(1.0, f"scored {n} samples")
    return {k: v for k, v in summary.items() if k != "pairs"}


def _grad_chunk(f, x, cfg, scale, sketch, layers) -> dict[str, np.ndarray]:
    """One batch's self-influence, (B,) float64: g^T (H + lambda I)^-1 g with EK-FAC's fitted ``layers``
    (:meth:`EKFAC.preconditioner`), else ||g||^2 (preconditioned by ``scale`` for the diagonal curvature); and its
    gradient sketch (B, d) when one is kept (of the preconditioned g for the diagonal curvature)."""
    g = per_example_grads(f, x, cfg)  # (B, P)
    if layers is not None:
        si = EKFAC.scores_from_grads(g, layers)
    else:
        if scale is not None:
            g.mul_(scale)
        si = squared_norms(g)
    out = {"si": si.cpu().numpy()}
    if sketch is not None:
        out["sketch"] = sketch(g).cpu().numpy()
    return out


def find_influential_training_samples(
    samples: fo.core.collections.SampleCollection,
    query_ids: list[str],
    influence_run: str = "influence",
    run_key: str = "shaped",
    *,
    k: int = 20,
    method: str = "exact",
    batch_size: int = 64,
    device: str = "auto",
    overwrite: bool = False,
    progress: ProgressArg = None,
) -> dict:
    """"What shaped this image": the training samples with the largest influence on the query samples' loss.

    Writes ``<run_key>_influence`` on every scored training sample: the mean over the queries of
    I(z, x) = -g(x)^T (H + lambda I)^-1 g(z) (negative: z is a proponent, upweighting it lowers x's loss;
    positive: an opponent), and saves the views ``"<run_key>: proponents"`` and ``"<run_key>: opponents"``
    (top ``k`` each, strongest first).

    Args:
        samples: the training samples (dataset or view).
        query_ids: ids of the samples to explain (need not be in ``samples``).
        influence_run ("influence"): the compute_ssl_influence run whose model, augmentations, curvature
            and (for EK-FAC) fitted factors are used.
        method ("exact"): ``"exact"`` (gradients streamed over the training set; EK-FAC with the influence run's
            fitted factors) or ``"projected"`` (diagonal / identity: dot products of the gradient
            sketches kept with the influence run; fast for large data, approximate).
    """
    dataset = samples._dataset
    runs.validate_run_key(run_key)
    if not query_ids:
        raise ValueError("select at least one query sample")
    k = params.integer("k", k, 1)
    params.choice("method", method, ("exact", "projected"))
    batch_size = params.integer("batch_size", batch_size, 1)
    icfg = runs.require(dataset, influence_run, "ssl_influence", "compute_ssl_influence")
    cfg = _config(icfg["influence"])
    if method == "projected" and cfg.curvature == "ekfac":
        raise ValueError("method='projected' needs an identity or diagonal influence run; EK-FAC runs use 'exact'")
    query_ids = list(dict.fromkeys(query_ids))
    found = dataset.select(query_ids)
    qids, qpaths = found.values(["id", "filepath"])
    if len(qids) != len(query_ids):
        missing = sorted(set(query_ids) - set(qids))
        raise ValueError(f"{len(missing)} query id(s) are not samples of dataset {dataset.name!r}: {missing[:3]}")
    dev = resolve_device(device)
    field = f"{run_key}_influence"
    config = {"influence_run": influence_run, "query_ids": list(query_ids), "k": k, "score_method": method}
    run = runs.Run(samples, run_key, "influence_query", {"influence": (field, fo.FloatField, {})}, config,
                   fingerprint_parts=(config, icfg.get("fingerprint"), samples.values("id")), overwrite=overwrite,
                   what="train-to-sample influence")
    with run, reporter(progress, "influential training samples") as progress:
        net, _ = load_run_model(dataset, icfg["embeddings_run"], dev)
        f = SSLOutput(net, cfg.output).eval()
        rdir = icfg["artifacts"]
        ids, paths = canonical(samples)
        qpool = DecodedImages(qpaths, qids, net.image_size, run.artifacts)
        pool = DecodedImages(paths, ids, net.image_size, run.artifacts)
        try:
            if len(qpool.ids) == 0:
                raise ValueError("none of the query images could be decoded")
            if cfg.curvature == "ekfac":
                ek = EKFAC(f, cfg, os.path.join(rdir, "ekfac"), dev, batch_size)
                if not os.path.isfile(os.path.join(ek.out_dir, FACTORS_FILE)):
                    raise ValueError(f"influence run {influence_run!r} has no EK-FAC factors file (runs of earlier "
                                     "versions kept kronfluence's factors, which this version does not read); run "
                                     "compute_ssl_influence again with the same settings to fit them")
                scores = ek.pairwise(qpool.subset(), pool.subset())
            elif method == "projected":
                scores = _projected_scores(rdir, qpool, pool.ids)
            else:
                scores = _streamed_scores(rdir, f, qpool, pool, cfg, dev, batch_size, progress)
        finally:
            qpool.close()
            pool.close()
        score = scores.mean(0)  # (N,) mean over queries
        run.write("influence", pool.ids, score.tolist())
        views = [f"{run_key}: proponents", f"{run_key}: opponents"]
        desc = f"influence on {len(qids)} query sample(s)"
        run.save_view(views[0], lambda ds: ds.match(F(field) != None).sort_by(field).limit(k), desc)  # noqa: E711
        run.save_view(views[1], lambda ds: ds.match(F(field) != None).sort_by(field, reverse=True).limit(k),  # noqa: E711
                      desc)
        order = np.argsort(score)
        return run.commit(field=field, num_queries=len(qids), num_train=len(pool.ids),
                          proponents=[pool.ids[i] for i in order[:k]],
                          opponents=[pool.ids[i] for i in order[::-1][:k]], saved_views=views)


def _streamed_scores(rdir, f, qpool, pool, cfg, dev, batch_size, progress) -> np.ndarray:
    """Exact I(z, x) for identity / diagonal curvature: query gradients once, training gradients streamed."""
    inv = None
    if cfg.curvature == "diagonal":  # the influence run's fitted diagonal, so both use the same curvature
        fit = torch.load(os.path.join(rdir, "diagonal.pt"), weights_only=True)
        inv = (fit["diag"].to(dev) + fit["damping"]).reciprocal()
    gq = torch.cat([per_example_grads(f, x, cfg) for x in qpool.batches(dev, batch_size)])
    gq = gq * inv if inv is not None else gq
    out = []
    n = len(pool.ids)
    for b, x in enumerate(pool.batches(dev, batch_size)):
        out.append(-(gq @ per_example_grads(f, x, cfg).T).double().cpu())
        progress(min(1.0, (b + 1) * batch_size / n), "training gradients")
    return torch.cat(out, dim=1).numpy()


def _projected_scores(rdir, qpool, train_ids) -> np.ndarray:
    """Approximate I(z, x) from the gradient sketches kept by the influence run (preconditioned on both sides
    with (H + lambda I)^-1/2, so their dot product approximates g_x^T (H + lambda I)^-1 g_z)."""
    path = os.path.join(rdir, "grad_sketch.npy")
    if not os.path.isfile(path):
        raise ValueError("the influence run kept no gradient sketch (project_dim=0); use method='exact'")
    z = torch.as_tensor(np.load(path))
    with open(os.path.join(rdir, "grad_sketch_ids.txt")) as fh:
        row = {sid: i for i, sid in enumerate(fh.read().split("\n"))}
    missing = [i for i in train_ids if i not in row]
    if missing:
        raise ValueError(f"{len(missing)} training samples are not in the influence run; run it again on this view")
    zt = z[[row[i] for i in train_ids]]
    zq = torch.stack([z[row[i]] for i in qpool.ids]) if all(i in row for i in qpool.ids) else None
    if zq is None:
        raise ValueError("method='projected' needs the query samples to be part of the influence run")
    return -(zq.double() @ zt.double().T).numpy()
