"""The training loop: :func:`train_model` restores, runs :func:`train_one_epoch` and :func:`evaluate` per
epoch, saves, and finishes; read it top to bottom.

Batches come from a ``torch.utils.data.DataLoader`` (:class:`.pipeline.TrainLoader`): loaded, cropped and
mixed as uint8 where they are loaded (worker processes with ``data.workers > 0``), pinned, and moved to the
device without blocking. Options: ``run.compile`` compiles the model (``torch.compile``); ``train.ema_decay``
keeps a model EMA (:class:`.ema.ModelEma`), evaluated beside the model (``ema_val_acc``, ``ema_test_acc``).

No host-device sync per step: the loss and accuracy sums stay on the device (:class:`TrainMeter`) and are
read at the progress bar's interval (only while a bar is shown) and once per epoch, at the marked epoch-end
sync point (:func:`end_of_epoch`); the Ctrl-C check is a host-side flag (agreed over a gloo group under
DDP); the EMA's decay is computed on the host. On the CPU every draw is deterministic (see :mod:`.streams`),
so a run interrupted anywhere, even mid-epoch, resumes to the same final weights as an uninterrupted one.

Distributed (``torchrun``): each rank draws a disjoint share of every epoch's order and mixes its own
batch (its own generators); ``train.batch_size`` is the global batch (split over the ranks); gradients are
averaged by DDP; losses and accuracies are summed over ranks; rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from .. import data as data_mod
from ..config import Config
from ..errors import ConfigError
from ..mixing.batch import MixedBatch
from ..ops import check_errors
from .checkpoint import CheckpointSaver, TrainState
from .ema import ModelEma
from .evaluate import evaluate
from .interrupt import Interrupted, StopCheck, StopFlag
from .log import Log
from .methods import Method
from .model import NormalizedModel, build_model, image_logits, init_weights
from .optim import build_optimizer, build_scaler, set_lr
from .pipeline import TrainLoader
from .runtime import Runtime, autocast, setup_runtime
from .streams import EpochStreams, derive_seed

#: steps between progress-bar updates (each reads the sums back from the device, only while a bar is shown)
LOG_EVERY = 10


class TrainMeter:
    """Sums of one epoch's training loss and accuracy, accumulated on the device.

    ``sums (2,)`` float64 on the device: ``loss * n`` and correct predictions (the image head's arg-max
    against the label with the larger weight); ``n`` is counted on the host. Nothing is read back until
    :meth:`read` (progress bar) or :meth:`totals` (epoch end).
    """

    def __init__(self, device: torch.device, state: Tensor | None = None):
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)
        self.n = 0
        if state is not None:  # (3,) from a mid-epoch checkpoint: loss * n, correct, n
            self.sums.copy_(state[:2])
            self.n = int(state[2])

    def update(self, loss: Tensor, outputs, batch: MixedBatch) -> None:
        n = batch.images.shape[0]
        dominant = torch.where(batch.lam >= 0.5, batch.target_a, batch.target_b)
        correct = (image_logits(outputs).argmax(1) == dominant).sum()
        self.sums += torch.stack([loss.detach().double() * n, correct.double()])
        self.n += n

    def totals(self) -> Tensor:
        """``(3,)`` float64 on the CPU: ``loss * n``, correct, ``n`` (a host read)."""
        return torch.cat([self.sums.cpu(), torch.tensor([float(self.n)], dtype=torch.float64)])

    def read(self) -> dict:
        t = self.totals()
        n = max(float(t[2]), 1.0)
        return {"loss": float(t[0]) / n, "acc": float(t[1]) / n}


def forward(model: nn.Module, images: Tensor):
    """``model(images)``; under float16 autocast the outputs come back as float32, so that the loss keeps
    its saved gradient in float32 (GradScaler's 65536 is not a float16)."""
    outputs = model(images)
    if outputs[0].dtype == torch.float16:
        outputs = tuple(o.float() for o in outputs)
    return outputs


def backward_step(loss: Tensor, optimizer: torch.optim.Optimizer, scaler) -> None:
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def train_one_epoch(model: nn.Module, batches: Iterable[MixedBatch], loss_fn: Callable,
                    optimizer: torch.optim.Optimizer, *, schedule: Callable[[int], float], meter: TrainMeter,
                    rt: Runtime, scaler=None, first_step: int = 0, stop: StopCheck | None = None, bar=None,
                    after_step: Callable[[int], None] | None = None) -> int | None:
    """Train on the remaining steps of one epoch (``batches`` yields their mixed batches on the device, from step
    ``first_step`` on; sized).

    Each step: set the step's learning rate (``schedule(step)``), forward under autocast, the loss chosen once
    (``loss_fn(outputs, batch)``), backward and step, ``after_step(step)`` (the EMA update), and add the loss and
    accuracy to ``meter`` on the device. ``stop`` is checked after every step but the last.

    Returns None when the epoch finished, else the step to resume at (``stop`` asked to stop).
    """
    model.train()
    last = first_step + len(batches) - 1
    for step, batch in enumerate(batches, start=first_step):
        set_lr(optimizer, schedule(step))
        with autocast(rt):
            outputs = forward(model, batch.images)
            loss = loss_fn(outputs, batch)
        backward_step(loss, optimizer, scaler)
        if after_step is not None:
            after_step(step)
        meter.update(loss, outputs, batch)
        if bar is not None:
            bar.update(1)
            if not bar.disable and (step % LOG_EVERY == 0 or step == last):  # reads the device: shown bars only
                m = meter.read()
                bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['acc']:.3f}", refresh=False)
        if stop is not None:
            stop.step()
            if step < last and stop():
                return step + 1
    return None


def end_of_epoch(meter: TrainMeter, rt: Runtime) -> dict:
    """The loop's epoch-end sync point, the one place a training step's results are read from the device:
    the epoch's sums over every rank, as ``{"train_loss", "train_acc"}``."""
    # a data error this epoch's ops recorded on the device (deferred so that no step waits for it) is raised
    # here, naming the op and the argument
    check_errors(rt.device)
    totals = rt.all_reduce_sum(meter.totals())
    n = max(float(totals[2]), 1.0)
    return {"train_loss": float(totals[0]) / n, "train_acc": float(totals[1]) / n}


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

    The result: ``method, seed, epochs, test_acc, test_loss, val_acc, history (per epoch), train_seconds,
    world``, and with ``train.ema_decay`` the EMA's ``ema_test_acc`` (and ``ema_val_acc`` per epoch).
    """
    rt, log, desc = rt or setup_runtime(cfg), log or Log.silent(), desc or method
    torch.manual_seed(derive_seed(seed, "init"))
    net = build_model(cfg, ds)
    init_weights(cfg, net, log, desc)  # train.init; a resumed training then continues from its own checkpoint
    net = net.to(rt.device, memory_format=torch.channels_last if rt.channels_last else None)
    opt, scaler = build_optimizer(cfg, net), build_scaler(rt)  # train.freeze and train.lr_mult shape its groups
    t = cfg.train
    ema = ModelEma(net, t.ema_decay, warmup=t.ema_warmup) if t.ema_decay else None
    saver = CheckpointSaver(checkpoint, rt, method=method, seed=seed, cfg=cfg)
    state = (saver.restore(net, opt, scaler, ema) if resume else None) or TrainState()
    if state.complete:
        log.info(f"{desc}: already finished ({checkpoint})")
        return net, state.result
    if state.epoch or state.step:
        log.event("resume", method=method, seed=seed, epoch=state.epoch, step=state.step, checkpoint=checkpoint)
        log.info(f"{desc}: resuming at epoch {state.epoch + 1}, step {state.step}")
    plan = Method(method, cfg, ds, rt, policy)
    model, stop = compile_model(plan.wrap_ddp(net), cfg), StopCheck(rt, stop_after_steps)
    epochs, spe = t.epochs, plan.steps_per_epoch
    t0 = time.perf_counter() - (state.history[-1]["elapsed_s"] if state.history else 0.0)

    with TrainLoader(plan, seed) as loader, StopFlag(), log.progress(
            total=plan.total_steps, desc=desc, unit="step", initial=state.epoch * spe + state.step) as bar:
        for epoch in range(state.epoch, epochs):
            streams = EpochStreams(seed, epoch, rt.rank)
            meter = _restore_mid(state, saver, streams, rt)
            batches = loader.epoch(epoch, plan.index_batches(streams, epoch), state.step)
            schedule = plan.schedule(epoch)
            ema_step = None if ema is None else (lambda step, e=epoch: ema.update(net, e * spe + step + 1))
            resume_at = train_one_epoch(model, batches, plan.loss, opt, schedule=schedule, meter=meter, rt=rt,
                                        scaler=scaler, first_step=state.step, stop=stop, bar=bar, after_step=ema_step)
            if resume_at is not None:  # stopped mid-epoch: every rank's streams and partial sums, saved by rank 0
                mids = rt.gather_objects({**streams.state(), "sums": meter.totals()})
                saver.save(net, opt, scaler, TrainState(epoch, resume_at, state.history, {"ranks": mids}), ema)
                raise _interrupted(log, method, seed, epoch, resume_at, checkpoint)

            rec = {"epoch": epoch + 1, "lr": schedule(spe - 1), **end_of_epoch(meter, rt)}
            rec.update(_validate(net, ds, plan, epoch, ema), elapsed_s=round(time.perf_counter() - t0, 3))
            state.history.append(rec)
            log.event("epoch", method=method, seed=seed, **rec)
            bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{rec['train_loss']:.3f}",
                            acc=f"{rec['train_acc']:.3f}", val=f"{rec['val_acc']:.3f}")
            state.epoch, state.step = epoch + 1, 0
            if epoch + 1 < epochs:
                saver.save(net, opt, scaler, state, ema)
                if stop():
                    raise _interrupted(log, method, seed, epoch + 1, 0, checkpoint)

    test = evaluate(net, ds.test, plan.eval_batch_size, rt, cfg.data.workers)
    if state.history:
        state.history[-1]["test_acc"] = test["acc"]
    result = {"method": method, "seed": seed, "epochs": epochs, "test_acc": test["acc"], "test_loss": test["loss"],
              "val_acc": state.history[-1]["val_acc"] if state.history else None,
              "train_seconds": round(time.perf_counter() - t0, 3), "history": state.history, "world": rt.world}
    if ema is not None:
        result["ema_test_acc"] = evaluate(ema.module, ds.test, plan.eval_batch_size, rt, cfg.data.workers)["acc"]
    saver.save(net, opt, scaler, TrainState(epochs, 0, state.history, complete=True, result=result), ema)
    log.event("trained", **{k: v for k, v in result.items() if k != "history"})
    return net, result


def compile_model(model: nn.Module, cfg: Config) -> nn.Module:
    """``torch.compile(model, backend=run.compile)`` (timm's ``--torchcompile``), or ``model`` for ``off``. The
    ops are compile-clean; the loss and the optimizer step stay eager."""
    backend = cfg.run.compile
    if backend == "off":
        return model
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise ConfigError(f"run.compile: unknown torch.compile backend {backend!r}; choose 'off' or one of "
                          f"{', '.join(sorted(known))}")
    return torch.compile(model, backend=backend)


def _restore_mid(state: TrainState, saver: CheckpointSaver, streams: EpochStreams, rt: Runtime) -> TrainMeter:
    """The epoch's meter; for the epoch a mid-epoch checkpoint interrupted, its saved global generator and partial
    sums (``state.step`` is then the first step to take)."""
    if state.mid is None:
        return TrainMeter(rt.device)
    mid = saver.mid_of_rank(state.mid)
    streams.restore(mid)
    state.mid = None
    return TrainMeter(rt.device, mid["sums"])


def _validate(net: nn.Module, ds: data_mod.Dataset, plan: Method, epoch: int, ema: ModelEma | None = None) -> dict:
    """Validation top-1 and loss after an epoch (and the EMA's top-1); test top-1 too every ``train.eval_every``
    epochs."""
    cfg, rt = plan.cfg, plan.rt
    val = evaluate(net, ds.val, plan.eval_batch_size, rt, cfg.data.workers)
    rec = {"val_acc": val["acc"], "val_loss": val["loss"]}
    if ema is not None:
        rec["ema_val_acc"] = evaluate(ema.module, ds.val, plan.eval_batch_size, rt, cfg.data.workers)["acc"]
    every, epochs = cfg.train.eval_every, cfg.train.epochs
    if every and (epoch + 1) % every == 0 and epoch + 1 < epochs:
        rec["test_acc"] = evaluate(net, ds.test, plan.eval_batch_size, rt, cfg.data.workers)["acc"]
    return rec


def _interrupted(log: Log, method: str, seed: int, epoch: int, step: int, checkpoint: str | None) -> Interrupted:
    log.event("interrupted", method=method, seed=seed, epoch=epoch, step=step, checkpoint=checkpoint)
    return Interrupted(checkpoint)


__all__ = ["TrainMeter", "compile_model", "end_of_epoch", "train_model", "train_one_epoch"]
