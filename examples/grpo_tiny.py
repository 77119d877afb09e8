"""A complete NAT GRPO loop on a toy task with the package's tiny causal transformer.

Task: after a random prompt, emit as many copies of a target token as possible (reward = fraction
of target tokens in the completion).  Each step samples ``group`` completions per prompt, computes
group-normalised advantages, and runs :func:`nat_estimators.rl.grpo_step` with a token selection
(default: prefix cutting at half the tokens, so the backward pass sees about half of them and each
row's forward pass stops at its cut).

Run::

    python examples/grpo_tiny.py --steps 30 --design prefix --keep 0.5

Compare ``--design poisson`` (head only at the selected tokens), ``--keep 1.0`` (full loss), or
``--normalizer hajek`` (biased).
"""

from __future__ import annotations

import argparse
import time

import torch

from nat_estimators.demo.models import TinyCausalLM
from nat_estimators.demo.rollouts import group_advantages, response_logprobs, sample_responses
from nat_estimators.rl import DESIGNS, LOSS_MODES, GRPOBatch, GRPOConfig, grpo_step, needs_sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=4)
    ap.add_argument("--completion-len", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=12)
    ap.add_argument("--design", choices=DESIGNS, default="prefix")
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--loss-mode", choices=LOSS_MODES, default="seq-mean-token-mean")
    ap.add_argument("--normalizer", choices=["ht", "hajek"], default="ht")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    target = 3
    model = TinyCausalLM(vocab_size=args.vocab, d_model=32, n_heads=2, n_layers=2, max_len=64)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    cfg = GRPOConfig(
        loss_mode=args.loss_mode,
        design=args.design,
        keep=args.keep,
        normalizer=args.normalizer,
        max_tokens=args.max_tokens,
        const_len=args.completion_len,
        kl_coef=0.0,
        entropy_coef=0.001,
    )
    gen = torch.Generator().manual_seed(args.seed)
    P, C = args.prompt_len, args.completion_len
    t0 = time.perf_counter()
    for step in range(args.steps):
        prompts = torch.randint(0, args.vocab, (args.prompts, P), generator=gen)
        prompts = prompts.repeat_interleave(args.group, dim=0)
        completions, _, _ = sample_responses(model, prompts, max_new=C, generator=gen)
        ids = torch.cat([prompts, completions], dim=1)
        am = torch.ones(ids.shape, dtype=torch.bool)
        rm = am.clone()
        rm[:, :P] = False
        reward = (completions == target).double().mean(-1)
        adv = group_advantages(reward, args.group)
        with torch.no_grad():
            old = torch.nn.functional.pad(response_logprobs(model, prompts, completions), (P, 0))
        sizes = None
        if needs_sizes(args.design):
            sizes = (adv.abs()[:, None] + 0.1).expand(ids.shape).float()
        batch = GRPOBatch(ids, am, rm, adv.float(), old_log_probs=old, sizes=sizes)
        out = grpo_step(model, opt, batch, cfg, generator=gen, max_grad_norm=1.0)
        m = out.metrics
        if step % 5 == 0 or step == args.steps - 1:
            print(
                f"step {step:3d}  reward {reward.mean():.3f}  loss {float(out.loss):+.4f}  "
                f"selected {m['selected_tokens'] / m['eligible_tokens']:.2f}  "
                f"forward {m['forward_tokens'] / m['full_tokens']:.2f}  "
                f"micro-batches {int(m['micro_batches'])}"
            )
    print(f"{args.steps} steps in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
