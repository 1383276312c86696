"""Training one model with one method: the loop behind ``patchmix train`` and the phases of ``patchmix run``.

Methods (paper Table 1): ``base`` (no mixing), ``mixup``, ``cutmix``, ``random`` (Random PatchMix with the
fused image + patch loss ``L_T``, the paper's phase one) and ``guided`` (phase four: each batch holds
original, random-mixed and policy-guided samples, trained with ``L_O``). Every method goes through
:class:`patchmix.PatchMixLoss`; all but ``random`` use its image term only.

Reproducibility: all random draws of an epoch (sample order, augmentation, mixing, and torch's global
generator) come from generators seeded by ``(seed, epoch, rank)``, drawn on the CPU, so a run is
deterministic on the CPU for a given seed, and a resumed run continues the identical sequence. A checkpoint
is written (atomically) after every epoch; Ctrl-C finishes the current step, writes a mid-epoch checkpoint
with the generators' states and exits, and ``resume=True`` continues from either kind of checkpoint to the
same final weights as an uninterrupted run.

Distributed (``torchrun``): each rank draws a disjoint share of every epoch's order and mixes its own
batch (its own generators); ``train.batch_size`` is the global batch (split over the ranks); gradients are
averaged by DDP; losses and accuracies are summed over ranks; rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import data as data_mod
from .augment import CutMix, MixedBatch, Mixup, RandomPatchMix
from .config import Config, ConfigError

CHECKPOINT_FORMAT = "patchmix-train-v1"


# --------------------------------------------------------------------------------------------------
# runtime: device, distributed context, logging
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Runtime:
    """Where this process runs: the device and, under ``torchrun``, its rank in the process group."""

    device: torch.device
    rank: int = 0
    world: int = 1
    amp: bool = False
    channels_last: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        if self.distributed:
            import torch.distributed as dist

            t = t.to(self._comm_device())
            dist.all_reduce(t)
        return t.cpu()

    def broadcast_object(self, obj: Any) -> Any:
        """``obj`` from rank 0 on every rank (a policy, a flag, a result)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def _comm_device(self) -> torch.device:
        import torch.distributed as dist

        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def setup_runtime(cfg: Config) -> Runtime:
    """The device from ``run.device`` and, when launched by ``torchrun`` (``WORLD_SIZE > 1``), the process
    group (NCCL on CUDA devices, gloo on the CPU)."""
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
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    cuda = device.type == "cuda"
    cl = {"auto": cuda, "on": True, "off": False}[cfg.run.channels_last]
    return Runtime(device, rank, world, amp=bool(cfg.run.amp and cuda), channels_last=cl)


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


class Log:
    """JSON-lines event log (``log.jsonl``, rank 0 only) plus human messages (suppressed by ``quiet``)."""

    def __init__(self, path: str | None = None, quiet: bool = False, enabled: bool = True):
        self.quiet = quiet
        self.enabled = enabled
        self._file = None
        if path and enabled:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._file = open(path, "a", buffering=1)

    def event(self, kind: str, **fields) -> None:
        if self._file is not None:
            rec = {"time": round(time.time(), 3), "event": kind, **fields}
            self._file.write(json.dumps(rec, default=_json_default) + "\n")

    def info(self, msg: str) -> None:
        if self.enabled and not self.quiet:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)

    def progress(self, **kw):
        from tqdm import tqdm

        return tqdm(disable=True if (self.quiet or not self.enabled) else None,  # None: off when not a terminal
                    dynamic_ncols=True, leave=False, file=sys.stderr, **kw)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # also when interrupted or failing: the JSON-lines log is flushed and closed


def _json_default(o):
    if isinstance(o, Tensor):
        return o.tolist()
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return str(o)


# --------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------


class NormalizedModel(nn.Module):
    """``model((x - mean) / std)`` for inputs in ``[0, 1]``: attacks (FGSM) and mixing work in pixel units.

    ``forward(x (N, C, H, W)) -> (image_logits (N, K), patch_logits (N, K, P, P))``.
    """

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def grid_size(self) -> int:
        return self.model.grid_size

    def forward(self, x: Tensor):
        return self.model((x - self.mean) / self.std)


def model_name(cfg: Config, ds: data_mod.Dataset) -> str:
    name = cfg.model.name
    if name != "auto":
        return name
    if ds.name == "digits" or ds.image_size <= 16:
        return "small_cnn"
    return "resnet32" if ds.image_size <= 32 else "resnet50"


def build_model(cfg: Config, ds: data_mod.Dataset) -> NormalizedModel:
    """The configured patch-head model for ``ds``, wrapped with the dataset's normalisation."""
    from .models import create_model

    kw = {}
    name = model_name(cfg, ds)
    if cfg.model.width is not None and name.replace("-", "_").lower() == "small_cnn":
        kw["width"] = cfg.model.width
    try:
        model = create_model(name, ds.num_classes, grid_size=cfg.model.grid_size, in_channels=ds.channels,
                             separate_patch_classifier=cfg.model.separate_patch_classifier, **kw)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return NormalizedModel(model, ds.mean, ds.std)


# --------------------------------------------------------------------------------------------------
# methods: mixer + loss
# --------------------------------------------------------------------------------------------------


def derive_seed(*parts) -> int:
    """A 63-bit seed from any parts (stable across runs and platforms)."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def make_loss(method: str, cfg: Config) -> nn.Module:
    """``L_T`` (image + patch terms) for ``random``; ``L_O`` (image term only) for the other methods."""
    from .losses import PatchMixLoss

    t = cfg.train
    if method == "random":
        return PatchMixLoss(image_weight=t.image_weight, patch_weight=t.patch_weight,
                            label_smoothing=t.label_smoothing)
    return PatchMixLoss(image_weight=1.0, patch_weight=0.0, label_smoothing=t.label_smoothing)


def make_mixer(method: str, cfg: Config, ds: data_mod.Dataset, generator: torch.Generator,
               policy=None, device=None) -> Callable[[Tensor, Tensor], MixedBatch]:
    """``mix(x float (B, C, H, W) in [0, 1], y (B,)) -> MixedBatch`` for one method, drawing from ``generator``."""
    t, P = cfg.train, cfg.model.grid_size
    if method == "base":
        return lambda x, y: MixedBatch.unmixed(x, y, P)
    if method == "mixup":
        return Mixup(t.alpha, generator=generator)
    if method == "cutmix":
        return CutMix(t.alpha, generator=generator)
    if method == "random":
        return RandomPatchMix(P, t.alpha, t.mix_prob, generator=generator)
    if method == "guided":
        if policy is None:
            raise ConfigError("method 'guided' needs a policy (run `patchmix search` first, then pass --policy)")
        return GuidedMixer(cfg, ds, policy, generator, device)
    raise ConfigError(f"unknown method {method!r}")


class GuidedMixer:
    """Phase four's batch: original + Random PatchMix + guided samples, as one :class:`MixedBatch`.

    A batch of ``B`` samples holds ``train.guided_fractions`` (original, random, guided) shares. The first two
    parts are the ``n_orig + n_random`` images loaded from the epoch's order (:meth:`plain`); the guided part
    pairs images of the policy's class pairs drawn from the whole training set by
    :class:`patchmix.guided.GuidedPatchMix` and composed with the pair's mask. Every method thus takes the
    same number of steps of the same batch size (same budget); an epoch of ``guided`` shows each training image
    as an original or random-mixed sample with probability ``(n_orig + n_random) / B``.
    """

    def __init__(self, cfg: Config, ds: data_mod.Dataset, policy, generator: torch.Generator, device=None):
        from .guided import GuidedPatchMix

        P = cfg.model.grid_size
        if policy.grid_size != P:
            raise ConfigError(f"the policy has grid size {policy.grid_size}, the model {P}")
        self.grid_size = P
        self.fractions = cfg.train.guided_fractions
        self.random = RandomPatchMix(P, cfg.train.alpha, cfg.train.mix_prob, generator=generator)
        self.guided = GuidedPatchMix(policy, ds.train.labels, generator=generator)

    def counts(self, batch: int) -> tuple[int, int, int]:
        """``(n_orig, n_random, n_guided)`` for a batch of ``batch`` samples (at least one plain sample)."""
        f = [float(v) for v in self.fractions]
        total = sum(f)
        n_orig = int(round(batch * f[0] / total))
        n_rand = int(round(batch * f[1] / total))
        n_orig = min(n_orig, batch)
        n_rand = min(n_rand, batch - n_orig)
        if n_orig + n_rand == 0:
            n_orig = 1 if f[0] > 0 or f[1] == 0 else 0
            n_rand = 1 - n_orig
        return n_orig, n_rand, batch - n_orig - n_rand

    def plain(self, batch: int) -> int:
        """How many images a step loads from the epoch's order."""
        n_orig, n_rand, _ = self.counts(batch)
        return n_orig + n_rand

    def __call__(self, x: Tensor, y: Tensor, batch: int,
                 load: Callable[[Tensor], tuple[Tensor, Tensor]]) -> MixedBatch:
        n_orig, n_rand, n_guid = self.counts(batch)
        parts = []
        if n_orig:
            parts.append(MixedBatch.unmixed(x[:n_orig], y[:n_orig], self.grid_size))
        if n_rand:
            parts.append(self.random(x[n_orig:n_orig + n_rand], y[n_orig:n_orig + n_rand]))
        if n_guid:
            slot, ia, ib = self.guided.sample(n_guid)
            images, labels = load(torch.cat([ia, ib]))
            idx = torch.arange(n_guid, device=images.device)
            parts.append(self.guided.compose(images, slot, idx, idx + n_guid, labels=labels))
        from .guided import concat_batches

        return concat_batches(parts)


# --------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------


def _image_logits(out) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def evaluate(net: nn.Module, split: data_mod.Split, batch_size: int, rt: Runtime, workers: int = 0) -> dict:
    """Top-1 accuracy and mean cross-entropy of the image head on ``split`` (sharded over ranks, summed)."""
    was_training = net.training
    net.eval()
    order = torch.arange(len(split))[rt.rank::rt.world]
    sums = torch.zeros(3, dtype=torch.float64)
    for x, y in data_mod.batches(split, batch_size, order, workers=workers):
        x = data_mod.to_float(x, rt.device, rt.channels_last)
        y = y.to(rt.device)
        with _autocast(rt):
            logits = _image_logits(net(x)).float()
        sums[0] += float((logits.argmax(1) == y).sum())
        sums[1] += float(F.cross_entropy(logits, y, reduction="sum"))
        sums[2] += y.numel()
    sums = rt.all_reduce_sum(sums)
    net.train(was_training)
    n = max(float(sums[2]), 1.0)
    return {"acc": float(sums[0]) / n, "loss": float(sums[1]) / n, "n": int(sums[2])}


def fgsm_evaluate(net: nn.Module, split: data_mod.Split, epsilons, batch_size: int, rt: Runtime,
                  workers: int = 0) -> dict[str, float]:
    """Top-1 accuracy under the FGSM white-box attack (paper Table 4): ``x + eps * sign(grad_x CE)``,
    clipped to ``[0, 1]``, per epsilon (pixel units); ``"0"`` is the clean accuracy."""
    was_training = net.training
    net.eval()
    eps = [float(e) for e in epsilons]
    order = torch.arange(len(split))[rt.rank::rt.world]
    sums = torch.zeros(len(eps) + 2, dtype=torch.float64)
    for x, y in data_mod.batches(split, batch_size, order, workers=workers):
        x = data_mod.to_float(x, rt.device, rt.channels_last).requires_grad_(True)
        y = y.to(rt.device)
        logits = _image_logits(net(x)).float()
        grad, = torch.autograd.grad(F.cross_entropy(logits, y), x)
        with torch.no_grad():
            sums[0] += float((logits.argmax(1) == y).sum())
            for i, e in enumerate(eps):
                adv = (x + e * grad.sign()).clamp_(0.0, 1.0)
                sums[i + 1] += float((_image_logits(net(adv)).argmax(1) == y).sum())
            sums[-1] += y.numel()
    sums = rt.all_reduce_sum(sums)
    net.train(was_training)
    n = max(float(sums[-1]), 1.0)
    out = {"0": float(sums[0]) / n}
    out.update({f"{e:g}": float(sums[i + 1]) / n for i, e in enumerate(eps)})
    return out


def _autocast(rt: Runtime):
    if rt.amp and rt.device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------------


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` through a temporary file and a rename: a kill never leaves a torn checkpoint."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    """A training checkpoint written by :func:`train_model` (checked)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a patchmix training checkpoint")
    return ckpt


def model_from_checkpoint(path: str, ds: data_mod.Dataset | None = None) -> tuple[NormalizedModel, Config, dict]:
    """Rebuild the trained model of a checkpoint (with its config); loads the dataset when not given."""
    ckpt = load_checkpoint(path)
    from .config import Config as _C

    cfg = _C().override(ckpt["config"])
    if ds is None:
        ds = data_mod.from_config(cfg)
    net = build_model(cfg, ds)
    net.load_state_dict(ckpt["model"])
    return net, cfg, ckpt


class _StopFlag:
    """First Ctrl-C: finish the current step, checkpoint, stop. Second Ctrl-C: stop at once.

    The request is process-wide and sticky (a class attribute): a Ctrl-C that lands after one training's
    last step check (during its final evaluation, say) stops the next training at its first step instead
    of being forgotten, and the workflow checks it between trainings (``stop_requested``).
    """

    requested = False

    def __init__(self):
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if _StopFlag.requested:
            raise KeyboardInterrupt
        _StopFlag.requested = True
        try:
            sys.stderr.write("\n[patchmix] interrupt: finishing this step and writing a checkpoint "
                             "(Ctrl-C again to stop at once)\n")
        except Exception:
            pass

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


def stop_requested() -> bool:
    """Whether Ctrl-C asked this process to stop (see ``_StopFlag``)."""
    return _StopFlag.requested


def reset_stop_request() -> None:
    """Forget an earlier Ctrl-C (each CLI command starts with none)."""
    _StopFlag.requested = False


class Interrupted(RuntimeError):
    """Training stopped on request; a resumable checkpoint was written to ``path``."""

    def __init__(self, path: str | None):
        super().__init__(f"interrupted; checkpoint written to {path}; continue with --resume")
        self.path = path


# --------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------


def lr_at(cfg: Config, step: int, total: int, steps_per_epoch: int) -> float:
    t = cfg.train
    warm = t.warmup_epochs * steps_per_epoch
    if warm and step < warm:
        return t.lr * (step + 1) / warm
    if t.schedule == "constant":
        return t.lr
    if t.schedule == "step":
        frac = step / max(total, 1)
        return t.lr * (0.1 ** ((frac >= 0.5) + (frac >= 0.75)))
    progress = (step - warm) / max(total - warm, 1)
    return t.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_model(cfg: Config, ds: data_mod.Dataset, method: str, seed: int, *, rt: Runtime | None = None,
                checkpoint: str | None = None, resume: bool = False, policy=None, log: Log | None = None,
                desc: str | None = None, stop_after_steps: int | None = None) -> tuple[NormalizedModel, dict]:
    """Train one model with ``method`` and ``seed``; returns the model and its result record.

    Args:
        checkpoint: file written after every epoch (rank 0), and on Ctrl-C mid-epoch.
        resume: continue from ``checkpoint`` when it exists (a finished one returns its result at once).
        policy: the :class:`patchmix.search.Policy` for ``guided`` (broadcast from rank 0 by the caller).
        stop_after_steps: simulate a kill after this many optimizer steps (for tests): checkpoint, then
            raise :class:`Interrupted`.

    The result: ``method, seed, epochs, test_acc, val_acc, history (per epoch), train_seconds``.
    """
    rt = rt or setup_runtime(cfg)
    log = log or Log(quiet=True, enabled=False)
    t = cfg.train
    torch.manual_seed(derive_seed(seed, "init"))
    net = build_model(cfg, ds).to(rt.device)
    if rt.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                          nesterov=t.nesterov and t.momentum > 0)
    scaler = torch.amp.GradScaler("cuda", enabled=rt.amp and not torch.cuda.is_bf16_supported()) \
        if rt.device.type == "cuda" else None

    start_epoch, start_step, history, mid = 0, 0, [], None
    if resume and checkpoint:
        rt.barrier()  # rank 0 writes checkpoints: every rank reads only once the last write is complete
    if resume and checkpoint and os.path.isfile(checkpoint):
        ckpt = load_checkpoint(checkpoint)
        if ckpt["method"] != method or ckpt["seed"] != seed:
            raise ValueError(f"{checkpoint} holds method {ckpt['method']} seed {ckpt['seed']}, "
                             f"not {method} seed {seed}")
        net.load_state_dict(ckpt["model"])
        if ckpt.get("complete"):
            log.info(f"{desc or method}: already finished ({checkpoint})")
            return net, ckpt["result"]
        opt.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, start_step, history = ckpt["epoch"], ckpt["step"], ckpt["history"]
        mid = ckpt.get("mid")
        log.event("resume", method=method, seed=seed, epoch=start_epoch, step=start_step, checkpoint=checkpoint)
        log.info(f"{desc or method}: resuming at epoch {start_epoch + 1}, step {start_step}")

    train_model_ddp = net
    if rt.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # only "random" trains the patch head (L_T); the other methods leave its weights without gradients
        train_model_ddp = DDP(net, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                              find_unused_parameters=method != "random")
    loss_fn = make_loss(method, cfg)
    n_train = len(ds.train)
    per_rank = -(-n_train // rt.world)
    bs = max(1, t.batch_size // rt.world)
    steps_per_epoch = max(1, per_rank // bs) if per_rank >= bs else 1
    total_steps = t.epochs * steps_per_epoch
    aug_mode = cfg.data.augment if cfg.data.augment != "auto" else ("crop-flip" if ds.natural else "none")

    def save(epoch: int, step: int, complete: bool = False, result=None, mid_state=None):
        if not (checkpoint and rt.is_main):
            return
        atomic_save({"format": CHECKPOINT_FORMAT, "method": method, "seed": seed, "epoch": epoch, "step": step,
                     "model": net.state_dict(), "optimizer": opt.state_dict(),
                     "scaler": scaler.state_dict() if scaler is not None else None,
                     "history": history, "mid": mid_state, "complete": complete, "result": result,
                     "config": cfg.to_dict(), "world": rt.world}, checkpoint)

    bar = log.progress(total=total_steps, initial=start_epoch * steps_per_epoch + start_step, desc=desc or method,
                       unit="step")
    t0 = time.perf_counter() - (history[-1]["elapsed_s"] if history else 0.0)
    done_steps = 0
    stop = _StopFlag()
    with stop:
        for epoch in range(start_epoch, t.epochs):
            g_order = torch.Generator().manual_seed(derive_seed(seed, epoch, "order"))
            g_aug = torch.Generator().manual_seed(derive_seed(seed, epoch, rt.rank, "augment"))
            g_mix = torch.Generator().manual_seed(derive_seed(seed, epoch, rt.rank, "mix"))
            torch.manual_seed(derive_seed(seed, epoch, rt.rank, "torch"))
            sums = torch.zeros(3, dtype=torch.float64)  # loss * n, correct, n
            first = 0
            if mid is not None and epoch == start_epoch:
                if "ranks" in mid or rt.distributed:
                    ranks = mid.get("ranks", [mid])
                    if len(ranks) != rt.world:
                        raise ValueError(f"{checkpoint} was interrupted mid-epoch with {len(ranks)} process(es); "
                                         f"resume it with the same number, not {rt.world}")
                    mid = ranks[rt.rank]
                g_aug.set_state(mid["g_aug"])
                g_mix.set_state(mid["g_mix"])
                torch.set_rng_state(mid["torch"])
                sums = mid["sums"].clone()
                first = start_step
            mixer = make_mixer(method, cfg, ds, g_mix, policy, rt.device)
            load_bs = mixer.plain(bs) if isinstance(mixer, GuidedMixer) else bs
            order = data_mod.epoch_order(n_train, g_order, rt.rank, rt.world)[: steps_per_epoch * load_bs]
            train_model_ddp.train()
            it = data_mod.batches(ds.train, load_bs, order[first * load_bs:], workers=cfg.data.workers)
            for step, (x, y) in enumerate(it, start=first):
                lr = lr_at(cfg, epoch * steps_per_epoch + step, total_steps, steps_per_epoch)
                for group in opt.param_groups:
                    group["lr"] = lr
                x = data_mod.augment(data_mod.to_float(x, rt.device), aug_mode, g_aug)
                if rt.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = y.to(rt.device)
                if isinstance(mixer, GuidedMixer):
                    mb = mixer(x, y, bs, lambda idx, g=g_aug: _load_aug(ds.train, idx, rt, aug_mode, g))
                else:
                    mb = mixer(x, y)
                with _autocast(rt):
                    out = train_model_ddp(mb.images)
                    if out[0].dtype == torch.float16:  # float16 autocast: keep the loss's saved gradient in float32
                        out = tuple(o.float() for o in out)
                    # L_O methods: the image term only (the patch logits would be weighted by 0)
                    loss = loss_fn(out if method == "random" else out[0], mb)
                opt.zero_grad(set_to_none=True)
                if scaler is not None and scaler.is_enabled():
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
                with torch.no_grad():
                    n = mb.images.shape[0]
                    dominant = torch.where(mb.lam >= 0.5, mb.target_a, mb.target_b)
                    sums[0] += float(loss.detach()) * n
                    sums[1] += float((_image_logits(out).argmax(1) == dominant).sum())
                    sums[2] += n
                done_steps += 1
                bar.update(1)
                if bar.n % 5 == 0 or step == steps_per_epoch - 1:
                    bar.set_postfix(epoch=f"{epoch + 1}/{t.epochs}", loss=f"{sums[0] / max(sums[2], 1):.3f}",
                                    acc=f"{sums[1] / max(sums[2], 1):.3f}", refresh=False)
                want_stop = stop.requested or (stop_after_steps is not None and done_steps >= stop_after_steps)
                if rt.distributed:
                    want_stop = bool(rt.all_reduce_sum(torch.tensor([float(want_stop)]))[0] > 0)
                if want_stop and step + 1 < steps_per_epoch:
                    state = {"g_aug": g_aug.get_state(), "g_mix": g_mix.get_state(),
                             "torch": torch.get_rng_state(), "sums": sums.clone()}
                    if rt.distributed:  # every rank's own streams and partial sums, saved by rank 0
                        import torch.distributed as dist

                        states = [None] * rt.world
                        dist.all_gather_object(states, state)
                        state = {"ranks": states}
                    save(epoch, step + 1, mid_state=state)
                    bar.close()
                    log.event("interrupted", method=method, seed=seed, epoch=epoch, step=step + 1,
                              checkpoint=checkpoint)
                    raise Interrupted(checkpoint)
            mid = None
            tot = rt.all_reduce_sum(sums.clone())
            val = evaluate(net, ds.val, max(bs, 256), rt, cfg.data.workers)
            rec = {"epoch": epoch + 1, "lr": lr, "train_loss": float(tot[0] / tot[2]), "train_acc": float(tot[1] / tot[2]),
                   "val_acc": val["acc"], "val_loss": val["loss"], "elapsed_s": round(time.perf_counter() - t0, 3)}
            if t.eval_every and (epoch + 1) % t.eval_every == 0 and epoch + 1 < t.epochs:
                rec["test_acc"] = evaluate(net, ds.test, max(bs, 256), rt, cfg.data.workers)["acc"]
            history.append(rec)
            log.event("epoch", method=method, seed=seed, **rec)
            bar.set_postfix(epoch=f"{epoch + 1}/{t.epochs}", loss=f"{rec['train_loss']:.3f}",
                            acc=f"{rec['train_acc']:.3f}", val=f"{rec['val_acc']:.3f}")
            want_stop = stop.requested or (stop_after_steps is not None and done_steps >= stop_after_steps)
            if rt.distributed:
                want_stop = bool(rt.all_reduce_sum(torch.tensor([float(want_stop)]))[0] > 0)
            if epoch + 1 < t.epochs:
                save(epoch + 1, 0)
                if want_stop:
                    bar.close()
                    log.event("interrupted", method=method, seed=seed, epoch=epoch + 1, step=0, checkpoint=checkpoint)
                    raise Interrupted(checkpoint)
    bar.close()
    test = evaluate(net, ds.test, max(bs, 256), rt, cfg.data.workers)
    if history:
        history[-1]["test_acc"] = test["acc"]
    result = {"method": method, "seed": seed, "epochs": t.epochs, "test_acc": test["acc"], "test_loss": test["loss"],
              "val_acc": history[-1]["val_acc"] if history else None,
              "train_seconds": round(time.perf_counter() - t0, 3), "history": history, "world": rt.world}
    save(t.epochs, 0, complete=True, result=result)
    log.event("trained", **{k: v for k, v in result.items() if k != "history"})
    return net, result


def _load_aug(split: data_mod.Split, idx: Tensor, rt: Runtime, aug_mode: str, g: torch.Generator):
    """Images ``idx`` of ``split`` as augmented floats on the device (guided samples' sources)."""
    x, y = split.get(idx)
    x = data_mod.augment(data_mod.to_float(x, rt.device), aug_mode, g)
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(rt.device)
