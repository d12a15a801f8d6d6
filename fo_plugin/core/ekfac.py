"""EK-FAC influence (George et al. 2018, Grosse et al. 2023), fitted natively as the ``kronfluence`` package (1.0.1)
fits it, with the same per-example hooks as every other curvature (:mod:`per_example`).

Per tracked layer (:func:`influence.tracked_modules`), with a its input (a conv's unfolded patches; a ones column last
where it has a bias) and d the gradient of the summed loss w.r.t. its output:

    pass 1   A = sum a a^T, G = sum d d^T over every row of every one of the K + 1 views and every position
    eigen    A = Q_A diag Q_A^T, G = Q_G diag Q_G^T (float64; the eigenvalues are not used)
    pass 2   Lambda = mean over examples of (Q_G^T g_l Q_A)^2, g_l the layer's per-example gradient (out, in')
             summed over the example's K + 1 views (kronfluence's ``has_shared_parameters``)
    score    (H + lambda I)^-1 g_l = Q_G [(Q_G^T g_l Q_A) / (Lambda + lambda)] Q_A^T, lambda = ``cfg.damping`` or
             0.1 x mean(Lambda) of that layer

Only the eigenvectors of A and G matter (not their scale or sign; an eigenspace of repeated eigenvalues, e.g. the
null space of a rank-deficient A, holds a free basis, but the fit examples' gradients have no component there, so
Lambda there is 0 in any basis). The factors are cached in one file under ``out_dir`` with a fingerprint of the
model, the settings, the tracked layers and the images, written atomically, and refitted when any of them changes.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from .fingerprint import array_fingerprint, dict_fingerprint, model_fingerprint
from .images import to_float
from .influence import InfluenceConfig, SSLOutput, covariance_sums, per_example_grads, tracked_modules

FACTORS_FILE = "ekfac_factors.pt"  # {"fingerprint": JSON, "num_examples": int, "layers": {name: {qa, qg, lambda}}}


def _matrices(g: torch.Tensor, layers: list) -> list[torch.Tensor]:
    """Per layer, the (B, out, in') gradient matrices of per-example gradients ``g`` (B, P) in
    :func:`influence.per_example_grads` layout (weight flattened as (out, in * k * k), then the bias as the last
    column, as kronfluence lays it out)."""
    out, s = [], 0
    for n, cout, bias, _qg, qa, _inv in layers:
        mat = g[:, s:s + n]  # (B, n): weight (out * in) then bias (out)
        s += n
        if bias:
            mat = torch.cat([mat[:, :n - cout].reshape(len(g), cout, -1), mat[:, n - cout:, None]], dim=2)
        out.append(mat.reshape(len(g), cout, qa.shape[0]))  # (B, out, in')
    return out


def _rotate(mat: torch.Tensor, qg: torch.Tensor, qa: torch.Tensor) -> torch.Tensor:
    """Q_G^T M Q_A for (B, out, in') -> (B, out, in'): the gradients in the layer's Kronecker eigenbasis."""
    return torch.matmul(qg.t(), torch.matmul(mat, qa))


class EKFAC:
    """EK-FAC factors for one model and one augmentation task, fitted by :meth:`fit` and cached under ``out_dir``.
    ``f`` is put in eval mode on ``device`` and used as is: do not change its weights while this object is in use,
    the factors were fitted on them."""

    def __init__(self, f: SSLOutput, cfg: InfluenceConfig, out_dir: str, device: torch.device, batch_size: int = 64):
        self.cfg, self.device, self.batch_size, self.out_dir = cfg, device, batch_size, out_dir
        self.f = f.eval().to(device)
        self.tracked = tracked_modules(self.f, cfg)
        self.model_fingerprint = model_fingerprint(self.f)
        self.path = os.path.join(out_dir, FACTORS_FILE)
        self._factors: dict | None = None  # what the file holds, once read or written here
        os.makedirs(out_dir, exist_ok=True)

    def fit_fingerprint(self, images: np.ndarray, max_examples: int | None) -> dict:
        """What the fitted factors depend on: model weights, settings, tracked layers, images, example cap."""
        return {"format": "fo_plugin.ekfac/2", "model": self.model_fingerprint,
                "config": dict_fingerprint(self.cfg.to_dict()), "tracked": self.tracked, "num_images": len(images),
                "images": array_fingerprint(images), "max_examples": max_examples}

    def _batches(self, images: np.ndarray):
        for s in range(0, len(images), self.batch_size):
            yield to_float(np.ascontiguousarray(images[s:s + self.batch_size]), self.device)  # (b, 3, S, S)

    def _load(self) -> dict | None:
        if self._factors is None and os.path.isfile(self.path):
            self._factors = torch.load(self.path, map_location="cpu", weights_only=True)
        return self._factors

    def fit(self, images: np.ndarray, max_examples: int | None = None) -> None:
        """Covariances, eigendecomposition and eigenvalue correction over the first ``max_examples`` of ``images``
        (all when None, as kronfluence's ``covariance_max_examples`` / ``lambda_max_examples``): reused when the
        factors on disk were fitted for the same fingerprint, else fitted and written (one file, replaced
        atomically: an interrupted fit leaves the previous factors with their own fingerprint)."""
        want = json.dumps(self.fit_fingerprint(images, max_examples), sort_keys=True)
        have = self._load()
        if have is not None and have["fingerprint"] == want:
            return
        fit = images[:max_examples] if max_examples is not None else images
        sums: dict[str, list[torch.Tensor]] = {}
        for x in self._batches(fit):
            covariance_sums(self.f, x, self.cfg, sums)
        eig = {}
        for name in self.tracked:
            qs = []
            for c in sums[name]:  # A (in', in'), G (out, out) float64
                _, q = torch.linalg.eigh((c + c.t()) / 2)
                qs.append(q.float())
            eig[name] = qs
        modules = dict(self.f.named_modules())
        layers = [self._layer(modules[n], eig[n][1], eig[n][0], None) for n in self.tracked]
        lam = [torch.zeros(lay[1], lay[4].shape[0], dtype=torch.float64, device=self.device)  # (out, in')
               for lay in layers]
        for x in self._batches(fit):
            for acc, rot in zip(lam, self._rotated(x, layers)):
                acc += rot.square().sum(0)
        factors = {"fingerprint": want, "num_examples": len(fit),
                   "layers": {n: {"qa": eig[n][0].cpu(), "qg": eig[n][1].cpu(), "lambda": la.cpu()}
                              for n, la in zip(self.tracked, lam)}}
        tmp = f"{self.path}.tmp-{os.getpid()}"  # temporary name, fsync, rename: a kill leaves the whole file or none
        try:
            with open(tmp, "wb") as fh:
                torch.save(factors, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):  # a write that did not complete
                os.remove(tmp)
        self._factors = factors

    def check_factors(self) -> dict:
        """The fitted factors on disk, refused when fitted for other weights, settings or tracked layers (scoring
        without :meth:`fit` in this process, e.g. a later train-to-sample query, reuses them).

        Raises:
            FileNotFoundError: no factors were fitted in ``out_dir``.
            ValueError: the fingerprint stored with the factors does not match this model and config.
        """
        have = self._load()
        if have is None:
            raise FileNotFoundError(f"no EK-FAC factors in {self.out_dir}: fit them (EKFAC.fit) before scoring")
        fp = json.loads(have["fingerprint"])
        mine = {"model": self.model_fingerprint, "config": dict_fingerprint(self.cfg.to_dict()),
                "tracked": self.tracked}
        if any(fp.get(k) != v for k, v in mine.items()):
            raise ValueError(f"the EK-FAC factors in {self.out_dir} were fitted for another model or other settings; "
                             "fit them again (EKFAC.fit) before scoring")
        return have

    def _layer(self, m: torch.nn.Module, qg: torch.Tensor, qa: torch.Tensor, inv: torch.Tensor | None) -> tuple:
        n = m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
        return (n, m.weight.shape[0], m.bias is not None, qg.to(self.device, torch.float32),
                qa.to(self.device, torch.float32), inv)

    def preconditioner(self) -> list[tuple]:
        """Per tracked layer, in :func:`influence.per_example_grads` column order: (number of weight + bias columns,
        output size, has a bias, Q_G (out, out), Q_A (in', in'), 1 / (Lambda + lambda) (out, in')), from the
        fitted factors (Lambda = summed squared rotated gradients / number of examples; lambda = ``cfg.damping`` or
        0.1 x mean(Lambda) of that layer; in' = in + 1 with a bias)."""
        factors = self.check_factors()
        modules = dict(self.f.named_modules())
        out = []
        for name in self.tracked:
            fl = factors["layers"][name]
            lam = fl["lambda"].to(self.device, torch.float64) / factors["num_examples"]
            inv = (lam + (self.cfg.damping if self.cfg.damping is not None else 0.1 * lam.mean())).reciprocal()
            out.append(self._layer(modules[name], fl["qg"], fl["qa"], inv.float()))
        return out

    @staticmethod
    def scores_from_grads(g: torch.Tensor, layers: list) -> torch.Tensor:
        """SI = sum over layers of g_l^T (Q_G x Q_A) (Lambda + lambda)^-1 (Q_G x Q_A)^T g_l for per-example
        gradients ``g`` (B, P) in :func:`influence.per_example_grads` layout -> (B,) float64: with
        R = Q_G^T g_l Q_A, SI_l = sum R^2 / (Lambda + lambda)."""
        si = torch.zeros(len(g), dtype=torch.float64, device=g.device)
        for mat, (_n, _c, _b, qg, qa, inv) in zip(_matrices(g, layers), layers):
            si += (_rotate(mat, qg, qa).square_() * inv).sum((1, 2)).double()
        return si

    @staticmethod
    def precondition(g: torch.Tensor, layers: list) -> torch.Tensor:
        """(H + lambda I)^-1 g for per-example gradients ``g`` (B, P) -> (B, P) in the same layout."""
        out = torch.empty_like(g)
        s = 0
        for mat, (n, cout, bias, qg, qa, inv) in zip(_matrices(g, layers), layers):
            back = torch.matmul(qg, torch.matmul(_rotate(mat, qg, qa).mul_(inv), qa.t()))  # (B, out, in')
            if bias:
                out[:, s:s + n - cout] = back[:, :, :-1].reshape(len(g), -1)
                out[:, s + n - cout:s + n] = back[:, :, -1]
            else:
                out[:, s:s + n] = back.reshape(len(g), -1)
            s += n
        return out

    def _rotated(self, x: torch.Tensor, layers: list) -> list[torch.Tensor]:
        """Per layer, the batch's per-example gradients in the layer's eigenbasis, R = Q_G^T g_l Q_A (b, out, in'),
        from :func:`influence.per_example_grads` with the bases (rotated inputs where an example has few rows)."""
        bases = {n: (lay[3], lay[4]) for n, lay in zip(self.tracked, layers)}
        g = per_example_grads(self.f, x, self.cfg, bases=bases)  # (b, P)
        out, s = [], 0
        for n, cout, _bias, _qg, qa, _inv in layers:
            out.append(g[:, s:s + n].view(len(g), cout, qa.shape[0]))
            s += n
        return out

    def self_influence(self, images: np.ndarray) -> np.ndarray:
        """SI(x) = g^T (H + lambda I)^-1 g for each image, (N,) float64: sum over layers of R^2 / (Lambda + lambda)
        with R the per-example gradients in the eigenbasis (:meth:`_rotated`, one batched backward per batch)."""
        layers = self.preconditioner()
        out = [sum((rot.square() * lay[5]).sum((1, 2)).double() for rot, lay in zip(self._rotated(x, layers), layers))
               .cpu() for x in self._batches(images)]
        return torch.cat(out).numpy() if out else np.zeros(0)

    def pairwise(self, query: np.ndarray, train: np.ndarray) -> np.ndarray:
        """I(z, x) = -g(x)^T (H + lambda I)^-1 g(z) for queries x and training images z, (Q, N) float64: the
        queries' preconditioned gradients (Q, P) once, then the training gradients streamed in batches."""
        layers = self.preconditioner()
        if len(query) == 0:
            return np.zeros((0, len(train)))
        pq = torch.cat([self.precondition(per_example_grads(self.f, x, self.cfg), layers)
                        for x in self._batches(query)])  # (Q, P)
        out = np.empty((len(query), len(train)))
        s = 0
        for x in self._batches(train):
            g = per_example_grads(self.f, x, self.cfg)  # (b, P)
            out[:, s:s + len(x)] = -(pq @ g.t()).double().cpu().numpy()
            s += len(x)
        return out
