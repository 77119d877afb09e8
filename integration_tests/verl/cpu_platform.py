"""A CPU platform for verl's device layer, so its FSDP engine runs on a machine without GPUs.

verl 0.9.1 registers CUDA, ROCm and NPU platforms only and falls back to CUDA when none is found;
its FSDP engine and ``TrainingWorker`` then call ``torch.cuda``.  This platform answers with
``torch.cpu`` and gloo instead.  It changes where verl runs, not what it computes: the loss, the
micro-batching and the optimizer step are verl's own code.  Import and call :func:`install`
before anything asks verl for its platform.
"""

from __future__ import annotations

import contextlib
import types
from typing import Any

import torch
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry, set_platform


def _device_module() -> types.SimpleNamespace:
    def noop(*_a: Any, **_k: Any) -> None:
        return None

    zero = lambda *_a, **_k: 0  # noqa: E731
    return types.SimpleNamespace(
        is_available=lambda: True, current_device=lambda: "cpu", device_count=lambda: 1,
        set_device=noop, synchronize=noop, manual_seed=torch.manual_seed,
        manual_seed_all=torch.manual_seed, empty_cache=noop, memory_allocated=zero,
        memory_reserved=zero, max_memory_allocated=zero, max_memory_reserved=zero,
        reset_peak_memory_stats=noop, mem_get_info=lambda *_a, **_k: (0, 0),
        get_rng_state=torch.get_rng_state, set_rng_state=torch.set_rng_state,
        Stream=None, stream=lambda *_a, **_k: contextlib.nullcontext(),
        current_stream=lambda *_a, **_k: types.SimpleNamespace(synchronize=noop,
                                                                wait_stream=noop),
        is_bf16_supported=lambda: True, amp=types.SimpleNamespace(),
        get_device_name=lambda *_a, **_k: "cpu",
    )


@PlatformRegistry.register(platform="cpu")
class PlatformCPU(PlatformBase):
    """verl platform backed by the CPU and gloo."""

    device_name = "cpu"  # type: ignore[assignment]
    vendor_name = "cpu"  # type: ignore[assignment]

    @property
    def device_module(self) -> Any:  # type: ignore[override]
        return _device_module()

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        return True

    def current_device(self) -> Any:  # verl uses it as a device: ``x.to(get_device_id())``
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return (None, None)

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextlib.contextmanager
    def nvtx_range(self, msg: str) -> Any:
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "CPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


def install() -> None:
    """Make :class:`PlatformCPU` verl's platform for this process."""
    set_platform(PlatformCPU())
