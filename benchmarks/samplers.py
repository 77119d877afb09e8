r"""Sampler benchmarks: four designs on a ragged (256 x 8192) batch, and against R's ``sampling``.

Every figure is a *ratio* of two configurations timed side by side in the same run: the cases of a
section are repeated in interleaved rounds (the order rotates every round), each case is warmed up
first, the garbage collector is off while timing, and each figure is a ratio of medians.  Absolute
medians are kept in the records (and the ≤ 5 ms batch target is checked on them) but no target is
stated as an absolute time alone.

Sections
--------
``batch``
    A ragged batch of 256 rows x 8192 positions, row lengths uniform on 1024..8192, right-padded
    mask.  For each design (``Poisson.from_fraction(0.5)``, ``SimpleRandom.from_fraction(0.5)``,
    ``Systematic.from_fraction(0.5)``, ``Prefix.from_fraction(0.5)``) and backend (numpy, torch):

    * ``sample(u)`` with pre-drawn float64 uniforms, against a raw Bernoulli comparison
      ``u < 0.5`` on the full (256 x 8192) shape (``batch_sample_vs_bernoulli@<design>/<backend>``);
    * ``draw(rng)`` with a ``numpy.random.Generator`` / ``torch.Generator``, against a raw
      Bernoulli draw ``rng.random(shape) < 0.5`` / ``torch.rand(shape, generator=g) < 0.5``
      (``batch_draw_vs_bernoulli@<design>/<backend>``);
    * construction, against filling the π array ``where(mask, 0.5, 0.0)``
      (``batch_construct_vs_pi_fill@<design>/<backend>``).

    Target: ``sample`` and ``draw`` ≤ 5 ms for every design and backend.

``R``  (only when ``Rscript`` with the ``sampling`` package is found; otherwise skipped with a note)
    One persistent ``Rscript`` process serves timing requests over a pipe, so R's start-up is
    excluded and R and Python repetitions interleave.  R times itself with ``proc.time()`` over an
    inner loop of ``k`` calls; Python times the same ``k`` calls with ``perf_counter``.

    * ``systematic_speedup_vs_R@100000`` = R ``UPsystematic`` / ``Systematic(pi).draw(rng)`` on
      one row of N = 100,000 (target ≥ 10); ``systematic_sample_speedup_vs_R@100000`` uses
      ``sample(u)`` instead;
    * ``poisson_speedup_vs_R@100000`` = R ``UPpoisson`` / ``Poisson(pi).draw(rng)`` (target ≥ 10);
      ``poisson_uniforms_ceiling_vs_R@100000`` = R ``UPpoisson`` / ``rng.random(N) < pi``, the
      best any draw from float64 PCG64 uniforms can reach;
    * ``systematic_pi2_speedup_vs_R@2000`` = R ``UPsystematicpi2`` /
      ``Systematic(pi).joint_inclusion_probabilities()`` at N = 2,000 (target ≥ 100).

    Correctness is checked on the way: R's ``UPsystematic`` draw for a seeded ``u`` must equal
    ``Systematic(pi).sample(u)``, and R's π_kl must match ours (max abs difference recorded).

Usage
-----
``python benchmarks/samplers.py [--quick] [--json FILE]`` or, from ``benchmarks/run.py``,
``from benchmarks.samplers import run_sampler_benchmarks``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

import nat_estimators as nat

if __package__ in (None, ""):  # run as a script: import the benchmarks package from the root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import timing

__all__ = ["TARGETS", "machine_info", "run_sampler_benchmarks"]

#: Batch shape of the ragged-batch section.
BATCH_ROWS, BATCH_COLS = 256, 8192
#: Row lengths of the ragged batch are uniform on [MIN_LEN, BATCH_COLS].
MIN_LEN = 1024
#: Keep fraction of every design in the batch section.
KEEP = 0.5
#: Target for one ``sample``/``draw`` of the whole batch (issues 2 and 6), in ms.
BATCH_TARGET_MS = 5.0
#: Targets on ratios: name -> (comparison, bound).
TARGETS: dict[str, tuple[str, float]] = {
    "systematic_speedup_vs_R@100000": (">=", 10.0),
    "poisson_speedup_vs_R@100000": (">=", 10.0),
    "systematic_pi2_speedup_vs_R@2000": (">=", 100.0),
}

DESIGNS: dict[str, Callable[[Any], Any]] = {
    "poisson": lambda m: nat.Poisson.from_fraction(KEEP, mask=m),
    "simple_random": lambda m: nat.SimpleRandom.from_fraction(KEEP, mask=m),
    "systematic": lambda m: nat.Systematic.from_fraction(KEEP, mask=m),
    "prefix": lambda m: nat.Prefix.from_fraction(KEEP, mask=m),
}


# --------------------------------------------------------------------------- timing core
@dataclass
class Case:
    """One configuration to time: ``fn()`` runs ``inner`` calls; ``reps`` interleaved rounds."""

    name: str
    fn: Callable[[], Any]
    reps: int
    inner: int = 1
    #: ``fn`` returns its own elapsed seconds (e.g. R timing itself) instead of being timed here.
    self_timed: bool = False
    warmup: int = 1


def _interleave(
    cases: list[Case], sync: Callable[[], None] = lambda: None, budget_s: float | None = None
) -> dict[str, list[float]]:
    """Per-call seconds of every case over interleaved rounds (rotating order), after warm-up.

    Rounds stop early (after at least 3) once ``budget_s`` seconds have passed, so a loaded
    machine cannot blow the run's time limit; the records keep the number of repetitions.
    """
    for c in cases:
        for _ in range(c.warmup):
            c.fn()
    sync()
    out: dict[str, list[float]] = {c.name: [] for c in cases}
    rounds = max(c.reps for c in cases)
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    start = time.perf_counter()
    try:
        for r in range(rounds):
            if budget_s is not None and r >= 3 and time.perf_counter() - start > budget_s:
                break
            k = r % len(cases)
            for c in cases[k:] + cases[:k]:
                if len(out[c.name]) >= c.reps:
                    continue
                if c.self_timed:
                    out[c.name].append(float(c.fn()) / c.inner)
                    continue
                t0 = time.perf_counter()
                c.fn()
                sync()
                out[c.name].append((time.perf_counter() - t0) / c.inner)
            if r % 4 == 3:  # keep memory tidy between rounds, outside the timed regions
                gc.collect()
    finally:
        if gc_was_enabled:
            gc.enable()
    return out


def _loop(f: Callable[[], Any], k: int) -> Callable[[], Any]:
    if k == 1:
        return f

    def run() -> Any:
        r = None
        for _ in range(k):
            r = f()
        return r

    return run


def _summary(ts: list[float]) -> dict[str, float]:
    a = np.asarray(ts) * 1e3
    return {
        "median_ms": float(np.median(a)),
        "q25_ms": float(np.percentile(a, 25)),
        "q75_ms": float(np.percentile(a, 75)),
        "min_ms": float(a.min()),
        "reps": len(ts),
    }


def _med(ts: list[float]) -> float:
    return float(statistics.median(ts))


# --------------------------------------------------------------------------- machine
def machine_info() -> dict[str, Any]:
    """CPU, core count and library versions of this machine (for the JSON output)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "nat_estimators": getattr(nat, "__version__", "?"),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.is_available()
    except ImportError:
        info["torch"] = None
    return info


# --------------------------------------------------------------------------- batch section
def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _ragged_mask(rng: np.random.Generator) -> np.ndarray:
    lengths = rng.integers(MIN_LEN, BATCH_COLS + 1, size=BATCH_ROWS)
    return np.arange(BATCH_COLS)[None, :] < lengths[:, None]


def _backends(torch_device: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [("numpy", None)]
    try:
        import torch
    except ImportError:
        return out
    out.append(("torch", torch.device(torch_device)))
    return out


@dataclass
class _BackendEnv:
    """Arrays, generator and baseline callables of one backend in the batch section."""

    mask: Any
    gen: Any
    rng_desc: str
    pi_fill: Callable[[], Any]
    bern_sample: Callable[[], Any]
    bern_draw: Callable[[], Any]
    pre_u: Callable[[tuple[int, ...]], Any]


def _backend_env(
    backend: str, device: Any, mask_np: np.ndarray, rng: np.random.Generator
) -> _BackendEnv:
    shape = mask_np.shape
    if backend == "numpy":
        u_np = rng.random(shape)
        g_np = np.random.default_rng(7)
        return _BackendEnv(
            mask=mask_np,
            gen=g_np,
            rng_desc="numpy.random.Generator(PCG64)",
            pi_fill=lambda: np.where(mask_np, KEEP, 0.0),
            bern_sample=lambda: np.less(u_np, KEEP),
            bern_draw=lambda: np.less(g_np.random(shape), KEEP),
            pre_u=rng.random,
        )
    import torch

    mask_t = torch.as_tensor(mask_np, device=device)
    u_t = torch.as_tensor(rng.random(shape), device=device)
    g_t = torch.Generator(device=device).manual_seed(7)
    half = torch.tensor(KEEP, dtype=torch.float64, device=device)
    zero = torch.tensor(0.0, dtype=torch.float64, device=device)
    return _BackendEnv(
        mask=mask_t,
        gen=g_t,
        rng_desc=f"torch.Generator(device={device})",
        pi_fill=lambda: torch.where(mask_t, half, zero),
        bern_sample=lambda: torch.lt(u_t, KEEP),
        bern_draw=lambda: torch.lt(
            torch.rand(shape, generator=g_t, dtype=torch.float64, device=device), KEEP
        ),
        pre_u=lambda s: torch.as_tensor(rng.random(s), device=device),
    )


def _batch_section(quick: bool, torch_device: str, log: Callable[[str], None]) -> tuple[dict, list]:
    reps, budget = (10, 6.0) if quick else (40, 20.0)
    rng = np.random.default_rng(20240601)
    mask_np = _ragged_mask(rng)
    shape = mask_np.shape
    ratios: dict[str, float] = {}
    records: list[dict[str, Any]] = []
    common = {
        "section": "batch",
        "shape": list(shape),
        "keep": KEEP,
        "row_lengths": f"uniform {MIN_LEN}..{BATCH_COLS}, right-padded",
        "eligible_fraction": float(mask_np.mean()),
    }

    for backend, device in _backends(torch_device):
        sync = partial(timing.sync, device)
        env = _backend_env(backend, device, mask_np, rng)
        mask, gen = env.mask, env.gen
        draw_rng_desc = env.rng_desc

        designs = {name: ctor(mask) for name, ctor in DESIGNS.items()}
        # sanity (outside timing): kept fraction of one draw, fixed sizes where promised
        sanity: dict[str, float] = {}
        for name, d in designs.items():
            s = _to_numpy(d.draw(gen))
            sanity[name] = float(s.sum() / mask_np.sum())
            if s[~mask_np].any():
                raise AssertionError(f"{name}/{backend}: sampled an ineligible position")

        # each op gets its own interleaved run, with its baseline in the same rounds
        groups: dict[str, list[Case]] = {"construct": [], "sample": [], "draw": []}
        groups["construct"].append(Case("pi_fill", env.pi_fill, reps))
        groups["sample"].append(Case("bernoulli", env.bern_sample, reps, warmup=3))
        groups["draw"].append(Case("bernoulli", env.bern_draw, reps, warmup=3))
        for name, d in designs.items():
            u = env.pre_u(tuple(d.uniform_shape))
            groups["construct"].append(Case(name, partial(DESIGNS[name], mask), reps, warmup=2))
            groups["sample"].append(Case(name, partial(d.sample, u), reps, warmup=3))
            groups["draw"].append(Case(name, partial(d.draw, gen), reps, warmup=3))
            if backend == "numpy":
                groups["draw"].append(Case(name + "[int seed]", partial(d.draw, 12345), reps))

        baselines = {
            "construct": ("pi_fill", "where(mask, 0.5, 0.0) float64"),
            "sample": ("bernoulli", "u < 0.5 on pre-drawn float64 u (full shape)"),
            "draw": ("bernoulli", "uniforms(full shape, float64) < 0.5 from " + draw_rng_desc),
        }
        ratio_prefix = {
            "construct": "batch_construct_vs_pi_fill",
            "sample": "batch_sample_vs_bernoulli",
            "draw": "batch_draw_vs_bernoulli",
        }
        for op, cases in groups.items():
            t = _interleave(cases, sync, budget)
            base_name, base_desc = baselines[op]
            base = t[base_name]
            records.append(
                {
                    **common,
                    "name": f"batch/{op}/baseline/{backend}",
                    "backend": backend,
                    "op": op,
                    "config": base_desc,
                    **_summary(base),
                }
            )
            for c in cases:
                if c.name == base_name:
                    continue
                design = c.name.split("[")[0]
                rec: dict[str, Any] = {
                    **common,
                    "name": f"batch/{op}/{c.name}/{backend}",
                    "backend": backend,
                    "op": op,
                    "design": design,
                    **_summary(t[c.name]),
                    "baseline": base_desc,
                    "baseline_median_ms": _med(base) * 1e3,
                    "ratio_vs_baseline": _med(t[c.name]) / _med(base),
                }
                if op != "construct":
                    rec["target_ms"] = BATCH_TARGET_MS
                    rec["met"] = rec["median_ms"] <= BATCH_TARGET_MS
                if op == "draw":
                    rec["rng"] = "int seed 12345" if "[int seed]" in c.name else draw_rng_desc
                    rec["kept_fraction_one_draw"] = sanity[design]
                records.append(rec)
                if "[" not in c.name:
                    ratios[f"{ratio_prefix[op]}@{design}/{backend}"] = rec["ratio_vs_baseline"]
            log(f"  batch {backend:5s} {op:9s} done")
    return ratios, records


# --------------------------------------------------------------------------- R section
_R_SERVER = r"""
con <- file("stdin", open = "r")
out <- function(...) { cat(..., "\n", sep = ""); flush(stdout()) }
ok <- suppressPackageStartupMessages(requireNamespace("sampling", quietly = TRUE))
if (!ok) { out("error sampling-not-installed"); quit(save = "no", status = 3) }
out("ready ", as.character(utils::packageVersion("sampling")), " | ", R.version.string)
env <- new.env()
funs <- list(sys = sampling::UPsystematic, pois = sampling::UPpoisson,
             pi2 = sampling::UPsystematicpi2)
repeat {
  line <- readLines(con, n = 1)
  if (length(line) == 0) break
  a <- strsplit(line, " ", fixed = TRUE)[[1]]
  cmd <- a[1]
  if (cmd == "quit") break
  res <- tryCatch({
    if (cmd == "load") {
      assign(a[2], readBin(a[3], "double", n = as.integer(a[4]), endian = "little"), envir = env)
      "ok"
    } else if (cmd == "time") {
      f <- funs[[a[2]]]; x <- get(a[3], envir = env); k <- as.integer(a[4])
      t0 <- proc.time()[["elapsed"]]
      for (i in seq_len(k)) r <- f(x)
      t1 <- proc.time()[["elapsed"]]
      assign("last", r, envir = env)
      sprintf("%.6f", t1 - t0)
    } else if (cmd == "dump") {
      writeBin(as.double(get("last", envir = env)), a[2], endian = "little")
      "ok"
    } else if (cmd == "seeded_sys") {
      set.seed(as.integer(a[3])); u <- runif(1)
      set.seed(as.integer(a[3])); s <- sampling::UPsystematic(get(a[2], envir = env))
      writeBin(as.double(s), a[4], endian = "little")
      sprintf("%.17g", u)
    } else stop("unknown command ", cmd)
  }, error = function(e) paste("error", conditionMessage(e)))
  out(res)
}
"""


class _RServer:
    """A persistent ``Rscript`` process answering one line per request."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        script = os.path.join(workdir, "r_server.R")
        with open(script, "w", encoding="utf-8") as f:
            f.write(_R_SERVER)
        self.proc = subprocess.Popen(
            ["Rscript", "--vanilla", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.banner = self._readline()
        if not self.banner.startswith("ready"):
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.close()
            raise RuntimeError(f"R server did not start: {self.banner!r} {err.strip()[:300]}")

    def _readline(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        ans = self._readline()
        if ans == "" or ans.startswith("error"):
            raise RuntimeError(f"R failed on {line!r}: {ans!r}")
        return ans

    def load(self, name: str, x: np.ndarray) -> None:
        path = os.path.join(self.workdir, name + ".bin")
        np.ascontiguousarray(x, dtype="<f8").tofile(path)
        self.ask(f"load {name} {path} {x.size}")

    def timer(self, fun: str, var: str, k: int) -> Callable[[], float]:
        return lambda: float(self.ask(f"time {fun} {var} {k}"))

    def dump_last(self, n: int) -> np.ndarray:
        path = os.path.join(self.workdir, "last.bin")
        self.ask(f"dump {path}")
        return np.fromfile(path, dtype="<f8", count=n)

    def close(self) -> None:
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def _r_section(quick: bool, log: Callable[[str], None]) -> tuple[dict, list]:
    ratios: dict[str, float] = {}
    records: list[dict[str, Any]] = []
    if shutil.which("Rscript") is None:
        note = (
            "Rscript not found: R comparisons skipped (install r-base-core and "
            "r-cran-sampling to get systematic/poisson/pi2 speedups vs R)"
        )
        log("  " + note)
        return ratios, [{"name": "R/skipped", "section": "R", "skipped": True, "note": note}]
    with tempfile.TemporaryDirectory(prefix="nat_bench_r_") as wd:
        try:
            r = _RServer(wd)
        except (RuntimeError, OSError) as e:
            note = f"R comparisons skipped: {e}"
            log("  " + note)
            return ratios, [{"name": "R/skipped", "section": "R", "skipped": True, "note": note}]
        try:
            log(f"  R: {r.banner[6:]}")
            records.append({"name": "R/version", "section": "R-meta", "R": r.banner[6:]})
            _r_draws(r, quick, ratios, records, log)
            _r_pi2(r, quick, ratios, records, log)
        finally:
            r.close()
    return ratios, records


def _torch_or_none() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch


def _r_draws(
    r: _RServer, quick: bool, ratios: dict, records: list, log: Callable[[str], None]
) -> None:
    N = 100_000
    # inner loops long enough (~100 ms of R per rep in full mode) for proc.time()'s 1 ms clock
    reps, ks, kp, budget = (8, 20, 60, 10.0) if quick else (25, 40, 125, 30.0)
    rng = np.random.default_rng(99)
    pi = np.asarray(nat.inclusion_probabilities(rng.uniform(0.05, 1.0, N), N // 2))
    assert pi.max() < 1 - 1e-6 and pi.min() > 1e-6  # R treats pik outside (eps, 1-eps) apart
    r.load("pik", pi)
    sys_d, pois_d = nat.Systematic(pi), nat.Poisson(pi)

    # correctness: R's seeded UPsystematic equals our sample at the same u
    path = os.path.join(r.workdir, "sys.bin")
    u_r = float(r.ask(f"seeded_sys pik 2024 {path}"))
    s_r = np.fromfile(path, dtype="<f8", count=N).astype(bool)
    agree = bool(np.array_equal(s_r, np.asarray(sys_d.sample(np.asarray(u_r)))))

    g = np.random.default_rng(3)
    u0 = np.asarray(0.37)
    cases = [
        Case("py_sys_sample", _loop(lambda: sys_d.sample(u0), ks), reps, ks, warmup=2),
        Case("py_sys_draw", _loop(lambda: sys_d.draw(g), ks), reps, ks, warmup=2),
        Case("py_pois_draw", _loop(lambda: pois_d.draw(g), kp), reps, kp, warmup=2),
        Case("py_uniforms_lt_pi", _loop(lambda: g.random(N) < pi, kp), reps, kp, warmup=2),
        Case("R_UPsystematic", r.timer("sys", "pik", ks), reps, ks, self_timed=True, warmup=2),
        Case("R_UPpoisson", r.timer("pois", "pik", kp), reps, kp, self_timed=True, warmup=2),
    ]
    torch = _torch_or_none()
    if torch is not None:
        pit = torch.as_tensor(pi)
        sys_t, pois_t = nat.Systematic(pit), nat.Poisson(pit)
        gt = torch.Generator().manual_seed(3)
        cases += [
            Case("py_sys_draw_torch", _loop(lambda: sys_t.draw(gt), ks), reps, ks, warmup=2),
            Case("py_pois_draw_torch", _loop(lambda: pois_t.draw(gt), kp), reps, kp, warmup=2),
        ]
    t = _interleave(cases, budget_s=budget)
    m = {name: _med(v) for name, v in t.items()}
    common = {"section": "R", "N": N, "pi": "inclusion_probabilities(U(0.05,1), N/2)"}
    inner = {c.name: c.inner for c in cases}
    for name, v in t.items():
        records.append(
            {**common, "name": f"R100k/{name}", "inner_calls_per_rep": inner[name], **_summary(v)}
        )
    defs = {
        "systematic_speedup_vs_R@100000": ("R_UPsystematic", "py_sys_draw"),
        "systematic_sample_speedup_vs_R@100000": ("R_UPsystematic", "py_sys_sample"),
        "poisson_speedup_vs_R@100000": ("R_UPpoisson", "py_pois_draw"),
        "poisson_uniforms_ceiling_vs_R@100000": ("R_UPpoisson", "py_uniforms_lt_pi"),
        "systematic_speedup_vs_R@100000/torch": ("R_UPsystematic", "py_sys_draw_torch"),
        "poisson_speedup_vs_R@100000/torch": ("R_UPpoisson", "py_pois_draw_torch"),
    }
    for rname, (num, den) in defs.items():
        if num in m and den in m:
            ratios[rname] = m[num] / m[den]
            records.append(
                {
                    **common,
                    "name": rname,
                    "ratio": ratios[rname],
                    "R_median_ms": m[num] * 1e3,
                    "python_median_ms": m[den] * 1e3,
                    "python_case": den,
                    "R_case": num,
                }
            )
    records.append({**common, "name": "R100k/check_UPsystematic_same_u", "u": u_r, "agree": agree})
    log(f"  R N=100000 draws done (UPsystematic agrees with sample(u): {agree})")


def _r_pi2(
    r: _RServer, quick: bool, ratios: dict, records: list, log: Callable[[str], None]
) -> None:
    N = 2000
    r_reps, py_reps = (1, 5) if quick else (5, 10)
    rng = np.random.default_rng(5)
    pi = np.asarray(nat.inclusion_probabilities(rng.uniform(0.5, 1.5, N), N // 4))
    r.load("pik2", pi)
    d = nat.Systematic(pi)
    cases = [
        Case("py_pi2", d.joint_inclusion_probabilities, py_reps, 1, warmup=1),
        Case("R_UPsystematicpi2", r.timer("pi2", "pik2", 1), r_reps, 1, self_timed=True, warmup=0),
    ]
    torch = _torch_or_none()
    if torch is not None:
        dt = nat.Systematic(torch.as_tensor(pi))
        cases.append(Case("py_pi2_torch", dt.joint_inclusion_probabilities, py_reps, 1))
    t = _interleave(cases, budget_s=15.0 if quick else 90.0)
    pi2_r = r.dump_last(N * N).reshape(N, N)  # column-major from R; symmetric anyway
    err = float(np.max(np.abs(pi2_r.T - np.asarray(d.joint_inclusion_probabilities()))))
    m = {name: _med(v) for name, v in t.items()}
    common = {"section": "R", "N": N, "pi": "inclusion_probabilities(U(0.5,1.5), N/4)"}
    for name, v in t.items():
        records.append({**common, "name": f"R2000/{name}", **_summary(v)})
    ratios["systematic_pi2_speedup_vs_R@2000"] = m["R_UPsystematicpi2"] / m["py_pi2"]
    records.append(
        {
            **common,
            "name": "systematic_pi2_speedup_vs_R@2000",
            "ratio": ratios["systematic_pi2_speedup_vs_R@2000"],
            "R_median_ms": m["R_UPsystematicpi2"] * 1e3,
            "python_median_ms": m["py_pi2"] * 1e3,
            "R_reps": r_reps,
        }
    )
    if "py_pi2_torch" in m:
        ratios["systematic_pi2_speedup_vs_R@2000/torch"] = (
            m["R_UPsystematicpi2"] / m["py_pi2_torch"]
        )
    records.append(
        {
            **common,
            "name": "R2000/check_pi2_max_abs_diff",
            "max_abs_diff": err,
            "agree": err < 1e-10,
        }
    )
    log(f"  R N=2000 pi2 done (max |pi2_R - pi2| = {err:.2e})")


# --------------------------------------------------------------------------- entry points
def run_sampler_benchmarks(
    quick: bool = False,
    *,
    torch_device: str = "cpu",
    with_r: bool = True,
    torch_threads: int = 1,
    verbose: bool = True,
) -> dict[str, Any]:
    """Run the sampler benchmarks; return ``{"ratios": {...}, "records": [...]}``.

    Parameters
    ----------
    quick : bool
        Fewer repetitions, and R's ``UPsystematicpi2`` (≈ 5–10 s a call) run once.
    torch_device : str
        Device of the torch backend in the batch section (``"cpu"``, ``"cuda"``).
    with_r : bool
        Run the R comparisons when ``Rscript`` and ``sampling`` are available.
    torch_threads : int
        ``torch.set_num_threads`` for the duration of the run (restored afterwards).  The default
        1 compares like with like (numpy's and R's kernels are single-threaded) and keeps torch
        usable on a shared 2-core machine, where its OpenMP threads otherwise stall behind other
        processes (medians 10-40x too slow under a load average of 3).  0 keeps torch's setting.
    verbose : bool
        Print progress to stderr.
    """

    def log(msg: str) -> None:
        if verbose:
            print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    load0 = timing.loadavg()
    if load0 is not None and load0 > 0.5 * (os.cpu_count() or 1):
        log(
            f"  WARNING: load average {load0:.2f} on {os.cpu_count()} cores: other processes are "
            "running; ratios stay comparable (interleaved), absolute ms are inflated"
        )
    torch = _torch_or_none()
    threads_before = torch.get_num_threads() if torch is not None else None
    if torch is not None and torch_threads > 0:
        torch.set_num_threads(torch_threads)
    try:
        threads_used = torch.get_num_threads() if torch is not None else None
        ratios, records = _batch_section(quick, torch_device, log)
        if with_r:
            r_ratios, r_records = _r_section(quick, log)
            ratios.update(r_ratios)
            records.extend(r_records)
    finally:
        if torch is not None and threads_before is not None:
            torch.set_num_threads(threads_before)
    for name, (op, bound) in TARGETS.items():
        if name in ratios:
            met = ratios[name] >= bound if op == ">=" else ratios[name] <= bound
            records.append(
                {
                    "name": f"target/{name}",
                    "section": "targets",
                    "ratio": ratios[name],
                    "target": f"{op} {bound:g}",
                    "met": bool(met),
                }
            )
    records.append(
        {
            "name": "meta",
            "section": "meta",
            "quick": quick,
            "torch_threads": threads_used,
            "wall_s": time.perf_counter() - t0,
            "loadavg_1min_start": load0,
            "loadavg_1min_end": timing.loadavg(),
        }
    )
    return {"ratios": ratios, "records": records}


def format_table(result: dict[str, Any]) -> str:
    """Human-readable table of a :func:`run_sampler_benchmarks` result."""
    recs = result["records"]
    lines = []
    # sizes and target as the run recorded them (the page may be rebuilt from an older run)
    first = next((r for r in recs if r.get("section") == "batch" and "shape" in r), None)
    if first is not None:
        shape = "x".join(str(n) for n in first["shape"])
        tgt = next((r["target_ms"] for r in recs if "target_ms" in r), None)
        lines.append(
            f"Ragged batch {shape} (keep {first['keep']:g}); ms = median per call; ratio = vs the "
            f"baseline timed in the same rounds"
            + (f"; target: sample/draw <= {tgt:g} ms" if tgt is not None else "")
        )
    hdr = (
        f"{'op':9s} {'design':23s} {'backend':7s} {'median ms':>10s} {'base ms':>8s} "
        f"{'ratio':>7s}  target"
    )
    lines += [hdr, "-" * len(hdr)]
    for rec in recs:
        if rec.get("section") != "batch" or "design" not in rec:
            continue
        tgt = ""
        if "met" in rec:
            tgt = "met" if rec["met"] else "MISSED"
        design = rec["name"].split("/")[2]
        lines.append(
            f"{rec['op']:9s} {design:23s} {rec['backend']:7s} {rec['median_ms']:10.2f} "
            f"{rec['baseline_median_ms']:8.2f} {rec['ratio_vs_baseline']:7.2f}  {tgt}"
        )
    lines.append("")
    rr = [rec for rec in recs if rec.get("section") == "R" and "ratio" in rec]
    skipped = [rec for rec in recs if rec.get("section") == "R" and rec.get("skipped")]
    if rr:
        lines.append("Against R's sampling package (same run, interleaved; R timed in-process)")
        hdr = f"{'ratio':42s} {'R ms':>9s} {'ours ms':>9s} {'speedup':>8s}  target"
        lines += [hdr, "-" * len(hdr)]
        for rec in rr:
            t = TARGETS.get(rec["name"])
            tgt = ""
            if t:
                ok = rec["ratio"] >= t[1] if t[0] == ">=" else rec["ratio"] <= t[1]
                tgt = f"{t[0]} {t[1]:g}: " + ("met" if ok else "MISSED")
            lines.append(
                f"{rec['name']:42s} {rec['R_median_ms']:9.3f} "
                f"{rec['python_median_ms']:9.3f} {rec['ratio']:8.1f}  {tgt}"
            )
        for rec in recs:
            if rec.get("name", "").startswith(("R100k/check", "R2000/check")):
                lines.append(
                    f"check {rec['name']}: agree={rec['agree']}"
                    + (
                        f" (max abs diff {rec['max_abs_diff']:.1e})"
                        if "max_abs_diff" in rec
                        else ""
                    )
                )
    for rec in skipped:
        lines.append("NOTE: " + rec["note"])
    meta = [rec for rec in recs if rec.get("name") == "meta"]
    if meta:
        m0 = meta[0]

        def load(key: str) -> str:
            v = m0.get(key)
            return "?" if v is None else f"{v:.2f}"

        lines.append(
            f"(wall time {m0.get('wall_s', float('nan')):.1f} s, quick={m0.get('quick')}, "
            f"torch threads {m0.get('torch_threads')}, 1-min load average "
            f"{load('loadavg_1min_start')} at start, {load('loadavg_1min_end')} at end)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="fewer repetitions (< 2 minutes)")
    p.add_argument("--json", metavar="FILE", help="write {machine, ratios, records} to FILE")
    p.add_argument("--torch-device", default="cpu", help="torch device for the batch section")
    p.add_argument("--no-r", action="store_true", help="skip the R comparisons")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads during the run (default 1, like numpy and R; 0 = torch's own)",
    )
    args = p.parse_args(argv)
    res = run_sampler_benchmarks(args.quick, torch_device=args.torch_device, with_r=not args.no_r)
    print(format_table(res))
    if args.json:
        machine = machine_info()
        for rec in res["records"]:
            if rec.get("name") == "R/version":
                machine["R_sampling"] = rec["R"]
            if rec.get("name") == "meta":
                machine["torch_threads_during_run"] = rec.get("torch_threads")
        out = {"machine": machine, "ratios": res["ratios"], "records": res["records"]}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1, sort_keys=False)
            f.write("\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
