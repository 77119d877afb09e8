r"""nat_estimators — unbiased token subsampling for RL on LLMs.

Sampling designs over the tokens of ragged batches with exact first- and second-order inclusion
probabilities, Horvitz–Thompson / Hájek estimators and their variances, and PyTorch plumbing
(:mod:`nat_estimators.rl`) for NAT ("Not All Tokens Are Needed") policy-gradient losses.
"""

from __future__ import annotations

from ._design import Design
from .estimators import hajek_mean, hajek_total, ht_mean, ht_total, ht_weights
from .inclusion import inclusion_probabilities
from .poisson import Poisson
from .prefix import Prefix
from .random import uniforms
from .simple_random import SimpleRandom
from .summary import DesignSummary, design_summary
from .systematic import Systematic
from .variance import (
    BiasedVarianceEstimateWarning,
    HajekLinearizationWarning,
    design_variance,
    variance_estimate,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "BiasedVarianceEstimateWarning",
    "Design",
    "DesignSummary",
    "HajekLinearizationWarning",
    "Poisson",
    "Prefix",
    "SimpleRandom",
    "Systematic",
    "__version__",
    "design_summary",
    "design_variance",
    "hajek_mean",
    "hajek_total",
    "ht_mean",
    "ht_total",
    "ht_weights",
    "inclusion_probabilities",
    "uniforms",
    "variance_estimate",
]
