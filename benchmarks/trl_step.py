r"""Benchmark: ``NATGRPOTrainer`` against TRL's ``GRPOTrainer`` on one loss step, side by side.

Every figure is a **ratio of two configurations measured in the same run** on the same model
(a Qwen2-shaped model built in memory, :func:`~nat_estimators.demo.hf_tiny.tiny_qwen2`),
the same scored generation batch and the same micro-batching (``steps_per_generation`` micro-batches
of ``per_device_train_batch_size`` rows, one optimisation step):

* ``forward_tokens@k``: positions fed to the model in the loss step (prompt + completion columns
  of every micro-batch), NAT over TRL.  Prefix cutting crops each micro-batch after its longest
  kept prefix, with rows grouped by kept length first;
* ``head_positions@k``: completion positions whose log-probability is requested from TRL's fused
  LM head (labels not ``-100``), NAT over TRL.  TRL projects only those on devices where it
  compacts the head (Triton / CUDA); on CPU it projects every position, so only this count, not
  the time, shows the per-position saving there;
* ``time@k``: median wall time of one fwd+bwd window (``compute_loss`` + ``backward`` of every
  micro-batch), NAT over TRL, over interleaved rounds whose order alternates (garbage collector
  off, one warm-up round discarded).  The selection is drawn once per round, outside the timing,
  as the trainer draws it once per generation batch.

``keep`` is 0.25, 0.5, 0.75; designs ``prefix`` and ``systematic``.  Completion lengths are
uniform on ``[C/4, C]``.  Run ``python benchmarks/trl_step.py --quick`` (well under a minute on
a 2-core CPU) or without ``--quick`` for a larger model and batch; ``--json FILE`` writes the
figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import warnings
from typing import Any

if __package__ in (None, ""):  # run as a script: import the benchmarks package from the root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.timing import timed

KEEPS = (0.25, 0.5, 0.75)
DESIGNS = ("prefix", "systematic")


def _setup(quick: bool, tmp: str) -> dict[str, Any]:
    warnings.filterwarnings("ignore", category=FutureWarning)
    import torch
    from trl import GRPOConfig, GRPOTrainer

    from nat_estimators.demo.hf_tiny import char_tokenizer, tiny_qwen2
    from nat_estimators.integrations.trl import NATGRPOConfig, NATGRPOTrainer

    size = dict(B=8, P=8, C=64, hidden=32, layers=1, spg=2) if quick else dict(
        B=32, P=16, C=256, hidden=128, layers=4, spg=4)
    tok = char_tokenizer()
    path = f"{tmp}/model"
    tiny_qwen2(tok, hidden_size=size["hidden"], num_layers=size["layers"]).save_pretrained(path)
    common = dict(output_dir=tmp, use_cpu=not torch.cuda.is_available(), report_to="none",
                  per_device_train_batch_size=size["B"] // size["spg"],
                  steps_per_generation=size["spg"], gradient_accumulation_steps=size["spg"],
                  num_generations=4, max_completion_length=size["C"], disable_tqdm=True,
                  save_strategy="no", bf16=False)

    def reward(completions: list[str], **kw: Any) -> list[float]:
        return [0.0] * len(completions)

    from datasets import Dataset

    ds = Dataset.from_dict({"prompt": ["ab"] * 8})
    base = GRPOTrainer(model=path, reward_funcs=reward, args=GRPOConfig(**common),
                       train_dataset=ds, processing_class=tok)
    nats = {}
    for design in DESIGNS:
        for keep in KEEPS:
            cfg = NATGRPOConfig(**common, nat_design=design, nat_keep=keep)
            nats[(design, keep)] = NATGRPOTrainer(model=path, reward_funcs=reward, args=cfg,
                                                  train_dataset=ds, processing_class=tok)
    g = torch.Generator().manual_seed(0)
    B, P, C = size["B"], size["P"], size["C"]
    dev = base.accelerator.device
    V = len(tok)
    lengths = torch.randint(C // 4, C + 1, (B,), generator=g)
    cmask = (torch.arange(C)[None, :] < lengths[:, None]).long()
    batch = {
        "prompt_ids": torch.randint(2, V, (B, P), generator=g),
        "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": torch.randint(2, V, (B, C), generator=g) * cmask,
        "completion_mask": cmask,
        "advantages": torch.randn(B, generator=g),
        "num_items_in_batch": cmask.sum(),
    }
    batch = {k: v.to(dev) for k, v in batch.items()}
    return dict(base=base, nats=nats, batch=batch, size=size)


def _split(batch: dict[str, Any], n: int) -> list[dict[str, Any]]:
    from trl.trainer.utils import split_tensor_dict

    return split_tensor_dict(batch, n)


class _Counter:
    """Wraps the policy: counts forwarded positions and requested head positions."""

    def __init__(self, model: Any) -> None:
        self.model, self.forward, self.head = model, 0, 0

    def __call__(self, *args: Any, labels: Any, input_ids: Any, **kw: Any) -> Any:
        self.forward += int(input_ids.numel())
        self.head += int((labels != -100).sum())
        return self.model(*args, labels=labels, input_ids=input_ids, **kw)


def _window(trainer: Any, mbs: list[dict[str, Any]], counter: _Counter | None = None) -> float:
    import torch

    trainer.model.train()
    trainer.model.zero_grad(set_to_none=True)
    trainer.current_gradient_accumulation_steps = len(mbs)
    model = trainer.model if counter is None else counter

    def run() -> None:
        for mb in mbs:
            trainer.compute_loss(model, mb).backward()

    return timed(run, torch.device("cuda") if torch.cuda.is_available() else None)[1]


def _nat_micro_batches(trainer: Any, batch: dict[str, Any], spg: int) -> list[dict[str, Any]]:
    sel = trainer._nat_draw(batch)
    return trainer._nat_group_rows(_split({**batch, **trainer._nat_fields(sel)}, spg))


def run(quick: bool = True, rounds: int | None = None) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1 if not torch.cuda.is_available() else torch.get_num_threads())
    rounds = rounds or (5 if quick else 9)
    with tempfile.TemporaryDirectory() as tmp:
        s = _setup(quick, tmp)
        base, nats, batch, spg = s["base"], s["nats"], s["batch"], s["size"]["spg"]
        base_mbs = _split(batch, spg)
        for t in [base, *nats.values()]:
            t._metrics["train"].clear()
        # counts (one pass each)
        c = _Counter(base.model)
        _window(base, base_mbs, c)
        full_fwd, full_head = c.forward, c.head
        ratios: dict[str, float] = {}
        records = []
        times: dict[Any, list[float]] = {k: [] for k in [*nats, "base"]}
        gc.disable()
        try:
            for r in range(rounds + 1):
                order = list(nats) if r % 2 == 0 else list(reversed(list(nats)))
                for key in order:
                    mbs = _nat_micro_batches(nats[key], batch, spg)
                    t_base = _window(base, base_mbs)
                    t_nat = _window(nats[key], mbs)
                    if r > 0:
                        times[key].append(t_nat / t_base)
                        times["base"].append(t_base)
        finally:
            gc.enable()
        for (design, keep), trainer in nats.items():
            fwd, head = 0, 0
            for _ in range(3):  # forwarded positions depend on the draw: mean over 3 draws
                c = _Counter(trainer.model)
                _window(trainer, _nat_micro_batches(trainer, batch, spg), c)
                fwd, head = fwd + c.forward / 3, head + c.head / 3
            rec = {
                "design": design, "keep": keep,
                "forward_tokens": fwd / full_fwd, "head_positions": head / full_head,
                "time": statistics.median(times[(design, keep)]),
            }
            records.append(rec)
            for k in ("forward_tokens", "head_positions", "time"):
                ratios[f"{design}_{k}@{keep}"] = rec[k]
        return {
            "ratios": ratios, "records": records, "size": s["size"], "rounds": rounds,
            "trl_median_window_ms": 1e3 * statistics.median(times["base"]),
            "device": str(batch["prompt_ids"].device),
        }


def format_table(result: dict[str, Any]) -> str:
    size = result["size"]
    lines = [
        f"NATGRPOTrainer / GRPOTrainer, one loss window ({size['spg']} micro-batches, "
        f"B={size['B']}, prompt {size['P']}, completions <= {size['C']}, hidden "
        f"{size['hidden']}, {size['layers']} layers, {result['device']}); TRL median "
        f"{result['trl_median_window_ms']:.1f} ms",
        f"{'design':<12}{'keep':>6}{'fwd tokens':>12}{'head pos.':>11}{'fwd+bwd time':>14}",
    ]
    for r in result["records"]:
        lines.append(f"{r['design']:<12}{r['keep']:>6.2f}{r['forward_tokens']:>12.3f}"
                     f"{r['head_positions']:>11.3f}{r['time']:>14.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small model and batch")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the figures to this file")
    a = ap.parse_args(argv)
    result = run(a.quick, a.rounds)
    print(format_table(result))
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
