"""NAT GRPO with TRL on CPU: a tiny Qwen2-shaped model and a character tokenizer, no downloads.

Run ``python examples/trl_grpo.py`` (needs ``pip install 'nat-estimators[trl]'``; about a
minute on a laptop CPU).  The task: completions are rewarded for the letter ``a``.  The trainer
is TRL's ``GRPOTrainer`` with two names changed; the loss uses half of the completion tokens on
average (prefix cutting), with Horvitz–Thompson weights so the gradient stays unbiased.
"""

from __future__ import annotations

import tempfile
import warnings

from datasets import Dataset

from nat_estimators.demo.hf_tiny import char_tokenizer, tiny_qwen2
from nat_estimators.integrations.trl import NATGRPOConfig, NATGRPOTrainer

# transformers 5 deprecates names that TRL 1.16 still uses internally
warnings.filterwarnings("ignore", message=".*checkpointing.*deprecated", category=FutureWarning)


def reward_a(completions: list[str], **kwargs: object) -> list[float]:
    """Fraction of the letter ``a`` in each completion."""
    return [c.count("a") / max(len(c), 1) for c in completions]


def main(max_steps: int = 8, output_dir: str | None = None) -> dict[str, float]:
    tok = char_tokenizer()
    model = tiny_qwen2(tok, hidden_size=32, seed=0)
    train = Dataset.from_dict({"prompt": ["ab", "ba", "abc", "cab"] * 8})
    args = NATGRPOConfig(
        output_dir=output_dir or tempfile.mkdtemp(prefix="nat-trl-"),
        use_cpu=True,
        max_steps=max_steps,
        learning_rate=5e-3,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,  # two micro-batches per step: rows grouped by kept length
        num_generations=4,
        max_completion_length=12,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        # NAT: keep half the completion tokens on average, by a random prefix cut
        nat_design="prefix",
        nat_keep=0.5,
        nat_full_keep=0.1,
        nat_seed=0,
    )
    trainer = NATGRPOTrainer(model=model, reward_funcs=reward_a, args=args,
                             train_dataset=train, processing_class=tok)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "nat/kept_fraction" in h]
    last = logs[-1]
    print(f"steps {len(logs)}; last step: reward {last['reward']:.3f}, "
          f"kept fraction {last['nat/kept_fraction']:.2f}, largest weight "
          f"{last['nat/max_weight']:.1f}, forward tokens saved "
          f"{last['nat/forward_tokens_saved']:.2f}")
    return last


if __name__ == "__main__":
    main()
