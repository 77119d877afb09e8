r"""Monte Carlo draws of NAT gradients at scale, their exact design variance, and the statistics.

For one batch (a :class:`~nat_estimators.validation.harness.Case`) and one design, every draw
:math:`j` is a selection made by :func:`nat_estimators.rl.select_tokens` — the call users make —
and its NAT gradient projected on :math:`K` fixed unit directions :math:`v_k`:

.. math:: X^{(m)}_{jk} = v_k^\top \nabla_\theta \hat J^{(m)}_{S_j}
          = \sum_{i,t} c^{(m)}_{it}(S_j)\, v_k^\top \nabla_\theta \ell_{it},

with :math:`c^{(m)}(S)` from :func:`nat_estimators.rl.loss_coefficients` (``agg_loss(l, ...) ==
(c * l).sum()``: the HT weights and the full-mask normalizers of mode :math:`m`).  The identity is
the chain rule (the coefficients do not depend on :math:`\theta`); it is checked draw by draw
against the real pipeline (crop, pack, backbone, selected-position head, ``agg_loss``,
``backward``) to 1e-9 for the first draws of every design (``test_pipeline_matches``), so the
statistics below are statistics of the gradients the pipeline produces, and draws cost
microseconds instead of a backward pass each.

Many draws at once: rows are sampled independently by every design, so ``select_tokens`` on the
response mask repeated :math:`M` times is :math:`M` independent draws of the batch's selection;
the full-mask normalizers of one batch (:class:`~nat_estimators.rl.LossNormalizers` with the
batch's :math:`N, G` and the repeated :math:`L_i`) give every copy its own, correct denominators.

Exact variance: :math:`V^{(m)}_k = \sum_i \mathrm{Var}(\text{HT total of }
y_{it} = a^{(m)}_{it}\, v_k^\top\nabla\ell_{it})` by :func:`nat_estimators.design_variance` (rows
are independent), :math:`a^{(m)}` the full-mask coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import nat_estimators as nat
from nat_estimators.rl import (
    LossNormalizers,
    ht_weights,
    loss_coefficients,
    needs_sizes,
    select_tokens,
)

from .harness import CANONICAL_MODES, CONST_LEN, DTYPE, FULL_KEEP, KEEP, Case

__all__ = ["Draws", "draw_projections", "exact_moments"]


@dataclass
class Draws:
    """Projected gradients of ``M`` draws: ``values[name]`` is ``(M, K)`` float64 for every
    estimator ``name`` (``("ht", mode)``, ``("hajek", mode)``, ``("pi^0.8", mode)``,
    ``("shortcut", mode)``; the shortcut over the first ``control_draws`` draws only)."""

    values: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    draws: int = 0
    control_draws: int = 0
    mean_selected: float = 0.0


def _rep_normalizers(case: Case, reps: int) -> LossNormalizers:
    n = case.normalizers
    return LossNormalizers(n.num_tokens, n.num_seqs, n.num_rows, n.seq_lengths.repeat(reps),
                           const_len=CONST_LEN)


def full_coefficients(case: Case, mode: str) -> torch.Tensor:
    """:math:`a^{(m)}_{it} m_{it}` of the full-token loss (``loss_coefficients``, no weights)."""
    return loss_coefficients(case.response_mask, mode, normalizers=case.normalizers, dtype=DTYPE)


def draw_projections(
    case: Case,
    design: str,
    proj: torch.Tensor,
    *,
    draws: int,
    seed: int,
    chunk: int = 1000,
    modes: tuple[str, ...] = CANONICAL_MODES,
    control_draws: int = 0,
    hajek: bool = True,
    misspecified: bool = True,
) -> Draws:
    """``draws`` selections of ``design`` on the case's batch and their projected NAT gradients
    (and those of the Hájek variant, the mis-specified :math:`\\pi^{0.8}` weights, and, for the
    first ``control_draws`` draws, the "replace the response mask" shortcut)."""
    rm = case.response_mask
    B, W = rm.shape
    dev = rm.device
    g = torch.Generator(device=dev).manual_seed(seed)
    sizes = case.batch.sizes if needs_sizes(design) else None
    out: dict[tuple[str, str], list[np.ndarray]] = {}
    n_sel = 0.0
    done = 0
    ctrl_done = 0
    while done < draws:
        r = min(chunk, draws - done)
        mask = rm.repeat(r, 1)
        sel = select_tokens(mask, design, KEEP, sizes=None if sizes is None else sizes.repeat(r, 1),
                            generator=g, full_keep=FULL_KEEP, weight_dtype=DTYPE)
        n_sel += float(sel.sample.sum())
        norm = _rep_normalizers(case, r)
        variants: list[tuple[str, dict[str, Any]]] = [("ht", dict(weights=sel.weights))]
        if hajek:
            variants.append(("hajek", dict(weights=sel.weights, normalizer="hajek")))
        if misspecified:
            bad = torch.where(mask, sel.pi ** 0.8, sel.pi)
            w_bad = ht_weights(sel.sample, bad, mask=mask, dtype=DTYPE)
            variants.append(("pi^0.8", dict(weights=w_bad)))
        for mode in modes:
            for name, kw in variants:
                c = loss_coefficients(mask, mode, normalizers=norm, dtype=DTYPE, **kw)
                x = torch.einsum("jbt,btk->jk", c.view(r, B, W), proj)
                out.setdefault((name, mode), []).append(x.cpu().numpy())
        # negative control 1: the selection replaces the response mask (counts from the selection)
        rc = min(r, control_draws - ctrl_done)
        for j in range(rc):
            s = sel.sample[j * B : (j + 1) * B]
            sn = LossNormalizers.from_mask(s, const_len=CONST_LEN)
            for mode in modes:
                c = loss_coefficients(s, mode, normalizers=sn, dtype=DTYPE)
                x = torch.einsum("bt,btk->k", c, proj)[None]
                out.setdefault(("shortcut", mode), []).append(x.cpu().numpy())
        ctrl_done += rc
        done += r
    res = Draws({k: np.concatenate(v) for k, v in out.items()}, draws, ctrl_done,
                n_sel / (draws * float(rm.sum())))
    return res


def exact_moments(case: Case, design: nat.Design, proj: torch.Tensor,
                  mode: str) -> tuple[np.ndarray, np.ndarray]:
    r"""Exact mean :math:`\mu_k = v_k^\top\nabla J^{(m)}` and design variance :math:`V_k` of the
    projected NAT gradient (``nat.design_variance`` of :math:`y_{it} = a_{it} v_k^\top
    \nabla\ell_{it}`, summed over the independent rows)."""
    a = full_coefficients(case, mode)
    y = a[..., None] * proj
    mu = y.sum((0, 1))
    V = nat.design_variance(y, design, axis=1).sum(0)
    return mu.cpu().numpy(), V.cpu().numpy()


# ----------------------------------------------------------------------------- statistics
def z_exact(x: np.ndarray, mu: np.ndarray, V: np.ndarray) -> np.ndarray:
    r"""Mean test with the exact variance: :math:`z_k = (\bar X_k - \mu_k)/\sqrt{V_k/M}`."""
    M = x.shape[0]
    return (x.mean(0) - mu) / np.sqrt(V / M)


def z_student(x: np.ndarray, mu: np.ndarray) -> np.ndarray:
    r"""Studentised mean test: :math:`(\bar X_k - \mu_k)/(s_k/\sqrt M)` (any estimator)."""
    M = x.shape[0]
    return (x.mean(0) - mu) / (x.std(0, ddof=1) / np.sqrt(M))


def z_variance(x: np.ndarray, V: np.ndarray) -> np.ndarray:
    r"""Sample variance against the exact one: :math:`(s^2_k - V_k)/\sqrt{(m_{4,k} - s_k^4)/M}`,
    the delta-method normal approximation of :math:`s^2` with the sample fourth central moment
    :math:`m_4` (valid for any finite-kurtosis law; no normality assumed)."""
    M = x.shape[0]
    d = x - x.mean(0)
    s2 = (d**2).sum(0) / (M - 1)
    m4 = (d**4).mean(0)
    return (s2 - V) / np.sqrt(np.maximum(m4 - s2**2, 1e-300) / M)


def replicate_power(x: np.ndarray, mu: np.ndarray, threshold: float, reps: int) -> float:
    """Fraction of ``reps`` disjoint replicates of ``M/reps`` draws in which the studentised
    mean test rejects in at least one direction at ``threshold``."""
    M = x.shape[0] // reps
    hits = 0
    for r in range(reps):
        z = z_student(x[r * M : (r + 1) * M], mu)
        hits += bool((np.abs(z) > threshold).any())
    return hits / reps
