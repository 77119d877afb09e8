r"""nat_estimators — unbiased token subsampling for RL on LLMs.

Sampling designs over the tokens of ragged batches with exact first- and second-order inclusion
probabilities, Horvitz–Thompson / Hájek estimators and their variances, and PyTorch plumbing
(:mod:`nat_estimators.rl`) for NAT ("Not All Tokens Are Needed") policy-gradient losses.
"""

from __future__ import annotations

from ._design import Design
from .inclusion import inclusion_probabilities
from .poisson import Poisson
from .prefix import Prefix
from .random import uniforms
from .simple_random import SimpleRandom
from .systematic import Systematic

__version__ = "0.1.0.dev0"

__all__ = [
    "Design",
    "Poisson",
    "Prefix",
    "SimpleRandom",
    "Systematic",
    "__version__",
    "inclusion_probabilities",
    "uniforms",
]
