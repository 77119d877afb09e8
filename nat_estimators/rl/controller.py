r"""A keep fraction chosen by the data: NAT's added variance held at a fraction of the rollouts'.

Per step, before the selection is drawn, :class:`KappaController` picks :math:`\kappa` so that

.. math::

    \frac{\hat V_{\text{NAT}}(\kappa)}{\hat V_{\text{roll}}} = \varepsilon ,

both predicted from per-token second-moment proxies :math:`m_{it} \ge 0` of the per-token
gradients (old-policy quantities and advantages, fixed before the draw — never the parameters
being updated).  The model: within row :math:`i`, :math:`E\|g_{it}\|^2 = m_{it}` and
:math:`E[g_{it}^\top g_{is}] = \rho \sqrt{m_{it} m_{is}}` (:math:`t \ne s`), rows independent,
:math:`\rho \in [0, 1]` the within-row *coherence*.  Then (``docs/theory/allocation``):

.. math::

    \hat V_{\text{NAT}}(\kappa) = (1 - \rho) \sum_{i,t} \Bigl(\frac{1}{\pi_{it}(\kappa)} - 1\Bigr)
    m_{it} + \rho\, V_{\pi(\kappa)}\bigl(\sqrt{m}\bigr),
    \qquad
    \hat V_{\text{roll}} = \sum_i \Bigl[(1 - \rho) \sum_t m_{it}
    + \rho \Bigl(\sum_t \sqrt{m_{it}}\Bigr)^2\Bigr],

the expected design variance of the HT gradient (:math:`\Delta_{kl}/(\pi_k\pi_l)` against the
model's second moments; :math:`V_\pi(\sqrt m)` is :func:`~nat_estimators.design_variance` of the
scalars :math:`\sqrt{m}`) and the expected :math:`\sum_i \|G_i\|^2` of the row gradients
:math:`G_i = \sum_t g_{it}` — the rollout-sampling variance of the full-token gradient when its
mean is small beside its spread (policy-gradient noise).  :math:`\hat V_{\text{NAT}}` decreases
in :math:`\kappa`; the equation is solved by regula falsi (Illinois) in :math:`1/\kappa` and
:math:`\kappa` clipped to :math:`[\kappa_{\min}, \kappa_{\max}]`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .. import design_variance
from ._checks import check_same_shape, check_shared
from .selection import _build_design, needs_sizes

__all__ = ["KappaController", "default_second_moment"]

_BISECT = 40
#: Stop once the predicted ratio is within this relative tolerance of epsilon (far below the
#: model's own error) ...
_RATIO_RTOL = 1e-4
#: ... or the bracket on kappa is this narrow.
_KAPPA_TOL = 1e-9


@dataclass
class KappaController:
    r"""Chooses each step's keep fraction so that NAT adds ``epsilon`` times the rollout variance.

    Parameters
    ----------
    epsilon : float
        Target ratio :math:`\varepsilon > 0` of the NAT-added variance to the rollout-sampling
        variance of the full-token gradient.
    kappa_min, kappa_max : float
        Bounds of :math:`\kappa`, :math:`0 < \kappa_{\min} \le \kappa_{\max} \le 1`.
    design : str, default "prefix"
        Design name (:data:`~nat_estimators.rl.DESIGNS`) the step draws with.
    coherence : float, default 0.0
        :math:`\rho \in [0, 1]`, the within-row correlation of the per-token gradients in the
        variance model (module documentation); measured on the trained validation policies by
        ``benchmarks/allocation.py``.
    full_keep, min_keep : float
        Passed to the design (prefix floor and minimum prefix).
    calibration : float, default 1.0
        :math:`c > 0` multiplying the model's ratio: the realised over the predicted ratio on a
        pilot batch whose per-token gradients were computed (``benchmarks/allocation.py``
        fits it); 1 trusts the model.  :meth:`observe` refits it online from ratios measured
        during the run.
    shared : bool, default False
        Optimal designs: one token budget for the whole batch
        (:func:`~nat_estimators.rl.select_tokens`).

    Attributes
    ----------
    history : list of dict
        One record per call of :meth:`kappa`: the chosen ``kappa``, the predicted ``ratio`` and
        whether a bound was hit (and, once :meth:`observe` has been called for it, the
        ``realised`` ratio).

    Examples
    --------
    >>> import torch
    >>> from nat_estimators.rl import KappaController
    >>> m = torch.ones(4, 10, dtype=torch.bool)
    >>> ctrl = KappaController(epsilon=1.0, design="poisson", kappa_min=0.1)
    >>> round(ctrl.kappa(m, torch.ones(4, 10, dtype=torch.float64)), 6)  # 1/k - 1 = eps
    0.5
    """

    epsilon: float
    kappa_min: float = 0.05
    kappa_max: float = 1.0
    design: str = "prefix"
    coherence: float = 0.0
    full_keep: float = 0.05
    min_keep: float = 0.0
    calibration: float = 1.0
    shared: bool = False
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        for name in ("epsilon", "kappa_min", "kappa_max", "coherence", "full_keep",
                     "calibration"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if not self.epsilon > 0:
            raise ValueError(f"epsilon must be > 0 (a variance ratio), got {self.epsilon}")
        if not 0 < self.kappa_min <= self.kappa_max <= 1:
            raise ValueError(
                f"kappa bounds must satisfy 0 < kappa_min <= kappa_max <= 1, got "
                f"kappa_min={self.kappa_min}, kappa_max={self.kappa_max}"
            )
        if not self.calibration > 0:
            raise ValueError(f"calibration must be > 0, got {self.calibration}")
        if not 0 <= self.coherence <= 1:
            raise ValueError(f"coherence must lie in [0, 1], got {self.coherence}")
        check_shared(self.shared, self.design)
        self._log_ratios: list[float] = []
        # the design name, and the prefix floor at kappa_min (keep >= full_keep), checked once
        _build_design(torch.ones(1, 20, dtype=torch.bool), self.design, self.kappa_min,
                      sizes=torch.ones(1, 20, dtype=torch.float64) if needs_sizes(self.design)
                      else None, full_keep=self.full_keep, min_keep=self.min_keep,
                      shared=self.shared)

    # ------------------------------------------------------------------ model
    def rollout_variance(self, response_mask: torch.Tensor, second_moment: torch.Tensor) -> float:
        r""":math:`\hat V_{\text{roll}}`, the predicted rollout-sampling variance."""
        m, q = self._moments(response_mask, second_moment)
        rho = self.coherence
        return float(((1 - rho) * m.sum(-1) + rho * q.sum(-1) ** 2).sum())

    def nat_variance(self, response_mask: torch.Tensor, second_moment: torch.Tensor,
                     kappa: float, *, sizes: torch.Tensor | None = None) -> float:
        r""":math:`\hat V_{\text{NAT}}(\kappa)`, the predicted variance NAT adds at ``kappa``."""
        m, q = self._moments(response_mask, second_moment)
        d = self._design(response_mask, kappa, sizes, second_moment)
        pi = d.inclusion_probabilities().to(m.dtype)
        mask = response_mask.bool()
        inv = torch.where(mask, 1 / torch.where(mask, pi, torch.ones_like(pi)) - 1,
                          torch.zeros_like(pi))
        v = (1 - self.coherence) * float((inv * m).sum())
        if self.coherence > 0:
            v += self.coherence * float(design_variance(q, d).sum())
        return v

    def predicted_ratio(self, response_mask: torch.Tensor, second_moment: torch.Tensor,
                        kappa: float, *, sizes: torch.Tensor | None = None) -> float:
        r""":math:`c\, \hat V_{\text{NAT}}(\kappa) / \hat V_{\text{roll}}` (``c`` the
        calibration)."""
        vr = self.rollout_variance(response_mask, second_moment)
        if vr <= 0:
            return 0.0
        v = self.nat_variance(response_mask, second_moment, kappa, sizes=sizes)
        return self.calibration * v / vr

    # ------------------------------------------------------------------ control
    def kappa(self, response_mask: torch.Tensor, second_moment: torch.Tensor, *,
              sizes: torch.Tensor | None = None) -> float:
        r"""This step's :math:`\kappa` (a Python float), recorded in :attr:`history`.

        Parameters
        ----------
        response_mask : torch.Tensor of bool, shape (B, T)
            Eligible tokens.
        second_moment : torch.Tensor, shape (B, T)
            :math:`m_{it} \ge 0`, finite on eligible tokens: proxies of
            :math:`\|\nabla \ell_{it}\|^2` fixed before the draw, e.g.
            :math:`(A_i (1 - p_{it}))^2`.  Detached.
        sizes : torch.Tensor, optional
            Sizes of a ``*_proportional`` / ``*_optimal`` design (default: ``second_moment``).
        """
        rm = response_mask.bool()
        lo, hi = self.kappa_min, self.kappa_max
        eps = self.epsilon

        def ratio(k: float) -> float:
            return self.predicted_ratio(rm, second_moment, k, sizes=sizes)

        r_hi = 0.0 if hi == 1 else ratio(hi)  # keep 1: every token kept, nothing added
        if r_hi >= eps:
            k, r, bound = hi, r_hi, "kappa_max"
        else:
            r_lo = ratio(lo)
            if r_lo <= eps:
                k, r, bound = lo, r_lo, "kappa_min"
            else:
                # Illinois (regula falsi with the stale end's value halved) in x = 1/kappa on
                # f = ratio / eps - 1: the uncorrelated-token ratio is about proportional to
                # 1/kappa - 1, so f is nearly linear in x and a handful of design solves
                # suffice; the root stays bracketed
                xa, xb = 1 / hi, 1 / lo
                fa, fb = r_hi / eps - 1, r_lo / eps - 1  # fa < 0 < fb
                k, r = lo, r_lo
                side = 0
                for _ in range(_BISECT):
                    x = xa - fa * (xb - xa) / (fb - fa)
                    if not xa < x < xb:
                        x = 0.5 * (xa + xb)
                    rc = ratio(1 / x)
                    fc = rc / eps - 1
                    k, r = 1 / x, rc
                    if abs(fc) <= _RATIO_RTOL or 1 / xa - 1 / xb <= _KAPPA_TOL:
                        break
                    if fc < 0:
                        xa, fa = x, fc
                        if side == -1:
                            fb *= 0.5
                        side = -1
                    else:
                        xb, fb = x, fc
                        if side == 1:
                            fa *= 0.5
                        side = 1
                bound = ""
        self.history.append({"kappa": k, "ratio": r, "bound": bound,
                             "calibration": self.calibration})
        return k

    def observe(self, realised_ratio: float, *, step: int = -1) -> float:
        r"""Refit :attr:`calibration` from a ratio measured on an earlier step; returns the new
        :math:`c`.

        ``realised_ratio`` is the NAT-added over the rollout variance measured for the step
        whose :meth:`kappa` record is ``history[step]`` (e.g. from per-token gradients projected
        on random directions, as ``benchmarks/training.py`` does), *after* that step's selection
        was drawn.  With :math:`r_j` the realised and :math:`\hat r_j / c_j` the model's
        uncalibrated ratio of the observed steps,

        .. math:: c = \exp\Bigl(\frac{1}{J} \sum_j \log \frac{r_j\, c_j}{\hat r_j}\Bigr),

        the geometric mean of realised over uncalibrated ratios (a multiplicative model error
        averaged on the log scale, where a noisy ratio's error is about symmetric).  Only later
        calls of :meth:`kappa` use it, so each step's :math:`\kappa` still depends on quantities
        fixed before its own draw.

        Examples
        --------
        >>> import torch
        >>> from nat_estimators.rl import KappaController
        >>> ctrl = KappaController(epsilon=1.0, design="poisson", kappa_min=0.1)
        >>> m = torch.ones(2, 10, dtype=torch.bool)
        >>> k = ctrl.kappa(m, torch.ones(2, 10, dtype=torch.float64))  # predicted ratio 1
        >>> round(ctrl.observe(2.0), 6)  # the model under-predicted by 2x
        2.0
        >>> round(ctrl.kappa(m, torch.ones(2, 10, dtype=torch.float64)), 6)  # 2 (1/k - 1) = 1
        0.666667
        """
        if not self.history:
            raise ValueError("observe() needs a kappa() call first (the step it measures)")
        r = realised_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0:
            raise ValueError(f"realised_ratio must be a finite number > 0, got {r!r}")
        rec = self.history[step]
        if rec["ratio"] <= 0:
            raise ValueError("the observed step had a predicted ratio of 0: nothing to calibrate")
        rec["realised"] = float(r)
        uncalibrated = rec["ratio"] / rec.get("calibration", self.calibration)
        self._log_ratios.append(math.log(r / uncalibrated))
        self.calibration = math.exp(sum(self._log_ratios) / len(self._log_ratios))
        return self.calibration

    def step_config(self, config: Any, batch: Any, second_moment: torch.Tensor | None = None
                    ) -> Any:
        r"""``config`` (a :class:`~nat_estimators.rl.GRPOConfig`) with this step's ``keep``.

        ``second_moment`` defaults to :math:`(A_i\, x_{it})^2` with :math:`x` the batch's
        ``sizes`` (old-policy size measures; 1 where absent) and :math:`A` its advantages.

        Examples
        --------
        >>> import torch
        >>> from nat_estimators.rl import GRPOBatch, GRPOConfig, KappaController
        >>> ids = torch.zeros(2, 6, dtype=torch.long)
        >>> rm = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0]], dtype=torch.bool)
        >>> batch = GRPOBatch(ids, torch.ones(2, 6, dtype=torch.bool), rm,
        ...                   advantages=torch.tensor([1.0, -1.0]))
        >>> ctrl = KappaController(epsilon=0.5, design="poisson")
        >>> round(ctrl.step_config(GRPOConfig(design="poisson"), batch).keep, 6)  # 1/k - 1 = 0.5
        0.666667
        """
        if (config.design, getattr(config, "shared", False)) != (self.design, self.shared):
            raise ValueError(
                f"the controller predicts the variance of design={self.design!r}, "
                f"shared={self.shared}, but the config draws design={config.design!r}, "
                f"shared={getattr(config, 'shared', False)}; build both with the same design"
            )
        if second_moment is None:
            second_moment = default_second_moment(batch)
        sizes = getattr(batch, "sizes", None) if needs_sizes(self.design) else None
        return replace(config, keep=self.kappa(batch.response_mask, second_moment, sizes=sizes))

    # ------------------------------------------------------------------ helpers
    def _moments(self, response_mask: torch.Tensor,
                 second_moment: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(second_moment, torch.Tensor) or not second_moment.is_floating_point():
            raise ValueError("second_moment must be a floating-point tensor")
        check_same_shape(second_moment, response_mask, "second_moment", "response_mask")
        mask = response_mask.bool()
        m = second_moment.detach().to(torch.float64)
        if bool((mask & ~torch.isfinite(m)).any()) or bool((mask & (m < 0)).any()):
            raise ValueError("second_moment must be finite and >= 0 on eligible tokens")
        m = torch.where(mask, m, torch.zeros_like(m))
        return m, m.sqrt()

    def _design(self, response_mask: torch.Tensor, kappa: float, sizes: torch.Tensor | None,
                second_moment: torch.Tensor) -> Any:
        mask = response_mask.bool()
        if needs_sizes(self.design):
            x = (sizes if sizes is not None else second_moment).detach().to(torch.float64)
            pos = x[mask & (x > 0)]
            floor = 1e-6 * float(pos.max()) if pos.numel() else 1.0
            sizes = torch.where(mask, x.clamp_min(floor), torch.zeros_like(x))
        else:
            sizes = None
        return _build_design(mask, self.design, kappa, sizes=sizes, full_keep=self.full_keep,
                             min_keep=self.min_keep, shared=self.shared)


def default_second_moment(batch: Any) -> torch.Tensor:
    r""":math:`(A_i x_{it})^2` on the response mask from a GRPO batch (advantages per row or per
    token, ``sizes`` or 1): the default per-token second-moment proxy of the controller.

    Examples
    --------
    >>> import torch
    >>> from nat_estimators.rl import GRPOBatch, default_second_moment
    >>> rm = torch.tensor([[False, True, True]])
    >>> b = GRPOBatch(torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool), rm,
    ...               advantages=torch.tensor([-2.0]), sizes=torch.tensor([[0.0, 0.5, 1.0]]))
    >>> default_second_moment(b).tolist()
    [[0.0, 1.0, 4.0]]
    """
    return _advantage_moment(batch.response_mask.bool(), batch.advantages,
                             getattr(batch, "sizes", None))


def _advantage_moment(mask: torch.Tensor, advantages: torch.Tensor,
                      sizes: torch.Tensor | None) -> torch.Tensor:
    """:math:`(A_{it} x_{it})^2` on ``mask`` (float64, 0 elsewhere): advantages per row or per
    token, sizes ``x`` or 1."""
    adv = advantages.detach().to(torch.float64)
    a = adv[:, None].expand(mask.shape) if adv.dim() == 1 else adv
    x = torch.ones_like(a) if sizes is None else sizes.detach().to(torch.float64)
    return torch.where(mask, (a * x) ** 2, torch.zeros_like(a))
