r"""Monte Carlo unbiasedness at scale, with exact variances and negative controls.

Batch: 60 rollouts per policy (15 targets x group 4, seed 1): ragged answers (2-9 tokens for the
transformer, 3-17 for the GRU; 390 and 595 tokens), group-normalised advantages, the
clipped-ratio GRPO loss with KL and entropy terms at :math:`\theta \ne \theta_{old}`.  Designs:
every ``select_tokens`` design at keep 0.5 — prefix (full-keep floor 0.05), uniform Poisson,
simple random, systematic, Poisson and systematic with :math:`\pi \propto` old-policy entropy.
Far beyond enumeration: :math:`\prod_i (N_i + 1) > 10^{51}` prefix outcomes,
:math:`2^{390} > 10^{117}` Poisson outcomes.

Per policy x design: ``M`` draws (20 000; 3 000 with ``--nat-quick``; times ``--nat-scale``),
seed ``1000 + 10 * policy index + design index``, each projected on 8 random unit directions
(seed 2024 + policy index) and on each mode's own full-gradient direction
(see :mod:`validation.montecarlo`).

Statistics (family-wise false-alarm probability 1e-3 for the whole run, Bonferroni):

* **mean**: :math:`z = (\bar X - v^\top\nabla J)/\sqrt{V/M}` with the *exact* design variance
  :math:`V` — 540 tests (2 policies x 6 designs x 5 modes x 9 directions) share 5e-4:
  :math:`|z| \le 4.91`;
* **variance**: :math:`(s^2 - V)/\sqrt{(m_4 - s^4)/M}` (delta method, sample fourth moment) —
  540 tests share 5e-4: :math:`|z| \le 4.91`;
* **negative controls** must give :math:`|z| > 4.91` with the studentised statistic
  :math:`(\bar X - v^\top\nabla J)/(s/\sqrt M)` (their variance is not the HT variance) in at
  least one direction, for *every* mode: (1) the "replace the response mask" shortcut under
  prefix cutting, (2) the Hájek normalizer under prefix cutting, (3) mis-specified weights
  :math:`1/\pi^{0.8}` under every design.  Power: rejection rate over 20 disjoint replicates.

The draws are checked against the real pipeline (``test_pipeline_matches``) before they are
trusted.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nat_estimators.rl import LossNormalizers, loss_coefficients, needs_sizes

from . import harness as H
from . import montecarlo as MC
from .report import REGISTRY
from .world import (
    PIPELINE_CHECK_DRAWS,
    PIPELINE_MAX_TOKENS,
    POLICIES,
    mode_directions,
)

CONTROL_MODES = ("token-mean", "seq-mean-token-mean")


@pytest.mark.parametrize("policy", POLICIES)
def test_token_gradients_add_up(world, policy):
    """The per-token gradients behind the exact variances sum to the full-token gradient of
    every mode (statistic: max relative error over directions; threshold 1e-10)."""
    data = world.mc(policy)
    for mode in H.CANONICAL_MODES:
        mu, _ = world.moments(policy, "prefix", mode)
        ref = (data.full[mode] @ data.directions).cpu().numpy()
        err = np.abs(mu - ref).max() / np.abs(ref).max()
        assert err < 1e-10, (mode, err)


@pytest.mark.parametrize("design", H.DESIGN_NAMES)
@pytest.mark.parametrize("policy", POLICIES)
def test_pipeline_matches(world, policy, design):
    """Draw by draw, the real pipeline's gradient (crop, pack into <= 96-token micro-batches,
    selected-position head, agg_loss, backward) projected on the directions equals the
    coefficient formula the Monte Carlo uses: statistic max |difference| / max |value| over
    directions, modes and estimators; threshold 1e-9; seed 7 + design index."""
    data = world.mc(policy)
    case = data.case
    rm = case.response_mask
    B = rm.shape[0]
    r = PIPELINE_CHECK_DRAWS
    gen = torch.Generator(device=rm.device).manual_seed(7 + H.DESIGN_NAMES.index(design))
    sizes = case.batch.sizes if needs_sizes(design) else None
    from nat_estimators.rl import select_tokens

    sel_all = select_tokens(rm.repeat(r, 1), design, H.KEEP,
                            sizes=None if sizes is None else sizes.repeat(r, 1), generator=gen,
                            full_keep=H.FULL_KEEP, weight_dtype=H.DTYPE)
    losses: dict = {("ht", m): H.ht_loss(m) for m in H.CANONICAL_MODES}
    if design == "prefix":
        losses.update({("hajek", m): H.hajek_loss(m) for m in CONTROL_MODES})
        losses.update({("shortcut", m): H.shortcut_loss(m) for m in CONTROL_MODES})
    worst, mbs = 0.0, 0
    for j in range(r):
        sel = sel_all.rows(torch.arange(j * B, (j + 1) * B, device=rm.device))
        grads = H.pipeline_gradients(case, sel, losses, max_tokens=PIPELINE_MAX_TOKENS)
        mbs = max(mbs, len(H.plan_batch(case.batch, sel, H.config(max_tokens=PIPELINE_MAX_TOKENS))))
        for (kind, mode), g in grads.items():
            got = (g @ data.directions).cpu().numpy()
            if kind == "shortcut":
                c = loss_coefficients(sel.sample, mode, dtype=H.DTYPE,
                                      normalizers=LossNormalizers.from_mask(
                                          sel.sample, const_len=H.CONST_LEN))
            else:
                c = loss_coefficients(rm, mode, weights=sel.weights, dtype=H.DTYPE,
                                      normalizers=case.normalizers,
                                      normalizer="hajek" if kind == "hajek" else "ht")
            want = torch.einsum("bt,btk->k", c, data.tokens.proj).cpu().numpy()
            worst = max(worst, float(np.abs(got - want).max() / np.abs(want).max()))
    REGISTRY.checks.append(dict(policy=policy, design=design, draws=r, losses=len(losses),
                                micro_batches=mbs, max_rel_err=worst))
    assert worst < 1e-9, worst


@pytest.mark.parametrize("design", H.DESIGN_NAMES)
@pytest.mark.parametrize("policy", POLICIES)
def test_unbiased(world, policy, design):
    """NAT gradients are unbiased and their variance is the exact design variance.

    Statistics: z of the mean with the exact variance and z of the sample variance (see the
    module docstring), for 5 modes x 9 directions; threshold |z| <= world.z_mean (4.91);
    seed world.draw_seed(policy, design).  Hájek is measured on the same draws (recorded, not
    asserted).
    """
    data = world.mc(policy)
    dr = world.draws(policy, design)
    failures = []
    for mode in H.CANONICAL_MODES:
        idx = mode_directions(mode)
        mu, V = world.moments(policy, design, mode)
        mu, V = mu[idx], V[idx]
        x = dr.values[("ht", mode)][:, idx]
        z = MC.z_exact(x, mu, V)
        zv = MC.z_variance(x, V)
        # exact covariance traces (per-row scales: every mode is a_i * sum_t l_it)
        a = H.row_scales(data.case.response_mask, mode)
        tr = float((a**2 * data.tokens.trace_var[design]).sum())
        tr_p = float((a**2 * data.tokens.trace_var["poisson"]).sum())
        g2 = float(data.full[mode].norm() ** 2)
        # Hajek on the same draws, along the mode's own gradient direction (last index)
        h = dr.values[("hajek", mode)][:, idx]
        hb = h.mean(0)[-1] - mu[-1]
        hv = h.var(0, ddof=1)[-1]
        REGISTRY.mc.append(dict(
            policy=policy, design=design, mode=mode, draws=dr.draws,
            z_g=float(z[-1]), z_max=float(np.abs(z).max()), zvar_max=float(np.abs(zv).max()),
            var_ratio=float((x.var(0, ddof=1) / V).mean()), rel_var=tr / g2,
            vs_poisson=tr / tr_p, kept=dr.mean_selected,
            hajek_z_g=float(MC.z_student(h, mu)[-1]),
            hajek_z_max=float(np.abs(MC.z_student(h, mu)).max()),
            hajek_rel_bias=float(hb / mu[-1]), hajek_var_ratio=float(hv / V[-1]),
            hajek_mse_ratio=float((hv + hb**2) / V[-1]),
        ))
        if np.abs(z).max() > world.z_mean:
            failures.append(f"{mode}: mean z = {np.round(z, 2).tolist()}")
        if np.abs(zv).max() > world.z_var:
            failures.append(f"{mode}: variance z = {np.round(zv, 2).tolist()}")
    assert not failures, failures


CONTROLS = {
    "shortcut": ("replace the response mask by the selection", ("prefix",)),
    "hajek": ("Hájek normalizer under prefix cutting", ("prefix",)),
    "pi^0.8": ("weights 1/pi^0.8 instead of 1/pi", H.DESIGN_NAMES),
}


@pytest.mark.parametrize("control", list(CONTROLS))
@pytest.mark.parametrize("policy", POLICIES)
def test_negative_control_is_rejected(world, policy, control):
    """A biased estimator must be caught by the same mean test: studentised |z| > world.z_mean
    (4.91) in some direction, for every mode (and every design listed for the control); same
    draws and seeds as test_unbiased."""
    not_rejected = []
    for design in CONTROLS[control][1]:
        dr = world.draws(policy, design)
        zs, powers = [], []
        for mode in H.CANONICAL_MODES:
            idx = mode_directions(mode)
            mu, _ = world.moments(policy, design, mode)
            x = dr.values[(control, mode)][:, idx]
            z = np.abs(MC.z_student(x, mu[idx]))
            zs.append(float(z.max()))
            powers.append(MC.replicate_power(x, mu[idx], world.z_mean,
                                             world.settings.power_reps))
            if z.max() <= world.z_mean:
                not_rejected.append(f"{design}/{mode}: max |z| = {z.max():.2f}")
        REGISTRY.controls.append(dict(
            policy=policy, control=control, design=design,
            draws=int(dr.values[(control, H.CANONICAL_MODES[0])].shape[0]),
            z_max=max(zs), z_min_mode=min(zs), power=min(powers),
            rejected=min(zs) > world.z_mean,
        ))
    assert not not_rejected, not_rejected
