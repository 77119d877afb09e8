"""A real verl actor update on the CPU (FSDP2 engine, gloo, 1 and 2 ranks) through the mixin.

The harness (``actor_harness.py``) runs verl's ``TrainingWorker`` and ``RayPPOTrainer``'s own
``_compute_old_log_prob`` / ``_update_actor`` on a tiny in-memory Qwen2.  What cannot run here:
Ray's actor placement and the rollout engines (vLLM / SGLang) need GPUs, so the trainer's
``fit`` loop and ``init_workers`` are not run; the harness calls ``nat_setup`` (what
``init_workers`` does after spawning the workers) and hands each rank its shard, as verl's
dispatch does.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

pytest.importorskip(
    "verl", reason="verl lives in its own environment; .ci/run builds it and runs these tests")

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _run(world: int, tmp_path) -> dict:
    out = str(tmp_path / f"update-{world}.pt")
    port = _port()
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-W", "ignore", os.path.join(HERE, "actor_harness.py")]
    procs = [subprocess.Popen([*cmd, str(r), str(world), port, out], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(world)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-4000:]
    return torch.load(out, weights_only=False)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module", params=[1, 2], ids=["1rank", "2ranks"])
def result(request, tmp_path_factory):
    out = _run(request.param, tmp_path_factory.mktemp("verl"))
    out["world"] = request.param
    return out


def test_keep_one_gives_identical_parameters(result):
    assert _max_diff(result["plain"]["params"], result["init"]) > 1e-3  # the update did move
    assert _max_diff(result["keep1"]["params"], result["plain"]["params"]) == 0.0
    assert result["keep1"]["forwarded"] == result["plain"]["forwarded"]


def test_prefix_half_forwards_fewer_tokens(result):
    half = result["keep_half"]
    assert half["forwarded"] < 0.85 * result["plain"]["forwarded"], (
        half["forwarded"], result["plain"]["forwarded"])
    assert half["cropped_tokens"] == half["forwarded"] or half["forwarded"] < half["full_tokens"]
    if result["world"] == 1:  # the numbers quoted on docs/rl/verl.md
        assert (half["forwarded"], result["plain"]["forwarded"]) == (67, 98)
    assert _max_diff(half["params"], result["plain"]["params"]) > 1e-4  # a different estimate
    kept = half["metrics"]["actor/nat/kept_fraction"]
    assert all(0 < k < 1 for k in kept)


def test_cropped_forward_matches_full_forward_at_kept_tokens(result):
    """Remove-padding packing of the cropped rows: same log-probs at every kept token."""
    full, cropped = result["keep_half"]["kept_lp"]
    assert full.numel() > 0
    torch.testing.assert_close(cropped, full, rtol=0, atol=1e-6)


def test_entropy_sized_design_reads_the_kept_old_entropy(result):
    """sizes='entropy': the mixin keeps the entropy verl drops, and the update runs with it."""
    kept = result["entropy_sized"]["metrics"]["actor/nat/kept_fraction"]
    assert all(0 < k < 1 for k in kept)
    assert _max_diff(result["entropy_sized"]["params"], result["plain"]["params"]) > 1e-4
