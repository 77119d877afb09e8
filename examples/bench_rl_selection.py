"""Cost of the NAT bookkeeping (selection + weights + full-mask normalizers + crop/pack plan)
relative to one forward+backward pass of the example policy on the same batch.

The issue's target is a (256 x 8192) batch on an accelerator, where the bookkeeping must cost
< 1% of one fwd+bwd step::

    python examples/bench_rl_selection.py --rows 256 --tokens 8192 --device cuda

The defaults are sized for a CPU.  The fwd+bwd pass is run in row micro-batches of
``--rows-per-step`` rows (activation memory), and its time is summed.
"""

from __future__ import annotations

import argparse
import time

import torch

from nat_estimators.demo.models import TinyCausalLM
from nat_estimators.rl import (
    DESIGNS,
    LossNormalizers,
    crop_mask,
    needs_sizes,
    pack_rows,
    select_tokens,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeat):
    fn()  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--rows-per-step", type=int, default=4)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    dev = torch.device(args.device)
    B, T = args.rows, args.tokens
    g = torch.Generator(device=dev).manual_seed(0)
    # ragged rows: prompt of T/8 tokens, response of random length
    lengths = torch.randint(T // 4, T + 1, (B,), generator=g, device=dev)
    pos = torch.arange(T, device=dev)
    am = pos[None, :] < lengths[:, None]
    rm = am & (pos[None, :] >= T // 8)
    sizes = torch.rand(B, T, generator=g, device=dev) + 0.05

    model = TinyCausalLM(vocab_size=1024, d_model=256, n_heads=4, n_layers=4, max_len=T,
                         device=dev)
    ids = torch.randint(0, 1024, (B, T), generator=g, device=dev)

    def fwd_bwd():
        for i in range(0, B, args.rows_per_step):
            sl = slice(i, i + args.rows_per_step)
            logits = model(ids[sl], am[sl])
            logits.float().logsumexp(-1).sum().backward()

    t_model = timed(fwd_bwd, dev, 1)
    print(f"device {dev}, batch {B} x {T}, fwd+bwd of the example policy: {t_model:.3f} s")
    for design in DESIGNS:
        kw = {"sizes": sizes} if needs_sizes(design) else {}

        def book(design=design, kw=kw):
            stats = LossNormalizers.from_mask(rm)
            sel = select_tokens(rm, design, args.keep, generator=g, **kw)
            plan = pack_rows(crop_mask(am, sel.crop_lengths), max_tokens=8 * T)
            return stats, sel, plan

        t = timed(book, dev, args.repeat)
        print(f"  {design:24s} selection+weights+normalizers+plan {1e3 * t:8.2f} ms "
              f"= {100 * t / t_model:6.3f}% of fwd+bwd")


if __name__ == "__main__":
    main()
