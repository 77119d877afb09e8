r"""Small policies and a toy task with a verifiable reward, for the validation suite.

Task ("digit sum")
------------------
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

Answers have variable length (a policy may reach 30 with ``9 9 9 3`` or ``5 5 5 5 5 5``) and end
at ``EOS``, which is a response token (eligible for the loss) like every digit.

Policies
--------
Two architectures share the "backbone + head" layout the RL plumbing's selected-position LM head
expects: ``backbone(input_ids) -> hidden (B, T, H)`` and ``head: nn.Linear(H, V)``;
``forward(input_ids) = head(backbone(input_ids))``.

* :class:`TransformerPolicy` — a small pre-LN causal transformer (learned positions) built from
  :class:`nat_estimators.demo.models.TransformerBlock`, the block of the demo models.
* :class:`GRUPolicy` — embedding, a GRU, the head.

Both are causal: the hidden state at position :math:`t` depends on tokens :math:`\le t` only, so
cropping a row after its last kept token does not change any kept token's log-probability.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nat_estimators.demo.models import TransformerBlock, causal_key_mask

__all__ = [
    "EOS",
    "MAX_TARGET",
    "POLICY_DIR",
    "PROMPT_LEN",
    "SEP",
    "VOCAB",
    "GRUPolicy",
    "Rollouts",
    "TransformerPolicy",
    "build_policy",
    "group_advantages",
    "load_manifest",
    "load_policy",
    "make_prompts",
    "response_logprobs",
    "reward",
    "rollout",
]

EOS = 10
SEP = 11
VOCAB = 12
PROMPT_LEN = 3
MAX_TARGET = 60
MAX_NEW = 24  # response length limit during training

POLICY_DIR = Path(__file__).resolve().parent / "policies"


# ----------------------------------------------------------------------------- models
class TransformerPolicy(nn.Module):
    """Small pre-LN causal transformer: ``backbone`` (embeddings + blocks + final LN) and
    ``head`` (linear to the vocabulary)."""

    def __init__(
        self, vocab: int = VOCAB, d_model: int = 64, layers: int = 2, heads: int = 4,
        ff: int = 128, max_len: int = 64,
    ) -> None:
        super().__init__()
        self.config = dict(vocab=vocab, d_model=d_model, layers=layers, heads=heads, ff=ff,
                           max_len=max_len)
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList([TransformerBlock(d_model, heads, ff) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def backbone(self, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden states ``(B, T, d_model)``; positions count real tokens
        (``cumsum(attention_mask) - 1``) and padded keys are masked, so a cropped, re-packed row
        gives the same outputs at its real tokens."""
        B, T = input_ids.shape
        dev = input_ids.device
        if attention_mask is None:
            am = torch.ones(B, T, dtype=torch.bool, device=dev)
        else:
            am = attention_mask.bool()
        pos = (am.long().cumsum(-1) - 1).clamp(min=0)
        x = self.tok(input_ids) + self.pos(pos)
        allowed = causal_key_mask(am)
        for b in self.blocks:
            x = b(x, allowed)
        return self.ln_f(x)

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.backbone(input_ids, attention_mask))


class GRUPolicy(nn.Module):
    """Recurrent policy: ``backbone`` (embedding + GRU) and ``head`` (linear)."""

    def __init__(self, vocab: int = VOCAB, d_embed: int = 32, hidden: int = 96,
                 layers: int = 1) -> None:
        super().__init__()
        self.config = dict(vocab=vocab, d_embed=d_embed, hidden=hidden, layers=layers)
        self.tok = nn.Embedding(vocab, d_embed)
        self.rnn = nn.GRU(d_embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def backbone(self, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states ``(B, T, hidden)``.  Rows must be right padded (real tokens first), as
        rollouts and the RL plumbing's packed micro-batches are: the recurrence is causal, so
        padding after a token never changes its output."""
        if attention_mask is not None:
            am = attention_mask.bool()
            if bool((am[:, 1:] & ~am[:, :-1]).any()):
                raise ValueError("GRUPolicy needs right-padded rows (real tokens first)")
        return self.rnn(self.tok(input_ids))[0]

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.backbone(input_ids, attention_mask))


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "transformer": TransformerPolicy,
    "gru": GRUPolicy,
}


def build_policy(arch: str, config: dict[str, Any] | None = None) -> nn.Module:
    """A fresh policy of architecture ``arch`` (``"transformer"`` or ``"gru"``)."""
    return ARCHITECTURES[arch](**(config or {}))


def load_manifest(directory: Path | str = POLICY_DIR) -> dict[str, Any]:
    """The training manifest (``manifest.json``) of the committed policies."""
    return json.loads((Path(directory) / "manifest.json").read_text())


def load_policy(
    name: str, *, dtype: torch.dtype = torch.float64, device: Any = "cpu",
    directory: Path | str = POLICY_DIR,
) -> nn.Module:
    """Load a committed policy (``"transformer"`` or ``"gru"``) with ``weights_only=True``."""
    manifest = load_manifest(directory)
    entry = manifest["policies"][name]
    model = build_policy(entry["architecture"], entry["config"])
    state = torch.load(Path(directory) / entry["weights"], map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device=device, dtype=dtype).eval()


# ----------------------------------------------------------------------------- task
def make_prompts(targets: torch.Tensor) -> torch.Tensor:
    """Prompt tokens ``[t // 10, t % 10, SEP]`` for targets ``t`` (shape (B,)), int64 (B, 3)."""
    t = targets.to(torch.int64)
    return torch.stack([t // 10, t % 10, torch.full_like(t, SEP)], dim=-1)


def reward(targets: torch.Tensor, responses: torch.Tensor, lengths: torch.Tensor,
           finished: torch.Tensor) -> torch.Tensor:
    """Verifiable reward of each answer (see the module docstring), float32 (B,)."""
    T = responses.shape[-1]
    pos = torch.arange(T, device=responses.device)
    digit = (pos[None, :] < lengths[:, None] - finished[:, None].long()) & (responses < 10)
    s = torch.where(digit, responses, torch.zeros_like(responses)).sum(-1).float()
    t = targets.float()
    exact = finished & (s == t)
    partial = (1 - (s - t).abs() / t.clamp(min=5)).clamp(min=0) / 2
    return torch.where(exact, torch.ones_like(s), torch.where(finished, partial,
                                                               torch.zeros_like(s)))


def group_advantages(rewards: torch.Tensor, group: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages: rewards normalised within consecutive groups of ``group`` rows."""
    r = rewards.view(-1, group)
    a = (r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True) + eps)
    return a.reshape(-1)


@dataclass(frozen=True)
class Rollouts:
    """A batch of sampled answers (right padded).

    Attributes
    ----------
    targets : (B,) int64
    prompts : (B, P) int64
    responses : (B, T) int64, padded with EOS after the answer
    response_mask : (B, T) bool — response tokens (digits and the final EOS)
    lengths : (B,) int64 — response lengths (EOS included when emitted)
    finished : (B,) bool — EOS emitted within the limit
    rewards, advantages : (B,) float32 — reward and group-normalised advantage
    old_logprobs : (B, T) float32 — sampling policy's log-probabilities (0 off the mask)
    group : int
    """

    targets: torch.Tensor
    prompts: torch.Tensor
    responses: torch.Tensor
    response_mask: torch.Tensor
    lengths: torch.Tensor
    finished: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    old_logprobs: torch.Tensor
    group: int

    @property
    def input_ids(self) -> torch.Tensor:
        """Prompt and response, (B, P + T)."""
        return torch.cat([self.prompts, self.responses], dim=-1)

    def to(self, device: Any) -> Rollouts:
        return Rollouts(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                           for k, v in self.__dict__.items()})

    def rows(self, index: Any) -> Rollouts:
        """A sub-batch (``group`` kept as is; advantages are not renormalised)."""
        idx = torch.as_tensor(index, dtype=torch.int64)
        width = int(self.lengths[idx].max())
        out = {}
        for k, v in self.__dict__.items():
            if isinstance(v, torch.Tensor):
                v = v[idx]
                if v.ndim == 2 and k != "prompts":
                    v = v[:, :width]
            out[k] = v
        return Rollouts(**out)


def response_logprobs(model: nn.Module, prompts: torch.Tensor,
                      responses: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the response tokens under ``model`` (full forward), (B, T)."""
    ids = torch.cat([prompts, responses], dim=-1)
    logits = model(ids)[:, prompts.shape[-1] - 1 : -1]
    return torch.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16)
                             else logits, -1).gather(-1, responses[..., None])[..., 0]


@torch.no_grad()
def rollout(
    model: nn.Module,
    targets: torch.Tensor,
    *,
    group: int,
    max_new: int = MAX_NEW,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> Rollouts:
    """Sample ``group`` answers per target (rows ``[g*group:(g+1)*group]`` share a target)."""
    dev = targets.device
    tg = targets.repeat_interleave(group)
    prompts = make_prompts(tg)
    B = tg.shape[0]
    ids = prompts
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    lengths = torch.zeros(B, dtype=torch.int64, device=dev)
    for _ in range(max_new):
        logits = model(ids)[:, -1].float() / temperature
        probs = torch.softmax(logits, -1)
        nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
        nxt = torch.where(done, torch.full_like(nxt, EOS), nxt)
        lengths = lengths + (~done).long()
        done = done | (nxt == EOS)
        ids = torch.cat([ids, nxt[:, None]], dim=-1)
        if bool(done.all()):
            break
    responses = ids[:, PROMPT_LEN:]
    T = responses.shape[-1]
    mask = torch.arange(T, device=dev)[None, :] < lengths[:, None]
    finished = done
    r = reward(tg, responses, lengths, finished)
    adv = group_advantages(r, group)
    old = response_logprobs(model, prompts, responses).float()
    old = torch.where(mask, old, torch.zeros_like(old))
    return Rollouts(tg, prompts, responses, mask, lengths, finished, r, adv, old, group)
