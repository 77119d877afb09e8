r"""Small policies and a toy task with a verifiable reward, for the validation suite.

Task
----
The digit-sum task of :class:`nat_estimators.demo.tasks.DigitSum` (short answers ending at
``EOS``, verifiable reward); rollouts are sampled by
:func:`nat_estimators.demo.rollouts.sample_responses` and advantages are
:func:`nat_estimators.demo.rollouts.group_advantages`.

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
from nat_estimators.demo.rollouts import group_advantages, response_logprobs, sample_responses
from nat_estimators.demo.tasks import DigitSum

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

TASK = DigitSum()
EOS = TASK.eos
SEP = TASK.sep
VOCAB = TASK.vocab
PROMPT_LEN = TASK.prompt_len
MAX_TARGET = TASK.max_target
MAX_NEW = TASK.max_new  # response length limit during training
make_prompts = TASK.prompts
reward = TASK.reward

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
    tg = targets.repeat_interleave(group)
    prompts = make_prompts(tg)
    responses, lengths, finished = sample_responses(
        model, prompts, max_new=max_new, generator=generator, temperature=temperature, eos=EOS,
        kv_cache=False,
    )
    mask = torch.arange(responses.shape[-1], device=tg.device)[None, :] < lengths[:, None]
    r = reward(tg, responses, lengths, finished)
    adv = group_advantages(r, group)
    old = response_logprobs(model, prompts, responses).float()
    old = torch.where(mask, old, torch.zeros_like(old))
    return Rollouts(tg, prompts, responses, mask, lengths, finished, r, adv, old, group)
