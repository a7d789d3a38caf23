"""Adaptive noise filtering (ANF) of DuPL's pseudo labels: a two-component 1-D Gaussian mixture
on each image's per-pixel seg losses, fitted by batched EM in torch (a replay of scikit-learn's
`GaussianMixture(n_components=2, random_state=0)`) or by scikit-learn itself."""
from __future__ import annotations

import math
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ConfigError
from ...io import IGNORE_INDEX

# The first three uniforms of numpy's RandomState(0): scikit-learn's k-means++ (random_state=0)
# draws the first centre with `choice(n, p=uniform)` and then 2 + int(log 2) = 2 local trials.
_KMEANS_UNIFORMS = tuple(np.random.RandomState(0).random_sample(3).tolist())
_EPS32 = float(np.finfo(np.float32).eps)


class TwoGaussians(NamedTuple):
    """Fitted 1-D two-component mixtures, one per row: (R, 2) each."""

    weights: torch.Tensor
    means: torch.Tensor
    variances: torch.Tensor

    def log_posterior(self, x: torch.Tensor) -> torch.Tensor:
        """(R, M) samples → (R, M, 2) log responsibilities."""
        var = self.variances[:, None, :]
        log_prob = (-0.5 * (math.log(2 * math.pi) + torch.log(var) +
                            (x[:, :, None] - self.means[:, None, :]) ** 2 / var) +
                    torch.log(self.weights[:, None, :]))
        return log_prob - torch.logsumexp(log_prob, dim=2, keepdim=True)


def _kmeans_two_labels(x: torch.Tensor, valid: torch.Tensor, counts: torch.Tensor,
                       max_iter: int = 300, tol: float = 1e-4) -> torch.Tensor:
    """Batched 1-D k-means (k=2) like scikit-learn's KMeans(n_init=1, random_state=0): k-means++
    seeding replayed with the same random draws, then Lloyd until the labels repeat or the
    centre shift² ≤ tol·var. Returns (R, N) labels in {0, 1} (padding: 0)."""
    rows = torch.arange(x.shape[0], device=x.device)
    n = counts.to(x.dtype)
    # first centre: numpy `choice` with uniform p → searchsorted(cdf, u, side="right")
    p = (torch.ones_like(x, dtype=torch.float32) / n[:, None].float()).double() * valid
    cdf = torch.cumsum(p, dim=1)
    cdf = cdf / cdf[rows, counts - 1][:, None]
    cdf = cdf.masked_fill(~valid, 2.0)
    u0 = torch.full((x.shape[0], 1), _KMEANS_UNIFORMS[0], dtype=x.dtype, device=x.device)
    first = torch.searchsorted(cdf.contiguous(), u0, right=True).squeeze(1).clamp_max(counts - 1)
    centre0 = x[rows, first]
    closest = ((x - centre0[:, None]) ** 2) * valid
    potential = closest.sum(1)
    draws = torch.tensor(_KMEANS_UNIFORMS[1:], dtype=x.dtype, device=x.device)
    targets = draws[None, :] * potential[:, None]
    candidates = torch.searchsorted(torch.cumsum(closest, 1).contiguous(), targets.contiguous())
    candidates = torch.minimum(candidates, (counts - 1)[:, None])
    cand_values = torch.gather(x, 1, candidates)
    cand_dist = torch.minimum(closest[:, None, :], (x[:, None, :] - cand_values[:, :, None]) ** 2)
    cand_pot = (cand_dist * valid[:, None, :]).sum(2)
    best = cand_pot.argmin(1)
    centres = torch.stack([centre0, cand_values[rows, best]], dim=1)

    mean = (x * valid).sum(1) / n
    threshold = (((x - mean[:, None]) ** 2) * valid).sum(1) / n * tol
    labels_old = torch.full_like(x, -1, dtype=torch.long)
    labels = torch.zeros_like(labels_old)
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    strict = torch.zeros_like(active)
    for _ in range(max_iter):
        new_labels = ((x - centres[:, 1:2]) ** 2 < (x - centres[:, 0:1]) ** 2).long()
        new_labels = new_labels * valid
        one_hot = F.one_hot(new_labels, 2).to(x.dtype) * valid[:, :, None]
        sizes = one_hot.sum(1)
        sums = (one_hot * x[:, :, None]).sum(1)
        new_centres = torch.where(sizes > 0, sums / sizes.clamp_min(1), centres)
        shift = ((new_centres - centres) ** 2).sum(1)
        same = (new_labels == labels_old).all(1)
        centres = torch.where(active[:, None], new_centres, centres)
        labels = torch.where(active[:, None], new_labels, labels)
        strict = strict | (active & same)
        finished = same | (shift <= threshold)
        labels_old = new_labels
        active = active & ~finished
        if not bool(active.any()):
            break
    # not strictly converged: labels of the final centres (scikit-learn reruns the E-step)
    final = ((x - centres[:, 1:2]) ** 2 < (x - centres[:, 0:1]) ** 2).long() * valid
    return torch.where(strict[:, None], labels, final)


def fit_two_gaussians(x: torch.Tensor, valid: torch.Tensor, max_iter: int = 10,
                      tol: float = 1e-2, reg_covar: float = 5e-4) -> TwoGaussians:
    """EM for a 1-D two-component Gaussian mixture on every row of `x` (R, N) at once (padding
    marked False in `valid`), mirroring scikit-learn's `GaussianMixture(n_components=2,
    max_iter, tol, reg_covar, random_state=0)`: k-means initialisation, stop a row once its mean
    log-likelihood changes by < tol. Computed in float64."""
    x = x.double() * valid
    counts = valid.sum(1)
    n = counts.double()
    resp = F.one_hot(_kmeans_two_labels(x, valid, counts), 2).double() * valid[:, :, None]

    def m_step(resp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        nk = resp.sum(1) + 10 * _EPS32
        means = (resp * x[:, :, None]).sum(1) / nk
        variances = (resp * (x[:, :, None] - means[:, None, :]) ** 2).sum(1) / nk + reg_covar
        return nk, means, variances

    nk, means, variances = m_step(resp)
    params = TwoGaussians(nk / n[:, None], means, variances)
    previous = torch.full_like(n, float("-inf"))
    active = torch.ones_like(valid[:, 0])
    for _ in range(max_iter):
        var = params.variances[:, None, :]
        log_prob = (-0.5 * (math.log(2 * math.pi) + torch.log(var) +
                            (x[:, :, None] - params.means[:, None, :]) ** 2 / var) +
                    torch.log(params.weights[:, None, :]))
        norm = torch.logsumexp(log_prob, dim=2, keepdim=True)
        lower_bound = (norm.squeeze(2) * valid).sum(1) / n
        resp = torch.exp(log_prob - norm) * valid[:, :, None]
        nk, means, variances = m_step(resp)
        keep = active[:, None]
        params = TwoGaussians(torch.where(keep, nk / nk.sum(1, keepdim=True), params.weights),
                              torch.where(keep, means, params.means),
                              torch.where(keep, variances, params.variances))
        converged = (lower_bound - previous).abs() < tol
        previous = torch.where(active, lower_bound, previous)
        active = active & ~converged
        if not bool(active.any()):
            break
    return params


class NoiseFilterResult(NamedTuple):
    """Outcome of `filter_noisy_labels` (per image unless noted)."""

    labels: torch.Tensor        # (B, H, W) filtered labels
    n_samples: torch.Tensor     # (B,) fg pixels with loss > loss_min
    fitted: torch.Tensor        # (B,) bool, n_samples > min_samples
    applied: torch.Tensor       # (B,) bool, |μ0 − μ1| > mean_gap
    means: torch.Tensor         # (B, 2) float64, NaN where not fitted
    variances: torch.Tensor     # (B, 2)
    weights: torch.Tensor       # (B, 2)
    noise_prob: torch.Tensor    # (B, H, W) float64 noise posterior, NaN where not applied


def filter_noisy_labels(loss: torch.Tensor, labels: torch.Tensor, gamma: float = 0.95,
                        mean_gap: float = 1.0, loss_min: float = 0.1, min_samples: int = 1000,
                        backend: Literal["torch", "sklearn"] = "torch",
                        ignore_index: int = IGNORE_INDEX) -> NoiseFilterResult:
    """Adaptive noise filtering (ANF) of the released code, per image.

    Samples: foreground pixels (label ∉ {0, 255}) with per-pixel loss > loss_min (float32
    comparison). If there are more than `min_samples`, a 2-component 1-D GMM is fitted; if its
    means differ by more than `mean_gap`, the larger-mean component is noise and every non-
    background pixel whose noise posterior (evaluated on all pixels) exceeds `gamma` becomes 255.
    backend "torch": batched EM on the loss's device; "sklearn": scikit-learn per image (the
    original, reference path)."""
    if backend not in ("torch", "sklearn"):
        raise ConfigError(f"params.yaml: dupl.gmm_backend: expected 'torch' or 'sklearn', "
                          f"got {backend!r}")
    batch = loss.shape[0]
    # float32 samples whatever the training precision (the EM itself runs in float64)
    loss_flat = loss.detach().float().reshape(batch, -1)
    label_flat = labels.reshape(batch, -1)
    foreground = (label_flat != 0) & (label_flat != ignore_index)
    selected = foreground & (loss_flat > torch.tensor(loss_min, dtype=loss_flat.dtype))
    n_samples = selected.sum(1)
    fitted = n_samples > min_samples
    nan = torch.full((batch, 2), float("nan"), dtype=torch.float64, device=loss.device)
    means, variances, weights = nan.clone(), nan.clone(), nan.clone()
    noise_prob = torch.full(loss_flat.shape, float("nan"), dtype=torch.float64, device=loss.device)
    rows = torch.nonzero(fitted).squeeze(1)
    if rows.numel():
        if backend == "torch":
            counts = n_samples[rows]
            order = torch.sort((~selected[rows]).to(torch.int8), dim=1, stable=True)[1]
            order = order[:, :int(counts.max())]
            samples = torch.gather(loss_flat[rows], 1, order)
            valid = torch.arange(order.shape[1], device=loss.device)[None, :] < counts[:, None]
            mixture = fit_two_gaussians(samples, valid)
            posterior = mixture.log_posterior(loss_flat[rows].double()).exp()
            means[rows], variances[rows], weights[rows] = (mixture.means, mixture.variances,
                                                           mixture.weights)
            noise = mixture.means.argmax(1)
            noise_prob[rows] = torch.gather(posterior, 2, noise.view(-1, 1, 1).expand(
                -1, posterior.shape[1], 1)).squeeze(2)
        else:
            _fit_sklearn(loss_flat, selected, rows, means, variances, weights, noise_prob)
    applied = fitted & ((means[:, 0] - means[:, 1]).abs() > mean_gap)
    noise_prob = torch.where(applied[:, None], noise_prob, torch.full_like(noise_prob, float("nan")))
    noisy = applied[:, None] & (noise_prob > gamma) & (label_flat != 0)
    filtered = torch.where(noisy, torch.full_like(label_flat, ignore_index), label_flat)
    return NoiseFilterResult(filtered.view_as(labels), n_samples, fitted, applied, means,
                             variances, weights, noise_prob.view(labels.shape))


def _fit_sklearn(loss_flat: torch.Tensor, selected: torch.Tensor, rows: torch.Tensor,
                 means: torch.Tensor, variances: torch.Tensor, weights: torch.Tensor,
                 noise_prob: torch.Tensor) -> None:
    """The original per-image scikit-learn loop (fills the given tensors for `rows`)."""
    from sklearn.mixture import GaussianMixture

    loss_np = loss_flat.cpu().numpy()
    selected_np = selected.cpu().numpy()
    for row in rows.tolist():
        gmm = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4,
                              random_state=0)
        gmm.fit(loss_np[row][selected_np[row]].reshape(-1, 1))
        means[row] = torch.from_numpy(gmm.means_[:, 0].astype(np.float64))
        variances[row] = torch.from_numpy(gmm.covariances_.reshape(2).astype(np.float64))
        weights[row] = torch.from_numpy(gmm.weights_.astype(np.float64))
        prob = gmm.predict_proba(loss_np[row].reshape(-1, 1))[:, int(gmm.means_.argmax())]
        noise_prob[row] = torch.from_numpy(prob.astype(np.float64)).to(noise_prob.device)
