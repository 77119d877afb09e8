r"""Toy tasks with generated data and verifiable rewards, shared by the validation suite, the
benchmarks, the examples and the notebooks.

Digit sum (:class:`DigitSum`, short answers)
--------------------------------------------
The prompt is a target :math:`t \in \{1, \dots, 60\}` written as two digit tokens followed by a
separator, ``[t // 10, t % 10, SEP]``.  The answer is a string of digit tokens followed by
``EOS``; its reward is verifiable:

.. math::

    r = \begin{cases}
        1 & \text{EOS emitted and } \sum \text{digits} = t, \\
        \max\bigl(0,\ 1 - |\sum \text{digits} - t| / \max(t, 5)\bigr) / 2
          & \text{EOS emitted, wrong sum}, \\
        0 & \text{no EOS within the length limit.}
    \end{cases}

Answers have variable length (2–17 tokens; a policy may reach 30 with ``9 9 9 3`` or
``5 5 5 5 5 5``) and end at ``EOS``, which is a response token (eligible for the loss).

Modular walk (:class:`ModularWalk`, long answers)
-------------------------------------------------
The prompt ``[STRIDE_c, s_0, SEP]`` names a stride :math:`c \in \{1, \dots, M-1\}` and a start
state :math:`s_0 \in \mathbb{Z}_M`; the environment ends the episode after :math:`L` response
tokens, :math:`L` drawn per prompt uniformly on ``[min_len, max_len]`` (64–256 by default).  The
answer is a walk :math:`a_1, \dots, a_L` of state tokens and the reward is the fraction of steps
that follow the rule,

.. math::

    r = \frac{1}{L} \sum_{t=1}^{L} \mathbf 1\bigl[a_t \equiv a_{t-1} + c \pmod M\bigr],
    \qquad a_0 = s_0 ,

so it depends on every token of the response, early and late alike.  Why this task for token
subsampling: responses are long and ragged (prefix cutting has a tail to cut), every token carries
part of the reward (dropping the late tokens from the loss drops real signal), and the rule is
local (each step needs the previous token and the stride), so a two-layer causal transformer
learns it on a CPU.  :meth:`ModularWalk.demonstrations` writes noisy expert walks whose error rate
grows linearly along the response (``noise_start`` at the first step to ``noise_end`` at
``max_len``): a supervised warm start on them gives a policy with a middling reward whose errors
sit mostly in the second half of long answers, which GRPO must then fix — exactly the tokens that
a deterministic first-half truncation never trains.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["DigitSum", "ModularWalk"]


@dataclass(frozen=True)
class DigitSum:
    """The digit-sum task (module notes): token ids, prompts and the verifiable reward.

    Examples
    --------
    >>> import torch
    >>> from nat_estimators.demo.tasks import DigitSum
    >>> task = DigitSum()
    >>> task.prompts(torch.tensor([7, 23])).tolist()
    [[0, 7, 11], [2, 3, 11]]
    >>> resp = torch.tensor([[3, 4, 10], [9, 9, 10]])
    >>> task.reward(torch.tensor([7, 23]), resp, torch.tensor([3, 3]),
    ...             torch.tensor([True, True])).tolist()
    [1.0, 0.3913043439388275]
    """

    eos: int = 10
    sep: int = 11
    vocab: int = 12
    prompt_len: int = 3
    max_target: int = 60
    max_new: int = 24

    def prompts(self, targets: torch.Tensor, /) -> torch.Tensor:
        """Prompt tokens ``[t // 10, t % 10, SEP]`` for targets ``t`` (shape (B,)), int64 (B, 3)."""
        t = targets.to(torch.int64)
        return torch.stack([t // 10, t % 10, torch.full_like(t, self.sep)], dim=-1)

    def reward(
        self,
        targets: torch.Tensor,
        responses: torch.Tensor,
        lengths: torch.Tensor,
        finished: torch.Tensor,
        /,
    ) -> torch.Tensor:
        """Verifiable reward of each answer (module notes), float32 (B,).

        ``lengths`` counts the response tokens including the final ``EOS`` when ``finished``.
        """
        T = responses.shape[-1]
        pos = torch.arange(T, device=responses.device)
        digit = (pos[None, :] < lengths[:, None] - finished[:, None].long()) & (responses < 10)
        s = torch.where(digit, responses, torch.zeros_like(responses)).sum(-1).float()
        t = targets.float()
        exact = finished & (s == t)
        partial = (1 - (s - t).abs() / t.clamp(min=5)).clamp(min=0) / 2
        return torch.where(exact, torch.ones_like(s),
                           torch.where(finished, partial, torch.zeros_like(s)))


@dataclass(frozen=True)
class ModularWalk:
    r"""The modular-walk task (module notes): prompts, lengths, reward and noisy demonstrations.

    Parameters
    ----------
    modulus : int, default 10
        :math:`M`; state tokens are ``0 .. M-1``, stride tokens ``M .. 2M-2`` (stride
        :math:`c` is token ``M + c - 1``), the separator is ``2M - 1``.
    min_len, max_len : int, default 64, 256
        Range of the episode length :math:`L` (uniform, inclusive).
    noise_start, noise_end : float, default 0.05, 0.65
        Error rate of the demonstrations at the first step and at step ``max_len`` (linear in
        between); an error is a uniformly drawn wrong state.

    Examples
    --------
    >>> import torch
    >>> from nat_estimators.demo.tasks import ModularWalk
    >>> task = ModularWalk(modulus=5, min_len=4, max_len=6)
    >>> g = torch.Generator().manual_seed(0)
    >>> prompts, lengths = task.sample_prompts(2, generator=g)
    >>> prompts.shape, task.vocab, task.prompt_len
    (torch.Size([2, 3]), 10, 3)
    >>> clean = task.demonstrations(prompts, lengths, noise=False)
    >>> task.reward(prompts, clean, lengths).tolist()
    [1.0, 1.0]
    """

    modulus: int = 10
    min_len: int = 64
    max_len: int = 256
    noise_start: float = 0.05
    noise_end: float = 0.65

    def __post_init__(self) -> None:
        if self.modulus < 2:
            raise ValueError(f"modulus must be >= 2, got {self.modulus}")
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(
                f"need 1 <= min_len <= max_len, got min_len={self.min_len}, "
                f"max_len={self.max_len}"
            )
        for name in ("noise_start", "noise_end"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")

    @property
    def sep(self) -> int:
        """The separator token (last prompt token)."""
        return 2 * self.modulus - 1

    @property
    def vocab(self) -> int:
        """Vocabulary size: ``M`` states, ``M - 1`` strides, the separator."""
        return 2 * self.modulus

    @property
    def prompt_len(self) -> int:
        """Prompt length (3 tokens)."""
        return 3

    def sample_prompts(
        self,
        n: int,
        /,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` prompts ``[STRIDE_c, s_0, SEP]`` (int64 (n, 3)) and their lengths (int64 (n,)).

        Drawn on the CPU from ``generator`` (so a seed gives the same prompts on every device),
        then moved to ``device``.
        """
        M = self.modulus
        c = torch.randint(1, M, (n,), generator=generator)
        s0 = torch.randint(0, M, (n,), generator=generator)
        lengths = torch.randint(self.min_len, self.max_len + 1, (n,), generator=generator)
        prompts = torch.stack([M + c - 1, s0, torch.full_like(c, self.sep)], dim=-1)
        return prompts.to(device), lengths.to(device)

    def _stride_start(self, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return prompts[:, 0] - self.modulus + 1, prompts[:, 1]

    def response_mask(self, lengths: torch.Tensor, width: int, /) -> torch.Tensor:
        """``(B, width)`` bool: the first ``lengths[i]`` response positions of each row."""
        return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]

    def step_correct(self, prompts: torch.Tensor, responses: torch.Tensor, /) -> torch.Tensor:
        r"""``(B, T)`` bool: does step :math:`t` follow the rule :math:`a_t \equiv a_{t-1} + c`."""
        c, s0 = self._stride_start(prompts)
        prev = torch.cat([s0[:, None], responses[:, :-1]], dim=-1)
        return responses == (prev + c[:, None]) % self.modulus

    def reward(
        self, prompts: torch.Tensor, responses: torch.Tensor, lengths: torch.Tensor, /
    ) -> torch.Tensor:
        """Fraction of the first ``lengths[i]`` steps that follow the rule, float32 (B,)."""
        ok = self.step_correct(prompts, responses) & self.response_mask(lengths,
                                                                        responses.shape[-1])
        return ok.sum(-1).float() / lengths.float()

    def noise_rate(
        self, width: int, /, *, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Error rate of the demonstrations at steps ``1 .. width``, float64 (width,)."""
        t = torch.arange(width, dtype=torch.float64, device=device)
        frac = t / max(self.max_len - 1, 1)
        return self.noise_start + (self.noise_end - self.noise_start) * frac

    def demonstrations(
        self,
        prompts: torch.Tensor,
        lengths: torch.Tensor,
        /,
        *,
        generator: torch.Generator | None = None,
        noise: bool = True,
    ) -> torch.Tensor:
        """Expert walks (right padded with state 0 after ``lengths``), int64 (B, max length).

        Step :math:`t` follows the rule from the *emitted* previous state; with probability
        :meth:`noise_rate` it is replaced by a uniformly drawn wrong state (``noise=True``).  The
        uniforms are drawn on the CPU from ``generator``.  (A loop over steps: data generation,
        not a hot path.)
        """
        M = self.modulus
        B, width = prompts.shape[0], int(lengths.max())
        c, s0 = (v.cpu() for v in self._stride_start(prompts))
        err = torch.rand(B, width, generator=generator, dtype=torch.float64)
        wrong = torch.randint(1, M, (B, width), generator=generator)
        rate = self.noise_rate(width)
        out = torch.empty(B, width, dtype=torch.int64)
        prev = s0
        for t in range(width):
            nxt = (prev + c) % M
            if noise:
                nxt = torch.where(err[:, t] < rate[t], (nxt + wrong[:, t]) % M, nxt)
            out[:, t] = nxt
            prev = nxt
        out = torch.where(self.response_mask(lengths.cpu(), width), out, torch.zeros_like(out))
        return out.to(prompts.device)
