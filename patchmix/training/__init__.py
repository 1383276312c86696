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

Public (what ``__all__`` lists, docs/architecture.md "Public API"): :func:`train_model` (one training from a
:class:`patchmix.config.Config`, as ``patchmix train`` runs it) and :class:`Interrupted` (what it raises on Ctrl-C);
for a loop of one's own, :func:`train_one_epoch` with its :class:`TrainMeter` and :func:`end_of_epoch`, the
:class:`Runtime` they run under (:func:`setup_runtime`, :func:`teardown_runtime`, :func:`runtime_session`),
:class:`ModelEma`, :func:`evaluate` and :func:`fgsm_evaluate`; and reading what a training wrote
(:func:`load_checkpoint`, :func:`model_from_checkpoint`). Everything else is internal: the workflow, the tests and
the benchmarks import it from its submodule (``patchmix.training.methods``, ``.streams``, ...).
"""

from .checkpoint import load_checkpoint, model_from_checkpoint
from .ema import ModelEma
from .evaluate import evaluate, fgsm_evaluate
from .interrupt import Interrupted
from .loop import TrainMeter, end_of_epoch, train_model, train_one_epoch
from .runtime import Runtime, runtime_session, setup_runtime, teardown_runtime

__all__ = [
    "Interrupted", "ModelEma", "Runtime", "TrainMeter", "end_of_epoch", "evaluate", "fgsm_evaluate", "load_checkpoint",
    "model_from_checkpoint", "runtime_session", "setup_runtime", "teardown_runtime", "train_model", "train_one_epoch",
]
