"""Where a training runs: the device, mixed precision, the memory format and, under ``torchrun``, the
process group (DDP).

Collectives that carry tensors (epoch metrics, the search's population scores) use the default group: NCCL
on CUDA devices, gloo on the CPU. Host-side messages go over a gloo group: Python objects (a policy, the
mid-epoch states) and the Ctrl-C decision that every rank must share (:meth:`Runtime.any_rank`), which
never waits for the device, so the loop can check it after every step without a host-device sync.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

import torch
from torch import Tensor

from ..config import Config
from ..errors import ConfigError


@dataclasses.dataclass
class Runtime:
    """Where this process runs: the device and, under ``torchrun``, its rank in the process group."""

    device: torch.device
    rank: int = 0
    world: int = 1
    amp: bool = False
    channels_last: bool = False
    #: the gloo group for host-side control messages (None: the default group, already gloo)
    control_group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        """The sum of ``t`` over the ranks, as a CPU tensor (a host-device sync: call it at epoch ends)."""
        if self.distributed:
            import torch.distributed as dist

            t = t.to(self.comm_device())
            dist.all_reduce(t)
        return t.cpu()

    def any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any rank: a host-side all-reduce on the control group (gloo), so it
        never reads the device."""
        if not self.distributed:
            return flag
        import torch.distributed as dist

        t = torch.tensor([int(flag)])
        dist.all_reduce(t, group=self.control_group)
        return bool(t.item())

    def broadcast_object(self, obj: Any) -> Any:
        """``obj`` from rank 0 on every rank (a policy, a flag, a result)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.control_group)  # pickled on the host: the gloo group
        return box[0]

    def gather_objects(self, obj: Any) -> list:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj, group=self.control_group)
        return out

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def comm_device(self) -> torch.device:
        """Where tensors of the default group's collectives must live (the device for NCCL, else the CPU)."""
        import torch.distributed as dist

        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def setup_runtime(cfg: Config) -> Runtime:
    """The device from ``run.device`` and, when launched by ``torchrun`` (``WORLD_SIZE > 1``), the process
    group (NCCL on CUDA devices, gloo on the CPU) plus a gloo group for control messages."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want = cfg.run.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"run.device={cfg.run.device!r} but no CUDA device is available")
    device = torch.device(want)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count() if world > 1 else
                              torch.cuda.current_device())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    control = None
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if dist.get_backend() != "gloo":
            control = dist.new_group(backend="gloo")
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    cuda = device.type == "cuda"
    cl = {"auto": cuda, "on": True, "off": False}[cfg.run.channels_last]
    return Runtime(device, rank, world, amp=bool(cfg.run.amp and cuda), channels_last=cl, control_group=control)


def shutdown_distributed(clean: bool = True) -> None:
    """Destroy the process group, if any. ``clean``: every rank got here normally, so they first meet at a
    barrier and no rank tears the group down while another still talks to it (seen without it: a rank of
    the 2-process gloo test aborting with "terminate called without an active exception"). After an error
    the barrier is skipped: the other rank may never arrive."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def teardown_runtime(rt: Runtime, clean: bool = True) -> None:
    if rt.distributed:
        shutdown_distributed(clean)


@contextlib.contextmanager
def runtime_session(cfg: Config):
    """``with runtime_session(cfg) as rt:`` sets up the device and process group, and tears the group down
    on leaving: with a barrier when the block finished, without one after an error."""
    rt = setup_runtime(cfg)
    clean = False
    try:
        yield rt
        clean = True
    finally:
        teardown_runtime(rt, clean)


def autocast(rt: Runtime):
    """bfloat16 autocast (float16 where bfloat16 is unsupported) for ``--amp`` on CUDA; else a no-op."""
    if rt.amp and rt.device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


__all__ = ["Runtime", "autocast", "runtime_session", "setup_runtime", "shutdown_distributed", "teardown_runtime"]
