"""One PPO actor update through verl's own code, on the CPU, for 1 or 2 gloo ranks.

Run as ``python actor_harness.py RANK WORLD PORT OUT.pt``.  Every rank:

* builds verl's ``TrainingWorker`` (FSDP2 engine, remove-padding packing, dynamic batch sizes)
  on a tiny Qwen2 saved from memory (:mod:`nat_estimators.demo.hf_tiny`), on the CPU platform of
  :mod:`cpu_platform`;
* builds a trainer object of class ``NATTrainerMixin + RayPPOTrainer`` with verl's default
  ``ppo_trainer`` config and calls verl's own ``_compute_old_log_prob`` and ``_update_actor`` (and
  the mixin's ``nat_setup`` / ``_update_actor``).  The worker group is this process's worker:
  ``update_actor`` / ``compute_log_prob`` / ``set_loss_fn`` do what verl's
  ``ActorRolloutRefWorker`` does with them (call ``train_mini_batch`` / ``infer_batch`` /
  ``set_loss_fn`` of its actor), on this rank's contiguous shard of the batch, as verl's
  dispatch does.

Runs: verl unchanged; NAT at keep 1; NAT prefix at keep 0.5.  Saves the parameters after each
update, the tokens each update forwarded, and the log-probs of a cropped and a full forward.
Ray's own actor scheduling and the rollout engines (vLLM / SGLang) are not exercised: they need
GPUs.
"""

from __future__ import annotations

import os
import sys

RANK, WORLD, PORT, OUT = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
os.environ.update(RANK=str(RANK), WORLD_SIZE=str(WORLD), LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=PORT, OMP_NUM_THREADS="1", VERL_ENGINE_DEVICE="cuda",
                  VERL_ENGINE_VENDOR="nvidia", TOKENIZERS_PARALLELISM="false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cpu_platform  # noqa: E402

cpu_platform.install()

import torch  # noqa: E402

torch.set_num_threads(1)

from functools import partial  # noqa: E402

from hydra import compose, initialize_config_dir  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.trainer.config import CheckpointConfig  # noqa: E402
from verl.trainer.ppo.ray_trainer import RayPPOTrainer  # noqa: E402
from verl.utils import tensordict_utils as tu  # noqa: E402
from verl.utils.config import omega_conf_to_dataclass  # noqa: E402
from verl.utils.model import compute_position_id_with_mask  # noqa: E402
from verl.workers.config import (  # noqa: E402
    FSDPEngineConfig,
    FSDPOptimizerConfig,
    HFModelConfig,
    TrainingWorkerConfig,
)
from verl.workers.engine_workers import TrainingWorker  # noqa: E402
from verl.workers.utils.losses import ppo_loss  # noqa: E402

from nat_estimators.demo.hf_tiny import char_tokenizer, tiny_qwen2  # noqa: E402
from nat_estimators.integrations.verl import NATSelector, NATTrainerMixin  # noqa: E402

B, P, R = 8, 4, 12


class NATRayPPOTrainer(NATTrainerMixin, RayPPOTrainer):
    pass


class LocalActorGroup:
    """This rank's actor, answering like verl's ``ActorRolloutRefWorker`` does."""

    def __init__(self, worker: TrainingWorker) -> None:
        self.worker = worker

    def _shard(self, td):
        return td if WORLD == 1 else tu.chunk_tensordict(td, WORLD)[RANK]

    def set_loss_fn(self, fn):
        self.worker.set_loss_fn(fn)

    def update_actor(self, td):
        return self.worker.train_mini_batch(data=self._shard(td)).cpu()

    def compute_log_prob(self, td):
        out = self.worker.infer_batch(self._shard(td))
        if WORLD > 1:  # gather the shards back, as verl's collect does
            import torch.distributed as dist
            parts = [None] * WORLD
            dist.all_gather_object(parts, {k: out[k] for k in ("log_probs", "entropy")})
            out = tu.get_tensordict(
                {k: tu.concat_nested_tensors([p[k] for p in parts])
                 for k in ("log_probs", "entropy")},
                non_tensor_dict={"metrics": tu.get(out, "metrics")})
        return out


def config(**over):
    d = os.path.join(os.path.dirname(__import__("verl").__file__), "trainer", "config")
    ov = [
        "actor_rollout_ref.actor.ppo_mini_batch_size=4", "actor_rollout_ref.rollout.n=1",
        "actor_rollout_ref.actor.use_kl_loss=True", "actor_rollout_ref.actor.kl_loss_coef=0.1",
        "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
        "actor_rollout_ref.actor.entropy_coeff=0.01", "actor_rollout_ref.actor.shuffle=False",
        "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
        "actor_rollout_ref.actor.use_dynamic_bsz=True", "trainer.use_v1=false",
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=40",
    ] + [f"{k}={v}" for k, v in over.items()]
    with initialize_config_dir(config_dir=d, version_base=None):
        return compose(config_name="ppo_trainer", overrides=ov)


def worker(model_dir):
    mc = HFModelConfig(path=model_dir, use_remove_padding=True,
                       enable_gradient_checkpointing=False,
                       override_config={"attn_implementation": "sdpa"})
    ec = FSDPEngineConfig(strategy="fsdp2", model_dtype="fp32", use_torch_compile=False,
                          use_dynamic_bsz=True, max_token_len_per_gpu=40,
                          infer_max_token_len_per_gpu=40, micro_batch_size_per_gpu=2,
                          infer_micro_batch_size_per_gpu=2, seed=0)
    oc = FSDPOptimizerConfig(lr=5e-2, weight_decay=0.0, clip_grad=1e9)
    w = TrainingWorker(TrainingWorkerConfig(
        model_type="language_model", model_config=mc, engine_config=ec, optimizer_config=oc,
        checkpoint_config=CheckpointConfig()))
    w.reset()
    counts = []

    def count(_mod, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and torch.is_grad_enabled():
            counts.append(int(ids.numel()))

    w.engine.module.register_forward_pre_hook(count, with_kwargs=True)
    return w, counts


def batch(tok):
    g = torch.Generator().manual_seed(11)
    plen = torch.randint(2, P + 1, (B,), generator=g)
    rlen = torch.tensor([12, 9, 12, 5, 11, 7, 12, 8])
    t_p, t_r = torch.arange(P), torch.arange(R)
    pm = (t_p[None, :] >= (P - plen)[:, None]).long()          # left-padded prompts
    rm = (t_r[None, :] < rlen[:, None]).long()                  # right-padded responses
    prompts = torch.randint(2, len(tok), (B, P), generator=g) * pm
    responses = torch.randint(2, len(tok), (B, R), generator=g) * rm
    am = torch.cat([pm, rm], 1)
    adv = torch.randn(B, 1, generator=g).expand(B, R) * rm
    return DataProto.from_single_dict({
        "prompts": prompts, "responses": responses, "input_ids": torch.cat([prompts, responses], 1),
        "attention_mask": am, "position_ids": compute_position_id_with_mask(am),
        "response_mask": rm, "advantages": adv.contiguous(), "returns": adv.contiguous()},
        # set by the rollout and by fit() in a real run
        meta_info={"temperature": 1.0, "global_token_num": am.sum(-1).tolist()})


def params(w):
    sd = w.engine.module.state_dict()
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
            for k, v in sd.items()}


def run(model_dir, tok, nat=None):
    cfg = config()
    if nat is not None:
        from omegaconf import OmegaConf, open_dict
        with open_dict(cfg):
            cfg.nat = OmegaConf.create(nat)
    trainer = object.__new__(NATRayPPOTrainer)
    trainer.config = cfg
    w, counts = worker(model_dir)
    trainer.actor_rollout_wg = LocalActorGroup(w)
    trainer.actor_rollout_wg.set_loss_fn(
        partial(ppo_loss, config=omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)))
    trainer.nat_setup()  # what init_workers does after spawning the workers
    data = batch(tok)
    old, _ = trainer._compute_old_log_prob(data)
    old.batch.pop("entropys")  # as RayPPOTrainer.fit does after logging it
    data = data.union(old)
    g = torch.Generator().manual_seed(5)
    data.batch["ref_log_prob"] = data.batch["old_log_probs"] + 0.05 * torch.randn(
        B, R, generator=g)
    counts.clear()
    out = trainer._update_actor(data)
    res = {"params": params(w), "forwarded": sum(counts),
           "metrics": {k: v for k, v in out.meta_info["metrics"].items()
                       if k.startswith("actor/") or k.startswith("nat")}}
    if nat is not None and nat.get("design") == "prefix":
        # the cropped forward gives the full forward's log-probs at every kept token
        cropped = NATSelector.cropped(data)
        full_lp, _ = trainer._compute_old_log_prob(data)
        crop_lp, _ = trainer._compute_old_log_prob(cropped)
        keep = data.batch["nat_weights"] > 0
        res["kept_lp"] = (full_lp.batch["old_log_probs"][keep],
                          crop_lp.batch["old_log_probs"][keep])
        res["full_tokens"] = int(data.batch["attention_mask"].sum())
        res["cropped_tokens"] = int(cropped.batch["attention_mask"].sum())
    return res


def main():
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=RANK, world_size=WORLD)
    tok = char_tokenizer()
    model_dir = os.path.join(os.path.dirname(os.path.abspath(OUT)), "tiny-qwen2")
    if RANK == 0:
        tiny_qwen2(tok, hidden_size=16, num_layers=1, seed=0).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
    dist.barrier()
    out = {"init": None}
    out["plain"] = run(model_dir, tok)
    out["keep1"] = run(model_dir, tok, {"design": "prefix", "keep": 1.0, "seed": 3})
    out["keep_half"] = run(model_dir, tok, {"design": "prefix", "keep": 0.5, "seed": 3,
                                            "full_keep": 0.1})
    out["entropy_sized"] = run(model_dir, tok, {"design": "poisson_proportional", "keep": 0.5,
                                                "sizes": "entropy", "seed": 3})
    w, _ = worker(model_dir)
    out["init"] = params(w)
    if RANK == 0:
        torch.save(out, OUT)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
