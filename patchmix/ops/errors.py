"""Bad data found on a CUDA device, reported without a host sync.

On the CPU every op checks its index, label and weight tensors before it reads memory through them and
raises ``ValueError`` at once (a host check costs nothing there). On a CUDA device a host check is a
device-to-host read, which stalls the CPU until the GPU has caught up; a training step would make one per
op call. So the CUDA kernels check the values themselves, as they read them:

* every read through a checked value is clamped into range, so a bad index or label is never read out of
  bounds (the affected output rows hold unspecified values);
* a bad value sets a bit in this device's *status word*, an ``int32`` tensor on the device, with an
  atomic OR; each bit names one ``(op, argument)`` (``CODES`` below);
* :func:`check_errors` reads the status word with one host read, resets it and raises
  ``ValueError("<op>: <argument> holds a value out of range (expected ...; detected on the device)")``.
  Call it where the program synchronises anyway (the training loop calls it at the end of each epoch).

Between explicit checks an error still surfaces, without a sync: every ``SNAPSHOT_EVERY``-th op call on a
device queues a non-blocking copy of the status word into pinned host memory and records an event; the
first op call after that event has completed reads the copy (host memory, no sync) and raises. Set
``PATCHMIX_SYNC_CHECKS=1`` to check after every op call instead (one sync per call: for debugging).
While a CUDA graph is being captured nothing is copied or read; the captured kernels still set the status
word on every replay, and :func:`check_errors` after a replay reports it.
"""

from __future__ import annotations

import os
import threading

import torch
from torch import Tensor

# (op, argument, what the argument must satisfy); bit k of the status word stands for CODES[k]. The order is
# fixed so that every process agrees on the codes (they become kernel constants).
CODES: tuple[tuple[str, str, str], ...] = (
    ("grid_mix", "index_a", "0 <= index_a < B, the batch size of x"),
    ("grid_mix", "index_b", "0 <= index_b < B, the batch size of x"),
    ("patchmix_cross_entropy", "target_a", "0 <= target_a < K, the number of classes"),
    ("patchmix_cross_entropy", "target_b", "0 <= target_b < K, the number of classes"),
    ("patchmix_cross_entropy", "lam", "0 <= lam <= 1"),
    ("patchmix_cross_entropy", "term_weights", "finite values >= 0"),
    ("population_fitness", "pairs", "-1 <= pairs < Q, the pairs of table"),
    ("population_fitness", "draws", "0 <= draws < V, the validation images of logits"),
    ("population_fitness", "pair_classes", "0 <= pair_classes < K, the classes of logits"),
)

SNAPSHOT_EVERY = 16
SYNC_CHECKS = os.environ.get("PATCHMIX_SYNC_CHECKS", "0") == "1"


def code(op: str, argument: str) -> int:
    """The status bit of ``(op, argument)``."""
    for k, (o, a, _) in enumerate(CODES):
        if (o, a) == (op, argument):
            return 1 << k
    raise KeyError(f"no error code for {op}.{argument}")


def message(value: int) -> str:
    """The ``ValueError`` text for a status word (every argument whose bit is set)."""
    found = [f"{op}: {arg} holds a value out of range (expected {what}; detected on the device)"
             for k, (op, arg, what) in enumerate(CODES) if value >> k & 1]
    return "; ".join(found) if found else f"unknown device status {value:#x}"


def persistent_zeros(device: torch.device) -> Tensor:
    """A zeroed ``int32`` tensor ``(1,)`` that lives as long as the process (a status word, a kernel's counter),
    allocated outside any memory pool a CUDA graph is being recorded into. ``torch.compile(mode=
    "reduce-overhead")`` runs its warm-up with the calling thread's allocations routed to its graph pool, then
    rejects a live tensor there that it does not own ("Detected 1 tensor(s) in the cudagraph pool not tracked as
    outputs", seen on an H200). So on CUDA the tensor is made by a short-lived helper thread, whose allocations
    no pool claims, and the current stream waits for its zero fill (an event, no host sync). During a capture
    it is made in place (the capture then owns it; warm up before capturing, as ``torch.cuda.graph`` asks)."""
    if device.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return torch.zeros(1, dtype=torch.int32, device=device)
    made: list = []

    def make():
        try:
            with torch.cuda.device(device):
                t = torch.zeros(1, dtype=torch.int32, device=device)
                done = torch.cuda.Event()
                done.record()
                made.append((t, done))
        except BaseException as e:  # noqa: BLE001  (re-raised in the caller's thread)
            made.append(e)

    helper = threading.Thread(target=make, name="patchmix-persistent-zeros")
    helper.start()
    helper.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    t, done = made[0]
    torch.cuda.current_stream(device).wait_event(done)
    return t


class _State:
    __slots__ = ("status", "host", "event", "calls")

    def __init__(self, device: torch.device):
        self.status = persistent_zeros(device)
        self.host: Tensor | None = None  # pinned copy of the status word (CUDA)
        self.event: torch.cuda.Event | None = None  # completion of the pending copy
        self.calls = 0  # op calls since the last copy


_STATES: dict[torch.device, _State] = {}


def _canonical(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def status(device) -> Tensor:
    """The ``int32`` status word ``(1,)`` of ``device``, zero until a kernel finds bad data (created on first use;
    call an op once before capturing a CUDA graph, as graph capture needs anyway)."""
    device = _canonical(device)
    state = _STATES.get(device)
    if state is None:
        state = _STATES[device] = _State(device)
    return state.status


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _asynchronous(device: torch.device) -> bool:
    """Devices whose reads the host must not wait for (snapshots and polls apply): CUDA."""
    return device.type == "cuda"


def check_errors(device=None) -> None:
    """Raise ``ValueError`` if a kernel found bad data on ``device`` (default: every device used so far).

    One host read per device (on CUDA after ``torch.cuda.synchronize``, so that the kernels of every stream
    are done); the status word is reset before the error is raised. Not allowed while a CUDA graph is
    being captured.
    """
    devices = list(_STATES) if device is None else [_canonical(device)]
    for dev in devices:
        state = _STATES.get(dev)
        if state is None or dev.type == "meta":  # meta tensors hold no data (the codegen audit's launches)
            continue
        if dev.type == "cuda":
            if _capturing(dev):
                raise RuntimeError("check_errors reads the device; call it outside CUDA graph capture")
            torch.cuda.synchronize(dev)
        value = int(state.status.item())
        state.event = None
        state.calls = 0
        if value:
            state.status.zero_()
            raise ValueError(message(value))


def poll(device) -> None:
    """Before a launch: raise the error of a finished status snapshot (no sync; CUDA only)."""
    if not _asynchronous(device):
        return
    state = _STATES.get(_canonical(device))
    if state is None or state.event is None or _capturing(device) or not state.event.query():
        return
    assert state.host is not None  # an event is recorded only after the copy into host
    value = int(state.host[0])
    state.event = None
    if value:
        state.status.zero_()
        raise ValueError(message(value))


def launched(device) -> None:
    """After a launch: every ``SNAPSHOT_EVERY`` calls, queue a snapshot of the status word (CUDA only)."""
    if not _asynchronous(device) or _capturing(device):
        return
    if SYNC_CHECKS:
        check_errors(device)
        return
    state = _STATES[_canonical(device)]
    state.calls += 1
    if state.event is None and state.calls >= SNAPSHOT_EVERY:
        state.calls = 0
        if state.host is None:
            state.host = torch.empty(1, dtype=torch.int32, pin_memory=torch.cuda.is_available())
        state.host.copy_(state.status, non_blocking=True)
        state.event = torch.cuda.Event()
        state.event.record()
