r"""Train the validation policies with full-token GRPO on the digit-sum task.

Usage::

    python -m nat_estimators.validation.train_policies   # writes the policies/ folder beside it
    python -m nat_estimators.validation.train_policies --out DIR --steps 120

Each step samples ``prompts x group`` answers, computes group-normalised advantages
:math:`A_i = (r_i - \bar r_g)/(s_g + 10^{-6})` and takes ``epochs`` Adam steps on the per-token
clipped GRPO loss

.. math::

    \ell_{it} = -\min\bigl(\rho_{it} A_i,\
                \mathrm{clip}(\rho_{it}, 1-\epsilon, 1+\epsilon) A_i\bigr),
    \qquad \rho_{it} = \exp(\log\pi_\theta - \log\pi_{\text{old}}),

aggregated over **every** response token (``seq-mean-token-mean``, TRL's ``grpo``).  Training is
deterministic given the seed on a given device; weights are saved in float32 with
``torch.save(state_dict)`` and the manifest records architecture, config, seed, steps, device,
reward before/after and the torch version.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from nat_estimators.validation.policies import (
    MAX_TARGET,
    POLICY_DIR,
    build_policy,
    rollout,
)

DEFAULTS: dict[str, dict[str, Any]] = {
    "transformer": dict(
        architecture="transformer",
        config=dict(d_model=64, layers=2, heads=4, ff=128, max_len=64),
        seed=1,
        lr=3e-3,
        entropy_coef=0.05,
    ),
    "gru": dict(
        architecture="gru",
        config=dict(d_embed=32, hidden=96, layers=1),
        seed=2,
        lr=5e-3,
        entropy_coef=0.05,
    ),
}


def grpo_loss(model: torch.nn.Module, batch: Any, clip: float = 0.2,
              entropy_coef: float = 0.0) -> torch.Tensor:
    """Full-token GRPO loss (minus an entropy bonus), ``seq-mean-token-mean`` over the response
    mask."""
    ids = torch.cat([batch.prompts, batch.responses], dim=-1)
    logits = model(ids)[:, batch.prompts.shape[-1] - 1 : -1]
    logsm = torch.log_softmax(logits, -1)
    logp = logsm.gather(-1, batch.responses[..., None])[..., 0]
    ratio = torch.exp(logp - batch.old_logprobs)
    a = batch.advantages[:, None]
    per_tok = -torch.minimum(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)
    if entropy_coef:
        per_tok = per_tok + entropy_coef * (logsm.exp() * logsm).sum(-1)
    m = batch.response_mask.to(per_tok.dtype)
    return ((per_tok * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()


@torch.no_grad()
def evaluate(model: torch.nn.Module, device: torch.device, seed: int = 1234) -> float:
    """Mean reward of 8 sampled answers for each target 1..MAX_TARGET (fixed seed)."""
    g = torch.Generator(device=device).manual_seed(seed)
    targets = torch.arange(1, MAX_TARGET + 1, device=device)
    return float(rollout(model, targets, group=8, generator=g).rewards.mean())


def train_one(name: str, spec: dict[str, Any], *, steps: int, prompts: int, group: int,
              epochs: int, device: torch.device, log_every: int = 20) -> tuple[Any, dict]:
    torch.manual_seed(spec["seed"])
    model = build_policy(spec["architecture"], spec["config"]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=spec["lr"])
    gen = torch.Generator(device=device).manual_seed(spec["seed"] + 100)
    before = evaluate(model, device)
    t0 = time.perf_counter()
    history = []
    for step in range(1, steps + 1):
        model.eval()
        targets = torch.randint(1, MAX_TARGET + 1, (prompts,), generator=gen, device=device)
        batch = rollout(model, targets, group=group, generator=gen)
        model.train()
        for _ in range(epochs):
            loss = grpo_loss(model, batch, entropy_coef=spec.get("entropy_coef", 0.0))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        history.append(float(batch.rewards.mean()))
        if step % log_every == 0 or step == steps:
            mean_len = float(batch.lengths.float().mean())
            recent = history[-log_every:]
            print(f"[{name}] step {step:4d}  reward {sum(recent) / len(recent):.3f}  "
                  f"mean length {mean_len:.1f}  {time.perf_counter() - t0:.1f}s", flush=True)
    model.eval()
    after = evaluate(model, device)
    info = dict(
        architecture=spec["architecture"],
        config=dict(model.config),
        seed=spec["seed"],
        lr=spec["lr"],
        entropy_coef=spec.get("entropy_coef", 0.0),
        steps=steps,
        prompts_per_step=prompts,
        group=group,
        epochs_per_step=epochs,
        reward_before=round(before, 4),
        reward_after=round(after, 4),
        train_seconds=round(time.perf_counter() - t0, 1),
        parameters=sum(p.numel() for p in model.parameters()),
    )
    return model, info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(POLICY_DIR), help="output folder (default %(default)s)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--only", choices=sorted(DEFAULTS), help="train one policy")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: these models are too small to gain from "
                        "more, and extra threads thrash on a shared machine)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    manifest: dict[str, Any] = (json.loads(manifest_path.read_text()) if manifest_path.exists()
                                else {"policies": {}})
    manifest.update(
        task="digit-sum: prompt [t//10, t%10, SEP] with t in 1..60; answer digits then EOS; "
             "reward 1 if the digits sum to t, else max(0, 1-|s-t|/max(t,5))/2, 0 without EOS",
        algorithm="full-token GRPO: group-normalised advantages, per-token clipped ratio loss "
                  "(eps=0.2) minus entropy_coef * per-token entropy (keeps the policies "
                  "stochastic, so validation rollouts have within-group reward spread and varied "
                  "lengths), "
                  "seq-mean-token-mean, Adam, grad-norm clip 1.0",
        torch_version=torch.__version__,
        device=str(device),
    )
    names = [args.only] if args.only else list(DEFAULTS)
    for name in names:
        model, info = train_one(name, DEFAULTS[name], steps=args.steps, prompts=args.prompts,
                                group=args.group, epochs=args.epochs, device=device)
        fname = f"{name}.pt"
        state = {k: v.detach().to("cpu", torch.float32).contiguous()
                 for k, v in model.state_dict().items()}
        torch.save(state, out / fname)
        info.update(weights=fname, device=str(device), torch_version=torch.__version__,
                    threads=torch.get_num_threads(),
                    weights_bytes=(out / fname).stat().st_size)
        manifest["policies"][name] = info
        print(f"[{name}] reward {info['reward_before']:.3f} -> {info['reward_after']:.3f}; "
              f"wrote {out / fname} ({info['weights_bytes'] // 1024} KB)")
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(f"wrote {manifest_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
