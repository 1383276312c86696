"""What the command line runs and what it leaves in an output folder.

Modules: :mod:`.run` (the four-phase workflow and the comparison runs behind ``patchmix run``, and the jobs
``train`` and ``search`` share with it), :mod:`.ablation` (``patchmix ablate``), :mod:`.rundir` (the output
folder: its files, the refusal of foreign folders, resume checks) and :mod:`.report` (figures, tables and
``report.md``).
"""

from .run import (
    DistributedFitness,
    Workflow,
    build_fitness,
    check_search,
    run_search,
    run_workflow,
    search_policy,
    stop_if_requested,
    train_job,
)

__all__ = ["DistributedFitness", "Workflow", "build_fitness", "check_search", "run_search", "run_workflow", "search_policy",
           "stop_if_requested", "train_job"]
