"""agg_loss / loss_coefficients against independent re-implementations of the trainers' formulas.

The reference functions below are written from the trainers' code (verl ``core_algos.agg_loss``,
TRL ``GRPOTrainer._compute_loss``, OpenRLHF ``PolicyLoss`` + ``masked_mean``) and
docs/rl/overview.md, without calling the package.
"""

from __future__ import annotations

import math

import pytest
import torch

from nat_estimators.rl import (
    LOSS_MODES,
    LossNormalizers,
    agg_loss,
    loss_coefficients,
    openrlhf_mode,
    resolve_mode,
)

VERL_MODES = (
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)


# ----------------------------------------------------------------------------- references
def verl_ref(loss, mask, mode, *, dp_size=1, batch_num_tokens=None, global_batch_size=None,
             loss_scale_factor=None):
    """verl agg_loss (dp-aware version), sum-norm per docs/rl/overview.md: dp * sum / (G * C)."""
    mask = mask.to(loss.dtype)
    if mode == "token-mean":
        n = mask.sum() if batch_num_tokens is None else batch_num_tokens
        return (loss * mask).sum() / n * dp_size
    if mode == "token-sum":
        return (loss * mask).sum() * dp_size
    seq_losses = (loss * mask).sum(-1)
    cnt = mask.sum(-1)
    seq_mask = (cnt > 0).to(loss.dtype)
    g = seq_mask.sum() if global_batch_size is None else global_batch_size
    if mode == "seq-mean-token-sum":
        return (seq_losses * seq_mask).sum() / g * dp_size
    if mode == "seq-mean-token-mean":
        return ((seq_losses / (cnt + 1e-8)) * seq_mask).sum() / g * dp_size
    if mode == "seq-mean-token-sum-norm":
        return (seq_losses * seq_mask).sum() / (g * loss_scale_factor) * dp_size
    raise AssertionError(mode)


def trl_ref(loss, mask, loss_type, *, max_completion_length=None, num_items_in_batch=None,
            num_processes=1):
    mask = mask.to(loss.dtype)
    if loss_type == "grpo":
        return ((loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return (loss * mask).sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return (loss * mask).sum() / (loss.size(0) * max_completion_length)
    if loss_type in ("dapo", "cispo"):
        return (loss * mask).sum() / (num_items_in_batch / num_processes)
    raise AssertionError(loss_type)


def openrlhf_masked_mean(t, m, dim=None):
    m = m.to(t.dtype)
    if dim is None:
        return (t * m).sum() / m.sum()
    return (t * m).sum(dim) / m.sum(dim)


def openrlhf_ref(loss, mask, token_level_loss):
    if token_level_loss:
        return openrlhf_masked_mean(loss, mask)
    return openrlhf_masked_mean(loss, mask, -1).mean()


# ----------------------------------------------------------------------------- data
def ragged_batch(seed=0, *, with_empty=True, dtype=torch.float64):
    """Ragged, non-contiguous masks (tool tokens), left/right padding, an empty row."""
    g = torch.Generator().manual_seed(seed)
    B, T = 6, 11
    loss = torch.randn(B, T, generator=g, dtype=dtype)
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[0, 2:9] = True
    mask[0, 5] = False  # tool token
    mask[1, 6:11] = True  # left padded row
    mask[2, 1:3] = True
    mask[2, 7:10] = True  # two response segments
    mask[3, 4:5] = True
    mask[4, :] = True
    mask[4, [3, 4, 8]] = False
    if not with_empty:
        mask[5, 3:6] = True
    return loss, mask


def test_modes_listed():
    assert set(VERL_MODES) <= set(LOSS_MODES)
    for alias in ("grpo", "bnpo", "dr_grpo", "dapo", "cispo"):
        assert alias in LOSS_MODES
    assert resolve_mode("grpo") == "seq-mean-token-mean"
    assert resolve_mode("bnpo") == "token-mean"
    assert resolve_mode("dapo") == "token-mean"
    assert resolve_mode("dr_grpo") == "seq-mean-token-sum-norm"
    assert resolve_mode(openrlhf_mode(True)) == "token-mean"
    assert resolve_mode(openrlhf_mode(False)) == "seq-mean-token-mean"


# ----------------------------------------------------------------------------- full loss
@pytest.mark.parametrize("mode", VERL_MODES)
@pytest.mark.parametrize("with_empty", [True, False])
def test_verl_modes_match_reference(mode, with_empty):
    loss, mask = ragged_batch(with_empty=with_empty)
    got = agg_loss(loss, mask, mode, const_len=13)
    want = verl_ref(loss, mask, mode, loss_scale_factor=13)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=0)  # verl adds 1e-8 to L_i
    # with dp_size and explicit global counts
    got = agg_loss(loss, mask, mode, const_len=13, dp_size=4, num_tokens=97, num_seqs=23)
    want = verl_ref(loss, mask, mode, dp_size=4, batch_num_tokens=97, global_batch_size=23,
                    loss_scale_factor=13)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=0)


def test_verl_modes_exact_without_epsilon():
    loss, mask = ragged_batch(with_empty=False)
    lens = mask.sum(-1).double()
    want = ((loss * mask).sum(-1) / lens).mean()
    torch.testing.assert_close(agg_loss(loss, mask, "seq-mean-token-mean"), want,
                               rtol=1e-15, atol=0)


@pytest.mark.parametrize("with_empty", [True, False])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "cispo"])
def test_trl_aliases_match_reference(loss_type, with_empty):
    loss, mask = ragged_batch(with_empty=with_empty)
    n_global, procs = 101, 4
    kw = {}
    if loss_type == "dr_grpo":
        kw["const_len"] = 17
    if loss_type in ("dapo", "cispo"):
        kw.update(num_tokens=n_global, dp_size=procs)
    got = agg_loss(loss, mask, loss_type, **kw)
    want = trl_ref(loss, mask, loss_type, max_completion_length=17, num_items_in_batch=n_global,
                   num_processes=procs)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)


@pytest.mark.parametrize("token_level", [True, False])
def test_openrlhf_aliases_match_reference(token_level):
    loss, mask = ragged_batch(with_empty=False)  # OpenRLHF's masked_mean is NaN on empty rows
    got = agg_loss(loss, mask, openrlhf_mode(token_level))
    torch.testing.assert_close(got, openrlhf_ref(loss, mask, token_level), rtol=1e-14, atol=0)


def test_float_mask_and_nan_outside_mask():
    loss, mask = ragged_batch()
    want = agg_loss(loss, mask, "seq-mean-token-mean")
    dirty = torch.where(mask, loss, torch.full_like(loss, float("nan")))
    got = agg_loss(dirty, mask.double(), "seq-mean-token-mean")
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    dirty.requires_grad_(True)
    agg_loss(dirty, mask, "token-mean").backward()
    assert torch.isfinite(dirty.grad).all()
    assert (dirty.grad[~mask] == 0).all()


@pytest.mark.parametrize("mode", LOSS_MODES)
@pytest.mark.parametrize("normalizer", ["ht", "hajek"])
def test_coefficient_form(mode, normalizer):
    loss, mask = ragged_batch()
    g = torch.Generator().manual_seed(1)
    w = torch.where(mask & (torch.rand(mask.shape, generator=g) < 0.6),
                    1 + 3 * torch.rand(mask.shape, generator=g, dtype=torch.float64),
                    torch.zeros((), dtype=torch.float64))
    kw = {"const_len": 12, "dp_size": 2}
    c = loss_coefficients(mask, mode, weights=w, normalizer=normalizer, **kw)
    assert c.dtype == torch.float64 and c.shape == mask.shape
    assert (c[~mask] == 0).all()
    got = agg_loss(loss, mask, mode, weights=w, normalizer=normalizer, **kw)
    torch.testing.assert_close(got, (c * loss).sum(), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("mode", (*VERL_MODES, "grpo", "dr_grpo", "dapo"))
def test_unit_weights_equal_full_loss(mode):
    loss, mask = ragged_batch()
    full = agg_loss(loss, mask, mode, const_len=9)
    ones = agg_loss(loss, mask, mode, const_len=9, weights=mask.double())
    torch.testing.assert_close(ones, full, rtol=1e-15, atol=0)
    hajek = agg_loss(loss, mask, mode, const_len=9, weights=mask.double(), normalizer="hajek")
    torch.testing.assert_close(hajek, full, rtol=1e-14, atol=0)


def test_weights_formula_by_hand():
    loss, mask = ragged_batch()
    w = mask.double() * torch.linspace(0.5, 3.0, mask.shape[1], dtype=torch.float64)
    L = mask.sum(-1).double()
    N, G = L.sum(), (L > 0).sum()
    inv_l = torch.where(L > 0, 1 / L.clamp(min=1), torch.zeros_like(L))
    terms = (w * loss * mask).sum(-1)
    torch.testing.assert_close(agg_loss(loss, mask, "token-mean", weights=w), terms.sum() / N)
    torch.testing.assert_close(agg_loss(loss, mask, "seq-mean-token-mean", weights=w),
                               (terms * inv_l).sum() / G)
    # Hájek: per-row self-normalisation
    lhat = (w * mask).sum(-1)
    hajek_rows = torch.where(lhat > 0, terms / lhat.clamp(min=1e-300), torch.zeros_like(lhat))
    torch.testing.assert_close(
        agg_loss(loss, mask, "seq-mean-token-mean", weights=w, normalizer="hajek"),
        hajek_rows.sum() / G,
    )
    torch.testing.assert_close(
        agg_loss(loss, mask, "token-mean", weights=w, normalizer="hajek"),
        (hajek_rows * L).sum() / N,
    )


@pytest.mark.parametrize("mode", LOSS_MODES)
def test_micro_batches_with_normalizers_sum_to_full(mode):
    """Splitting rows into micro-batches with full-mask normalizers gives the same total."""
    loss, mask = ragged_batch()
    stats = LossNormalizers.from_mask(mask, const_len=15)
    full = agg_loss(loss, mask, mode, normalizers=stats)
    parts = [torch.tensor([0, 3]), torch.tensor([1, 5, 2]), torch.tensor([4])]
    total = sum(agg_loss(loss[p], mask[p], mode, normalizers=stats.rows(p)) for p in parts)
    torch.testing.assert_close(total, full, rtol=1e-14, atol=1e-15)


def test_cropped_mask_uses_normalizer_lengths():
    """A cropped micro-batch mask with full-mask normalizers keeps the full denominators."""
    loss, mask = ragged_batch()
    stats = LossNormalizers.from_mask(mask)
    cropped = mask.clone()
    cropped[:, 6:] = False
    w = cropped.double() * 2.0
    got = agg_loss(loss, cropped, "seq-mean-token-mean", weights=w, normalizers=stats)
    L = mask.sum(-1).double()
    terms = (2.0 * loss * cropped).sum(-1)
    want = (terms / L.clamp(min=1)).sum() / (L > 0).sum()
    torch.testing.assert_close(got, want)


def test_bnpo_local_count_from_normalizers():
    loss, mask = ragged_batch()
    stats = LossNormalizers(500, 40, 48, mask.sum(-1), local_num_tokens=int(mask.sum()))
    got = agg_loss(loss, mask, "bnpo", normalizers=stats)
    torch.testing.assert_close(got, trl_ref(loss, mask, "bnpo"))
    got = agg_loss(loss, mask, "dapo", normalizers=stats)
    torch.testing.assert_close(got, (loss * mask).sum() / 500)


def test_zero_tokens_gives_zero():
    loss = torch.randn(2, 3, dtype=torch.float64)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    for mode in LOSS_MODES:
        assert float(agg_loss(loss, mask, mode, const_len=3)) == 0.0


# ----------------------------------------------------------------------------- dtypes
def test_dtypes():
    loss, mask = ragged_batch(dtype=torch.float32)
    assert agg_loss(loss, mask, "token-mean").dtype == torch.float32
    lb = loss.to(torch.bfloat16).requires_grad_(True)
    out = agg_loss(lb, mask, "token-mean", weights=mask.float())
    assert out.dtype == torch.float32
    out.backward()
    assert lb.grad.dtype == torch.bfloat16
    w64 = mask.double()
    assert agg_loss(loss, mask, "token-mean", weights=w64).dtype == torch.float64
    with pytest.raises(ValueError, match="weights"):
        agg_loss(loss, mask, "token-mean", weights=mask.to(torch.bfloat16))
    with pytest.raises(ValueError, match="weights"):
        agg_loss(loss, mask, "token-mean", weights=mask.to(torch.float16))
    with pytest.raises(ValueError, match="dtype"):
        loss_coefficients(mask, "token-mean", dtype=torch.bfloat16)


# ----------------------------------------------------------------------------- bad input
def test_bad_input_errors_name_the_argument():
    loss, mask = ragged_batch()
    with pytest.raises(ValueError, match="per_token_loss"):
        agg_loss(loss[:, :-1], mask, "token-mean")
    with pytest.raises(ValueError, match="per_token_loss"):
        agg_loss(loss[0], mask[0], "token-mean")
    with pytest.raises(ValueError, match="weights"):
        agg_loss(loss, mask, "token-mean", weights=mask.double()[:, :-1])
    w = mask.double().clone()
    w[~mask] = 1.0  # weight on ineligible positions
    with pytest.raises(ValueError, match="weights"):
        agg_loss(loss, mask, "token-mean", weights=w)
    w = mask.double().clone()
    w[0, 2] = -1.0
    with pytest.raises(ValueError, match="weights"):
        agg_loss(loss, mask, "token-mean", weights=w)
    w[0, 2] = math.inf
    with pytest.raises(ValueError, match="weights"):
        agg_loss(loss, mask, "token-mean", weights=w)
    with pytest.raises(ValueError, match="mode"):
        agg_loss(loss, mask, "token_mean_typo")
    with pytest.raises(ValueError, match="const_len"):
        agg_loss(loss, mask, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="const_len"):
        agg_loss(loss, mask, "dr_grpo")
    with pytest.raises(ValueError, match="const_len"):
        agg_loss(loss, mask, "dr_grpo", const_len=0)
    with pytest.raises(ValueError, match="dp_size"):
        agg_loss(loss, mask, "token-mean", dp_size=0)
    with pytest.raises(ValueError, match="normalizer"):
        agg_loss(loss, mask, "token-mean", normalizer="self")
    with pytest.raises(ValueError, match="num_tokens"):
        agg_loss(loss, mask, "token-mean", num_tokens=-1)
    with pytest.raises(ValueError, match="num_seqs"):
        agg_loss(loss, mask, "grpo", num_seqs=float("nan"))
    with pytest.raises(ValueError, match="response_mask"):
        agg_loss(loss, mask.double() * 2, "token-mean")
    with pytest.raises(ValueError, match="per_token_loss"):
        agg_loss(mask.long(), mask, "token-mean")
    stats = LossNormalizers.from_mask(mask)
    with pytest.raises(ValueError, match="normalizers"):
        agg_loss(loss[:2], mask[:2], "token-mean", normalizers=stats)
    small = LossNormalizers.from_mask(mask & False)
    with pytest.raises(ValueError, match="normalizers"):
        agg_loss(loss, mask, "seq-mean-token-mean", normalizers=small)


@pytest.mark.parametrize("mode", ["gspo", "GSPO", "sequence", "gspo_token"])
def test_sequence_level_objectives_refused(mode):
    loss, mask = ragged_batch()
    with pytest.raises(ValueError, match="sequence-level"):
        agg_loss(loss, mask, mode)
