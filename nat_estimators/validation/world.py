"""Lazily built, session-wide state of the validation suite: the batches, full-token gradients,
per-token gradients, exact moments and Monte Carlo draws (each computed once, used by several
tests), with every seed and size of the suite in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import nat_estimators as nat
from nat_estimators.rl import LOSS_MODES

from . import harness as H
from . import montecarlo as MC
from .report import REGISTRY

POLICIES = ("transformer", "gru")

# false-alarm budget of the whole run (every statistical test of the suite, Bonferroni)
ALPHA_TOTAL = 1e-3
ALPHA_MEAN = ALPHA_TOTAL / 2  # z-tests of the mean (unbiasedness)
ALPHA_VAR = ALPHA_TOTAL / 2  # sample-vs-exact variance tests

# Monte Carlo sizes (draws per policy x design); the shortcut control is a per-draw loop and
# uses fewer draws
DRAWS_FULL, DRAWS_QUICK = 20_000, 3_000
CONTROL_DRAWS_FULL, CONTROL_DRAWS_QUICK = 2_000, 600
POWER_REPS = 20

# exact proofs: small batches drawn from fixed-seed rollouts
EXACT_TARGETS = (3, 8, 13, 19, 24, 30)
EXACT_GROUP = 4
EXACT_SEED = 0
EXACT_MAX_NEW = 8
# <= N + 1 outcomes per row
CUT_DESIGNS = ("prefix", "systematic", "systematic_proportional", "prefix_optimal",
               "systematic_optimal")
# subsets of short rows
SUBSET_DESIGNS = ("poisson", "poisson_proportional", "simple_random", "poisson_optimal")
EXACT_MAX_TOKENS = 16  # micro-batch budget in the exact proofs (several micro-batches)

# Monte Carlo: 60 rows (15 targets x group 4): 2-9 answer tokens (transformer), 3-17 (GRU)
MC_TARGETS = tuple(range(4, 61, 4))
MC_GROUP = 4
MC_SEED = 1
K_RANDOM = 8  # random unit directions, plus each mode's own full-gradient direction
DIRECTION_SEED = 2024
DRAW_SEED = 1000  # + 10 * policy index + design index
PIPELINE_CHECK_DRAWS = 2
PIPELINE_MAX_TOKENS = 96

MEAN_TESTS = len(POLICIES) * len(H.DESIGN_NAMES) * len(H.CANONICAL_MODES) * (K_RANDOM + 1)
VAR_TESTS = MEAN_TESTS


@dataclass
class MCData:
    case: H.Case
    directions: torch.Tensor  # (P, K_RANDOM + len(modes))
    full: dict[str, torch.Tensor]
    designs: dict[str, nat.Design]
    tokens: H.TokenGradients


def mode_directions(mode: str) -> list[int]:
    """Indices of the directions a mode is tested on: the random ones and its own g."""
    return [*range(K_RANDOM), K_RANDOM + H.CANONICAL_MODES.index(mode)]


def _record_case(case: H.Case) -> None:
    L = case.response_mask.sum(-1)
    REGISTRY.cases.append(dict(
        policy=case.policy, label=case.label, rows=int(L.numel()),
        lengths=f"{int(L.min())}-{int(L.max())}", tokens=int(L.sum()),
        reward=float(case.rollouts.rewards.mean()),
        nonzero_adv=float((case.rollouts.advantages != 0).float().mean()),
    ))


class World:
    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self._exact: dict[tuple[str, str], tuple[H.Case, dict[str, torch.Tensor]]] = {}
        self._mc: dict[str, MCData] = {}
        self._draws: dict[tuple[str, str], MC.Draws] = {}
        self.z_mean = H.bonferroni_z(ALPHA_MEAN, MEAN_TESTS)
        self.z_var = H.bonferroni_z(ALPHA_VAR, VAR_TESTS)
        REGISTRY.meta.update(mean_tests=MEAN_TESTS, var_tests=VAR_TESTS, z_mean=self.z_mean,
                             z_var=self.z_var, directions=K_RANDOM + 1)

    @property
    def exact_modes(self) -> tuple[str, ...]:
        return H.CANONICAL_MODES if self.settings.quick else LOSS_MODES

    # ------------------------------------------------------------------ exact
    def exact_case(self, policy: str, kind: str) -> tuple[H.Case, dict[str, torch.Tensor]]:
        """``kind="cuts"``: 3 rows of 3-8 answer tokens with distinct lengths and nonzero
        advantages, one answer token made ineligible (a non-contiguous mask); ``"subsets"``:
        the 2 shortest rows and the shortest with a nonzero advantage (<= 8 tokens)."""
        key = (policy, kind)
        if key not in self._exact:
            if kind == "cuts":
                case = H.make_case(policy, targets=EXACT_TARGETS, group=EXACT_GROUP,
                                   seed=EXACT_SEED, max_new=EXACT_MAX_NEW,
                                   rows=lambda ro: H.pick_rows(ro, 3, (3, EXACT_MAX_NEW)),
                                   tool_token=0, device=self.settings.device, label="exact-cuts")
            else:
                case = H.make_case(policy, targets=EXACT_TARGETS, group=EXACT_GROUP,
                                   seed=EXACT_SEED, max_new=EXACT_MAX_NEW,
                                   rows=lambda ro: H.short_rows(ro, 3, 8),
                                   device=self.settings.device, label="exact-subsets")
            _record_case(case)
            self._exact[key] = (case, H.full_gradients(case, LOSS_MODES))
        return self._exact[key]

    # ------------------------------------------------------------------ Monte Carlo
    def mc(self, policy: str) -> MCData:
        if policy not in self._mc:
            case = H.make_case(policy, targets=MC_TARGETS, group=MC_GROUP, seed=MC_SEED,
                               device=self.settings.device, label="monte-carlo")
            _record_case(case)
            P = sum(p.numel() for p in case.params)
            g = torch.Generator().manual_seed(DIRECTION_SEED + POLICIES.index(policy))
            R = torch.randn(P, K_RANDOM, generator=g, dtype=H.DTYPE)
            R = (R / R.norm(dim=0)).to(case.response_mask.device)
            full = H.full_gradients(case, H.CANONICAL_MODES)
            G = torch.stack([full[m] / full[m].norm() for m in H.CANONICAL_MODES], 1)
            D = torch.cat([R, G], 1)
            gen = torch.Generator(device=case.response_mask.device).manual_seed(0)
            designs = {n: case.selection(n, gen).design for n in H.DESIGN_NAMES}
            tokens = H.token_gradients(case, D, designs)
            self._mc[policy] = MCData(case, D, full, designs, tokens)
        return self._mc[policy]

    def draw_seed(self, policy: str, design: str) -> int:
        return DRAW_SEED + 10 * POLICIES.index(policy) + H.DESIGN_NAMES.index(design)

    def draws(self, policy: str, design: str) -> MC.Draws:
        key = (policy, design)
        if key not in self._draws:
            data = self.mc(policy)
            s = self.settings
            self._draws[key] = MC.draw_projections(
                data.case, design, data.tokens.proj, draws=s.draws,
                seed=self.draw_seed(policy, design),
                control_draws=s.control_draws if design == "prefix" else 0,
            )
        return self._draws[key]

    def moments(self, policy: str, design: str, mode: str) -> tuple[np.ndarray, np.ndarray]:
        data = self.mc(policy)
        return MC.exact_moments(data.case, data.designs[design], data.tokens.proj, mode)
