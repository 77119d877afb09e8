r"""Variance-optimal token budgets on the trained validation policies' real per-token gradients.

For GRPO batches of rollouts of the two trained policies (:mod:`nat_estimators.validation`), the
per-token gradients :math:`g_{it} = \nabla_\theta \ell_{it}` of the clipped-ratio/KL/entropy loss
are computed one token at a time (float64), and every design's exact covariance trace of the
Horvitz–Thompson total :math:`\sum_{i,t} g_{it}` is evaluated with
:func:`~nat_estimators.design_variance` on a square root of each row's Gram matrix (no Monte
Carlo).  At keep :math:`\kappa = 0.5` (equal expected kept tokens, hence equal expected compute
within each pair):

* ``optimal_prefix_variance_ratio_vs_rpc@0.5`` — :meth:`Prefix.optimal` on a profile computed
  before the draw (second moments :math:`(|A_i|(1 - p_{it}))^2`, the a-priori proxy) over
  ``Prefix.from_fraction`` (the paper's RPC), both with full-keep floor 0.05;
* ``optimal_poisson_variance_ratio_vs_urs@0.5`` — :meth:`Poisson.optimal` on the same proxy over
  uniform Poisson (the paper's URS);
* ``optimal_*_shared_*``: the same with one budget for the whole batch (``shared=True``: rows
  with larger proxies get more of the :math:`\kappa \sum_i N_i` expected tokens);
* the same with the oracle profile (the real :math:`d_t` / :math:`\|g_t\|^2`: the bound a perfect
  proxy would reach), and every proxy's rank correlation with :math:`\|g_{it}\|`;
* ``controller_variance_ratio_error`` — :class:`~nat_estimators.rl.KappaController` (RPC design,
  :math:`\varepsilon = 0.5`) picks :math:`\kappa` for each batch from the proxy alone; the realised
  ratio is the exact NAT variance at that :math:`\kappa` over the rollout-sampling variance
  :math:`\frac{B}{B-1}\sum_i \|G_i - \bar G\|^2` of the row gradients; the figure is the worst
  :math:`|\text{ratio}/\varepsilon - 1|` over the evaluation batches.  The controller's coherence
  :math:`\rho` and calibration :math:`c` are fitted on a separate pilot batch per policy (whose
  per-token gradients are computed once); the evaluation batches use the proxy alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import nat_estimators as nat  # noqa: E402
from nat_estimators.allocation import prefix_profile  # noqa: E402
from nat_estimators.rl import KappaController  # noqa: E402
from nat_estimators.validation import harness as H  # noqa: E402
from nat_estimators.validation.world import MC_GROUP, MC_TARGETS, POLICIES  # noqa: E402

KEEP = 0.5
FULL_KEEP = 0.05
EPSILON = 0.5
PROXY = "absA*(1-p)"  # the a-priori proxy of the headline figures
CALIBRATION_SEED = 100
#: Designs the controller runs with: the paper's RPC (headline) and the optimal cut law.
CONTROLLER_DESIGNS = ("prefix", "prefix_optimal")
EVAL_SEEDS_FULL = (101, 102, 103, 104, 105)
EVAL_SEEDS_QUICK = (101, 102)
#: Goals: >= 2x less variance than the paper's designs at equal compute; controller within 20%.
TARGETS = {
    f"optimal_prefix_variance_ratio_vs_rpc@{KEEP:g}": 0.5,
    f"optimal_poisson_variance_ratio_vs_urs@{KEEP:g}": 0.5,
    "controller_variance_ratio_error": 0.2,
}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def per_token_gradients(case: H.Case) -> tuple[torch.Tensor, torch.Tensor]:
    """Square roots ``Z`` (B, W, W) of the rows' Gram matrices (``Z Z^T = Y Y^T``, ``Y`` the
    per-token gradients, 0 off the mask) and the row gradients ``G`` (B, P)."""
    params = case.params
    rm = case.response_mask
    B, W = rm.shape
    Z = torch.zeros(B, W, W, dtype=H.DTYPE)
    G = []
    for i in range(B):
        width = int(case.batch.attention_mask[i].nonzero().max()) + 1
        ell = H.reference_per_token_loss(case.model, H._crop_batch(case.batch, width), rows=[i])[0]
        Y = torch.zeros(W, sum(p.numel() for p in params), dtype=H.DTYPE)
        for t in rm[i].nonzero()[:, 0].tolist():
            Y[t] = H.flat(torch.autograd.grad(ell[t], params, retain_graph=True,
                                              allow_unused=True), params)
        lam, Q = torch.linalg.eigh(Y @ Y.T)
        Z[i] = Q * lam.clamp(min=0).sqrt()
        G.append(Y.sum(0))
    return Z, torch.stack(G)


def proxies(case: H.Case) -> dict[str, torch.Tensor]:
    """Per-token proxies of ``||g_t||`` available at rollout time (old policy, advantages)."""
    b = case.batch
    rm = b.response_mask
    a = b.advantages.abs()[:, None].expand(rm.shape).to(H.DTYPE)
    # batch.sizes = old-policy entropy + 0.1 * its mean over the mask (harness.make_case)
    ent = b.sizes - b.sizes[rm].mean() / 11
    one_minus_p = 1 - b.old_log_probs.exp()
    out = {
        "absA": a, "H": ent, "1-p": one_minus_p, "absA*H": a * ent,
        "absA*(1-p)": a * one_minus_p, "absA*sqrt(H)": a * ent.clamp_min(0).sqrt(),
    }
    return {k: torch.where(rm, v, torch.zeros_like(v)) for k, v in out.items()}


def _var(Z: torch.Tensor, d: nat.Design) -> torch.Tensor:
    """Exact per-row covariance trace of the HT total under ``d``, shape (B,)."""
    return nat.design_variance(Z, d, axis=1).sum(-1)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx = np.argsort(np.argsort(x))
    ry = np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def _second_moment(p: torch.Tensor, rm: torch.Tensor) -> torch.Tensor:
    """``p**2`` floored at 1e-6 of its largest value (every token keeps a positive pi)."""
    m = p.clamp_min(0) ** 2
    floor = 1e-6 * float(m[rm].max()) if bool(rm.any()) else 1.0
    return torch.where(rm, m.clamp_min(floor), torch.zeros_like(m))


def run_allocation_benchmarks(quick: bool = False) -> dict[str, Any]:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ratios: dict[str, float] = {}
    records: list[dict[str, Any]] = []
    sums: dict[str, float] = {}
    corr: dict[str, list[float]] = {}
    ctrl_rows: list[dict[str, Any]] = []
    seeds = EVAL_SEEDS_QUICK if quick else EVAL_SEEDS_FULL
    for policy in POLICIES:
        batches = {}
        for seed in (CALIBRATION_SEED, *seeds):
            case = H.make_case(policy, targets=MC_TARGETS, group=MC_GROUP, seed=seed,
                               label=f"allocation-{seed}")
            Z, G = per_token_gradients(case)
            batches[seed] = (case, Z, G)
            _log(f"[allocation] {policy} seed {seed}: {case.describe()}")
        # ---------------------------------------------------------- coherence (calibration)
        case, Z, G = batches[CALIBRATION_SEED]
        rm = case.response_mask
        m_c = _second_moment(proxies(case)[PROXY], rm)
        v_roll = _rollout_variance(G)
        # V_roll model is linear in rho: (1 - rho) a + rho b = v_roll, on the proxy's scale
        # (the proxy is a scale-free shape: its scale s is fitted together with rho from the
        # exact gradient norms of the calibration batch: s = sum ||g||^2 / sum m)
        gnorm2 = (Z ** 2).sum(-1)
        s = float(gnorm2.sum() / m_c.sum())
        a_ = s * float(m_c.sum())
        b_ = s * float((m_c.sqrt().sum(-1) ** 2).sum())
        rho = float(np.clip((v_roll - a_) / (b_ - a_), 0.0, 1.0)) if b_ > a_ else 0.0
        records.append({"name": f"allocation/coherence/{policy}", "section": "allocation",
                        "rho": rho, "scale": s, "v_roll": v_roll,
                        "note": "fitted on the calibration batch (seed "
                                f"{CALIBRATION_SEED}), used on the evaluation batches"})
        ctrls = {}
        for cd in CONTROLLER_DESIGNS:
            ctrl = KappaController(epsilon=EPSILON, design=cd, coherence=rho,
                                   full_keep=FULL_KEEP, kappa_min=FULL_KEEP)
            # calibration: realised over predicted ratio on the calibration batch at its kappa
            k_c = ctrl.kappa(rm, m_c)
            real_c = float(_var(Z, _controlled(cd, k_c, rm, m_c)).sum()) / v_roll
            calib = real_c / ctrl.history[-1]["ratio"]
            ctrls[cd] = (KappaController(epsilon=EPSILON, design=cd, coherence=rho,
                                         full_keep=FULL_KEEP, kappa_min=FULL_KEEP,
                                         calibration=calib), calib)
            records[-1][f"calibration[{cd}]"] = calib
        # ---------------------------------------------------------- evaluation batches
        for seed in seeds:
            case, Z, G = batches[seed]
            rm = case.response_mask
            prox = proxies(case)
            gn = (Z ** 2).sum(-1).sqrt()
            for k, v in prox.items():
                corr.setdefault(k, []).append(_spearman(v[rm].numpy(), gn[rm].numpy()))
            designs: dict[str, nat.Design] = {
                "rpc": nat.Prefix.from_fraction(KEEP, mask=rm, full_keep=FULL_KEEP),
                "urs": nat.Poisson.from_fraction(KEEP, mask=rm),
                "systematic": nat.Systematic.from_fraction(KEEP, mask=rm),
            }
            # oracle profiles: the real d_t and ||g_t||^2
            d_real = prefix_profile(Z, mask=rm)
            designs["optimal_prefix_oracle"] = nat.Prefix.optimal(d_real, KEEP, mask=rm,
                                                                  full_keep=FULL_KEEP)
            designs["optimal_poisson_oracle"] = nat.Poisson.optimal(
                _second_moment(gn, rm), KEEP, mask=rm)
            for k, v in prox.items():
                m = _second_moment(v, rm)
                designs[f"optimal_prefix[{k}]"] = nat.Prefix.optimal(m, KEEP, mask=rm,
                                                                     full_keep=FULL_KEEP)
                designs[f"optimal_poisson[{k}]"] = nat.Poisson.optimal(m, KEEP, mask=rm)
                designs[f"optimal_systematic[{k}]"] = nat.Systematic.optimal(m, KEEP, mask=rm)
                designs[f"optimal_prefix_shared[{k}]"] = nat.Prefix.optimal(
                    m, KEEP, mask=rm, full_keep=FULL_KEEP, shared=True)
                designs[f"optimal_poisson_shared[{k}]"] = nat.Poisson.optimal(
                    m, KEEP, mask=rm, shared=True)
            for name, d in designs.items():
                size = d.expected_size()
                want = KEEP * rm.sum(-1).to(H.DTYPE)
                if "shared" in name:  # one budget for the batch
                    size, want = size.sum(), want.sum()
                torch.testing.assert_close(size, want)
                sums[f"{policy}/{name}"] = sums.get(f"{policy}/{name}", 0.0) + float(
                    _var(Z, d).sum())
            # ------------------------------------------------------ controller
            m = _second_moment(prox[PROXY], rm)
            real_roll = _rollout_variance(G)
            for cd, (ctrl, calib) in ctrls.items():
                kappa = ctrl.kappa(rm, m)
                per_row = _var(Z, _controlled(cd, kappa, rm, m))
                real_nat = float(per_row.sum())
                realised = real_nat / real_roll
                # what sets the error: each half of the ratio against its model (scale s)
                pred_nat = calib * s * ctrl.nat_variance(rm, m, kappa)
                pred_roll = s * ctrl.rollout_variance(rm, m)
                ctrl_rows.append({"policy": policy, "seed": seed, "design": cd, "kappa": kappa,
                                  "predicted_ratio": ctrl.history[-1]["ratio"],
                                  "realised_ratio": realised,
                                  "relative_error": realised / EPSILON - 1,
                                  "nat_variance_model_error": pred_nat / real_nat - 1,
                                  "rollout_variance_model_error": pred_roll / real_roll - 1,
                                  "realised_ratio_bootstrap_se": _bootstrap_se(per_row, G)})
    # ---------------------------------------------------------------- figures
    def both(name: str) -> float:
        return sum(v for k, v in sums.items() if k.endswith("/" + name))

    ratios[f"optimal_prefix_variance_ratio_vs_rpc@{KEEP:g}"] = (
        both(f"optimal_prefix[{PROXY}]") / both("rpc"))
    ratios[f"optimal_poisson_variance_ratio_vs_urs@{KEEP:g}"] = (
        both(f"optimal_poisson[{PROXY}]") / both("urs"))
    ratios[f"optimal_prefix_shared_variance_ratio_vs_rpc@{KEEP:g}"] = (
        both(f"optimal_prefix_shared[{PROXY}]") / both("rpc"))
    ratios[f"optimal_poisson_shared_variance_ratio_vs_urs@{KEEP:g}"] = (
        both(f"optimal_poisson_shared[{PROXY}]") / both("urs"))
    ratios[f"optimal_prefix_oracle_variance_ratio_vs_rpc@{KEEP:g}"] = (
        both("optimal_prefix_oracle") / both("rpc"))
    ratios[f"optimal_poisson_oracle_variance_ratio_vs_urs@{KEEP:g}"] = (
        both("optimal_poisson_oracle") / both("urs"))
    for cd in CONTROLLER_DESIGNS:
        key = "controller_variance_ratio_error" + ("" if cd == "prefix" else f"[{cd}]")
        ratios[key] = max(abs(r["relative_error"]) for r in ctrl_rows if r["design"] == cd)
    table = {}
    for policy in POLICIES:
        base = {"rpc": sums[f"{policy}/rpc"], "urs": sums[f"{policy}/urs"]}
        table[policy] = {k.split("/", 1)[1]: v / (base["rpc"] if "prefix" in k or k.endswith(
            "/rpc") else base["urs"]) for k, v in sums.items() if k.startswith(policy + "/")}
    records.append({"name": "allocation/variance", "section": "allocation", "keep": KEEP,
                    "full_keep": FULL_KEEP, "headline_proxy": PROXY,
                    "ratio_to_paper_design_by_policy": table,
                    "note": "prefix designs over RPC, per-position designs over URS; equal "
                            "expected kept tokens per row; exact design variances"})
    records.append({"name": "allocation/proxies", "section": "allocation",
                    "spearman_with_gradient_norm": {k: float(np.mean(v))
                                                    for k, v in corr.items()},
                    "note": "rank correlation of each proxy with ||grad l_t|| over tokens, "
                            "mean over policies and evaluation batches"})
    records.append({"name": "allocation/controller", "section": "allocation",
                    "epsilon": EPSILON, "designs": list(CONTROLLER_DESIGNS), "steps": ctrl_rows})
    for name, bound in TARGETS.items():
        v = ratios[name]
        records.append({"name": f"target/{name}", "section": "targets", "ratio": v,
                        "target": f"<= {bound:g}", "met": bool(v <= bound)})
    records.append({"name": "allocation/meta", "section": "allocation", "quick": quick,
                    "wall_s": time.perf_counter() - t0})
    return {"ratios": ratios, "records": records}


def _controlled(design: str, kappa: float, rm: torch.Tensor, m: torch.Tensor) -> nat.Design:
    """The design a controlled step draws from at ``kappa`` (``m``: the proxy's sizes)."""
    if design == "prefix":
        return nat.Prefix.from_fraction(kappa, mask=rm, full_keep=FULL_KEEP)
    return nat.Prefix.optimal(m, kappa, mask=rm, full_keep=FULL_KEEP)


def _bootstrap_se(per_row: torch.Tensor, G: torch.Tensor, reps: int = 400) -> float:
    """Bootstrap (rows resampled, fixed seed) standard error of the realised ratio: how precisely
    one batch of rows measures it."""
    g = torch.Generator().manual_seed(0)
    B = G.shape[0]
    out = []
    for _ in range(reps):
        idx = torch.randint(0, B, (B,), generator=g)
        out.append(float(per_row[idx].sum()) / _rollout_variance(G[idx]))
    return float(np.std(out, ddof=1))


def _rollout_variance(G: torch.Tensor) -> float:
    """``B/(B-1) sum_i ||G_i - mean G||^2``: the rollout-sampling variance of the batch total."""
    B = G.shape[0]
    return float(B / (B - 1) * ((G - G.mean(0)) ** 2).sum())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    out = run_allocation_benchmarks(args.quick)
    text = json.dumps(out, indent=1, default=str)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(json.dumps(out["ratios"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
