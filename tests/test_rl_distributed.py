"""Two gloo ranks on CPU: the all-reduced NAT gradient equals the single-process NAT gradient.

The batch and one global selection are built identically on every process; rank ``r`` takes an
uneven shard of the rows (so local and global token counts differ), computes
:class:`LossNormalizers` with ``all_reduce=True``, runs :func:`grpo_backward` (loss scaled by the
world size, as verl's ``dp_size``) and averages the gradients with ``all_reduce``.  The result
must equal the single-process gradient on the whole batch with the same selection, for every
global loss mode — and differ from it when local denominators are used instead.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nat_estimators.demo.models import TinyCausalLM
from nat_estimators.rl import (
    GRPOBatch,
    GRPOConfig,
    LossNormalizers,
    grpo_backward,
    select_tokens,
)

MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean",
         "seq-mean-token-sum-norm", "grpo", "dr_grpo", "dapo")
SHARDS = ([0, 1, 2, 5], [3, 4])
WORLD = 2


def build():
    torch.manual_seed(0)
    model = TinyCausalLM(vocab_size=13, d_model=16, n_heads=2, n_layers=1, max_len=32,
                         dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    B, T = 6, 14
    ids = torch.randint(0, 13, (B, T), generator=g)
    am = torch.ones(B, T, dtype=torch.bool)
    am[1, :4] = False
    am[4, 10:] = False
    rm = am.clone()
    rm[:, :5] = False
    rm[0, 8:] = False  # short response
    rm[2] = False  # empty response
    rm[3, 7] = False
    batch = GRPOBatch(ids, am, rm, advantages=torch.linspace(-1, 1, B, dtype=torch.float64),
                      old_log_probs=-2.0 + 0.1 * torch.randn(B, T, generator=g,
                                                             dtype=torch.float64))
    sel = select_tokens(rm, "prefix", 0.5, generator=torch.Generator().manual_seed(2),
                        weight_dtype=torch.float64)
    return model, batch, sel


def shard(batch, idx):
    return GRPOBatch(batch.input_ids[idx], batch.attention_mask[idx], batch.response_mask[idx],
                     batch.advantages[idx], old_log_probs=batch.old_log_probs[idx])


def config(mode):
    return GRPOConfig(loss_mode=mode, design="prefix", keep=0.5, const_len=12, max_tokens=30)


def flat_grad(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        model, batch, sel = build()
        idx = torch.tensor(SHARDS[rank])
        b, s = shard(batch, idx), sel.rows(idx)
        result = {}
        for mode in MODES:
            for reduce_counts in (True, False):
                model.zero_grad(set_to_none=True)
                stats = LossNormalizers.from_mask(b.response_mask, const_len=12,
                                                  all_reduce=reduce_counts)
                if not reduce_counts:  # the wrong way: local denominators, verl-style dp scale
                    stats = LossNormalizers(stats.num_tokens, stats.num_seqs, stats.num_rows,
                                            stats.seq_lengths, const_len=12, world_size=WORLD)
                grpo_backward(model, b, config(mode), selection=s, normalizers=stats)
                for p in model.parameters():
                    dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                    p.grad.div_(WORLD)
                result[(mode, reduce_counts)] = flat_grad(model)
            result[("stats", mode)] = (stats.num_tokens, stats.num_seqs, stats.world_size)
        full = LossNormalizers.from_mask(b.response_mask, all_reduce=True)
        result["global"] = (full.num_tokens, full.num_seqs, full.num_rows, full.world_size,
                            full.local_num_tokens)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_rank_gradient_equals_single_process(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    model, batch, sel = build()
    N = int(batch.response_mask.sum())
    G = int(batch.response_mask.any(-1).sum())
    assert ranks[0]["global"][:4] == (N, G, 6, WORLD)
    assert ranks[0]["global"][4] == int(batch.response_mask[SHARDS[0]].sum())
    for mode in MODES:
        model.zero_grad(set_to_none=True)
        grpo_backward(model, batch, config(mode), selection=sel)
        want = flat_grad(model)
        for r in range(WORLD):
            torch.testing.assert_close(ranks[r][(mode, True)], want, rtol=1e-12, atol=1e-14)
        if mode != "token-sum":  # token-sum has no denominator
            wrong = ranks[0][(mode, False)]
            assert float((wrong - want).abs().max()) > 1e-3 * float(want.abs().max()), mode
