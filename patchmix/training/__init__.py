"""Training one model with one method: the loop behind ``patchmix train`` and the phases of ``patchmix run``.

One concern per module:

* :mod:`.runtime`: the device, mixed precision, memory format and the DDP process group;
* :mod:`.log`: the JSON-lines event log, messages and progress bars;
* :mod:`.model`: the patch-head model behind the dataset's normalisation;
* :mod:`.methods`: per method, the loss, the mixer and the index batches of each epoch;
* :mod:`.streams`: the seeded random streams of an epoch;
* :mod:`.pipeline`: the training batches: a DataLoader per training, mixing in its workers;
* :mod:`.ema`: the model EMA (timm's ModelEmaV3 semantics);
* :mod:`.optim`: optimizer, gradient scaler, learning-rate schedule;
* :mod:`.evaluate`: top-1 and FGSM evaluation;
* :mod:`.checkpoint`: saving and safely loading training checkpoints;
* :mod:`.interrupt`: Ctrl-C handling and :class:`Interrupted`;
* :mod:`.loop`: :func:`train_one_epoch` and :func:`train_model`.
"""

from .checkpoint import CHECKPOINT_FORMAT, CheckpointSaver, TrainState, load_checkpoint, model_from_checkpoint
from .ema import ModelEma
from .evaluate import evaluate, fgsm_evaluate
from .interrupt import Interrupted, StopCheck, StopFlag, reset_stop_request, stop_requested
from .log import Log
from .loop import TrainMeter, compile_model, end_of_epoch, train_model, train_one_epoch
from .methods import Method, make_loss, make_mixer
from .model import NormalizedModel, build_model, image_logits, model_name
from .optim import build_optimizer, build_scaler, lr_at, set_lr
from .pipeline import EpochBatches, TrainLoader, to_device
from .runtime import Runtime, autocast, runtime_session, setup_runtime, shutdown_distributed, teardown_runtime
from .streams import EpochStreams, derive_seed, loader_seed

__all__ = [
    "CHECKPOINT_FORMAT", "CheckpointSaver", "EpochBatches", "EpochStreams", "Interrupted", "Log", "Method",
    "ModelEma", "NormalizedModel", "Runtime", "StopCheck", "StopFlag", "TrainLoader", "TrainMeter", "TrainState",
    "autocast", "build_model", "build_optimizer", "build_scaler", "compile_model", "derive_seed", "end_of_epoch",
    "evaluate", "fgsm_evaluate", "image_logits", "load_checkpoint", "loader_seed", "lr_at", "make_loss", "make_mixer",
    "model_from_checkpoint", "model_name", "reset_stop_request", "runtime_session", "set_lr", "setup_runtime",
    "shutdown_distributed", "stop_requested", "teardown_runtime", "to_device", "train_model", "train_one_epoch",
]
