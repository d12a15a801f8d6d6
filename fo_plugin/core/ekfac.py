"""EK-FAC influence through the ``kronfluence`` package (Grosse et al. 2023), arranged so that each example is one
row: kronfluence treats every row a module sees as an example, so the K + 1 views of a batch go through the model
in K + 1 separate calls of B rows each, and ``has_shared_parameters=True`` makes kronfluence sum each example's
per-call gradients into its gradient g(x) (self-influence has cross terms between views).

Only the layers that run in the loss and get a gradient are tracked (:func:`influence.tracked_modules`). kronfluence
keeps its device choice in a process-wide shared state; every :class:`EKFAC` resets it, so runs with different
devices in one long-lived process do not leak into each other. Fitted factors are cached under ``out_dir`` with a
fingerprint of the model, the settings and the images, and refitted when any of them changes.

kronfluence fits the factors and scores train-to-sample pairs; self-influence applies the fitted factors to our own
per-example gradients (:meth:`EKFAC.scores_from_grads`), so ``compute_ssl_influence`` gets it from the same
gradient pass that gives its gradient sketch.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil

import numpy as np
import torch
from torch.utils import data

from .fingerprint import array_fingerprint, dict_fingerprint, model_fingerprint
from .images import to_float
from .influence import (
    InfluenceConfig,
    SSLOutput,
    loss_from_outputs,
    make_views,
    per_example_grads,
    tracked_modules,
)

FACTORS = "ekfac"  # kronfluence's factors name: its folder is <out_dir>/ssl_influence/factors_ekfac
FINGERPRINT_FILE = "ekfac_fit.json"


class UInt8Images(data.Dataset):
    """uint8 (3, S, S) images over an (N, S, S, 3) array or memmap."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1)


def reset_kronfluence_state(cpu: bool):
    """Clear kronfluence's process-wide ``State`` (shared by every Analyzer) and rebuild it for this device choice:
    otherwise the first run's ``cpu`` / device wins for the life of the process. Returns the fresh state."""
    from kronfluence.utils.state import State

    State._reset_state()
    return State(cpu=cpu)


def _task(cfg: InfluenceConfig, tracked: list[str]):
    from kronfluence.task import Task

    class AugmentationTask(Task):
        """l(x) = mean_k (1 - cos(f(x), f(t_k x))), summed over the batch; the empirical Fisher (no sampling).

        ``enable_post_process_per_sample_gradient`` (an identity post-process) routes kronfluence 1.0.1's pairwise
        scores through its accumulating path: its default path keeps only the last call's contribution when
        parameters are shared, so train-to-sample scores would miss K of the K + 1 views.
        """

        enable_post_process_per_sample_gradient = True

        def get_influence_tracked_modules(self) -> list[str]:
            return list(tracked)

        def post_process_per_sample_gradient(self, module_name: str, gradient: torch.Tensor) -> torch.Tensor:
            return gradient

        def compute_train_loss(self, batch, model, sample: bool = False) -> torch.Tensor:
            x = batch.to(next(model.parameters()).device).float().div_(255)  # wherever kronfluence put the model
            outs = [model(v) for v in make_views(x, cfg)]  # K + 1 calls of B rows
            return loss_from_outputs(outs).sum()

        def compute_measurement(self, batch, model) -> torch.Tensor:
            return self.compute_train_loss(batch, model)

    return AugmentationTask()


class EKFAC:
    """Fitted EK-FAC factors for one model and one augmentation task, cached under ``out_dir``. ``f`` is put in
    eval mode on ``device`` and used as is (kronfluence gets its own copy to wrap): do not change its weights while
    this object is in use, the factors were fitted on them."""

    def __init__(self, f: SSLOutput, cfg: InfluenceConfig, out_dir: str, device: torch.device, batch_size: int = 64):
        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.utils.dataset import DataLoaderKwargs

        logging.getLogger("kronfluence").setLevel(logging.WARNING)
        self.cfg, self.device, self.batch_size, self.out_dir = cfg, device, batch_size, out_dir
        self.f = f.eval().to(device)  # ours, unwrapped: our per-example gradients run on it (no second copy)
        model = copy.deepcopy(self.f)  # kronfluence's: prepare_model wraps its layers in place
        self.tracked = tracked_modules(model, cfg)
        self.model_fingerprint = model_fingerprint(model)
        self.task = _task(cfg, self.tracked)
        model = prepare_model(model, self.task)
        os.makedirs(out_dir, exist_ok=True)
        reset_kronfluence_state(cpu=device.type == "cpu")
        self.analyzer = Analyzer("ssl_influence", model, self.task, cpu=device.type == "cpu", disable_tqdm=True,
                                 output_dir=out_dir, disable_model_save=True)
        self.analyzer.set_dataloader_kwargs(DataLoaderKwargs(num_workers=0))

    def _factor_args(self, max_examples: int | None):
        from kronfluence.arguments import FactorArguments

        return FactorArguments(strategy="ekfac", use_empirical_fisher=True, has_shared_parameters=True,
                               covariance_max_examples=max_examples, lambda_max_examples=max_examples)

    def _score_args(self):
        from kronfluence.arguments import ScoreArguments

        return ScoreArguments(damping_factor=self.cfg.damping)  # None: 0.1 x mean eigenvalue

    def fit_fingerprint(self, images: np.ndarray, max_examples: int | None) -> dict:
        """What the fitted factors depend on: model weights, settings, tracked layers, images, example cap."""
        import kronfluence

        return {"format": "fo_plugin.ekfac/1", "kronfluence": kronfluence.__version__,
                "model": self.model_fingerprint, "config": dict_fingerprint(self.cfg.to_dict()),
                "tracked": self.tracked, "num_images": len(images), "images": array_fingerprint(images),
                "max_examples": max_examples}

    def fit(self, images: np.ndarray, max_examples: int | None = None) -> None:
        """Covariances, eigendecomposition and eigenvalue correction over ``images``: reused when the factors on
        disk were fitted for the same fingerprint, else (re)fitted after clearing only kronfluence's factors folder
        (kronfluence itself would reuse whatever factors exist there)."""
        want = self.fit_fingerprint(images, max_examples)
        path = os.path.join(self.out_dir, FINGERPRINT_FILE)
        factors = self.analyzer.factors_output_dir(FACTORS)
        have = None
        if os.path.isfile(path):
            with open(path) as fh:
                have = json.load(fh)
        if have != want:
            if os.path.isfile(path):
                os.remove(path)  # a fit interrupted below must not leave the old fingerprint next to new factors
            if factors.is_dir():
                shutil.rmtree(factors)
        self.analyzer.fit_all_factors(FACTORS, UInt8Images(images), per_device_batch_size=self.batch_size,
                                      factor_args=self._factor_args(max_examples), overwrite_output_dir=False)
        if have != want:
            with open(path, "w") as fh:
                json.dump(want, fh, indent=1)

    def check_factors(self) -> None:
        """Refuse factors on disk that were fitted for other weights, settings or tracked layers (scoring without
        :meth:`fit` in this process, e.g. a later train-to-sample query, reuses them).

        Raises:
            ValueError: the fingerprint stored with the factors does not match this model and config.
        """
        path = os.path.join(self.out_dir, FINGERPRINT_FILE)
        if not os.path.isfile(path):
            return  # no factors yet (kronfluence says so) or factors fitted before fingerprints existed
        with open(path) as fh:
            have = json.load(fh)
        mine = {"model": self.model_fingerprint, "config": dict_fingerprint(self.cfg.to_dict()), "tracked": self.tracked}
        if any(have.get(k) != v for k, v in mine.items()):
            raise ValueError(f"the EK-FAC factors in {self.out_dir} were fitted for another model or other settings; "
                             "fit them again (EKFAC.fit) before scoring")

    def preconditioner(self) -> list[tuple]:
        """Per tracked layer, in :func:`influence.per_example_grads` column order: (number of weight + bias columns,
        output size, has a bias, Q_G (out, out), Q_A (in', in'), 1 / (Lambda + lambda) (out, in')) from the fitted
        factors, prepared as kronfluence 1.0.1 prepares them for scoring (Lambda = corrected eigenvalues / number of
        examples; lambda = ``cfg.damping`` or 0.1 x mean(Lambda) of that layer; in' = in + 1 with a bias)."""
        self.check_factors()
        factors = self.analyzer.load_all_factors(FACTORS)
        modules = dict(self.f.named_modules())
        out = []
        for name in self.tracked:
            m = modules[name]
            lam = factors["lambda_matrix"][name].to(self.device, torch.float64)
            lam = lam / factors["num_lambda_processed"][name].to(self.device)
            lam = (lam + (self.cfg.damping if self.cfg.damping is not None else 0.1 * lam.mean())).reciprocal()
            n = m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
            qg = factors["gradient_eigenvectors"][name].to(self.device, torch.float32)
            qa = factors["activation_eigenvectors"][name].to(self.device, torch.float32)
            out.append((n, m.weight.shape[0], m.bias is not None, qg, qa, lam.to(torch.float32)))
        return out

    @staticmethod
    def scores_from_grads(g: torch.Tensor, layers: list) -> torch.Tensor:
        """SI = sum over layers of g_l^T (Q_G x Q_A) (Lambda + lambda)^-1 (Q_G x Q_A)^T g_l for per-example
        gradients ``g`` (B, P) in :func:`influence.per_example_grads` layout -> (B,) float64.

        g_l is the layer's (out, in') gradient matrix (weight flattened as (out, in * k * k), bias as the last
        column, as kronfluence lays it out); rotated into the eigenbasis, R = Q_G^T g_l Q_A, SI_l = sum R^2 / (Lambda
        + lambda)."""
        si = torch.zeros(len(g), dtype=torch.float64, device=g.device)
        s = 0
        for n, cout, bias, qg, qa, inv in layers:
            mat = g[:, s:s + n]  # (B, n): weight (out * in) then bias (out)
            s += n
            if bias:
                mat = torch.cat([mat[:, :n - cout].reshape(len(g), cout, -1), mat[:, n - cout:, None]], dim=2)
            mat = mat.reshape(len(g), cout, qa.shape[0])  # (B, out, in')
            rot = torch.matmul(qg.t(), torch.matmul(mat, qa))  # (B, out, in')
            si += (rot.square_() * inv).sum((1, 2)).double()
        return si

    def self_influence(self, images: np.ndarray) -> np.ndarray:
        """SI(x) = g^T (H + lambda I)^-1 g for each image, (N,): kronfluence's fitted EK-FAC factors applied to our
        per-example gradients (:func:`influence.per_example_grads`, one batched backward per batch), which
        replaces kronfluence's own scoring pass: the same scores to float rounding (tested), at about half its cost
        on CPU; nothing is written to disk."""
        layers = self.preconditioner()
        out = []
        for s in range(0, len(images), self.batch_size):
            x = to_float(np.ascontiguousarray(images[s:s + self.batch_size]), self.device)  # (b, 3, S, S)
            out.append(self.scores_from_grads(per_example_grads(self.f, x, self.cfg), layers).cpu())
        return torch.cat(out).numpy() if out else np.zeros(0)

    def pairwise(self, query: np.ndarray, train: np.ndarray, name: str = "pairwise") -> np.ndarray:
        """I(z, x) = -g(x)^T (H + lambda I)^-1 g(z) for queries x and training images z, (Q, N)."""
        self.check_factors()
        self.analyzer.compute_pairwise_scores(name, FACTORS, UInt8Images(query), UInt8Images(train),
                                              per_device_query_batch_size=min(self.batch_size, len(query)),
                                              per_device_train_batch_size=self.batch_size,
                                              score_args=self._score_args(), overwrite_output_dir=True)
        return -self.analyzer.load_pairwise_scores(name)["all_modules"].double().cpu().numpy()
