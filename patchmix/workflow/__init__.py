"""What the command line runs and what it leaves in an output folder.

Modules: :mod:`.run` (the four-phase workflow and the comparison runs behind ``patchmix run``, and the jobs
``train`` and ``search`` share with it), :mod:`.ablation` (``patchmix ablate``), :mod:`.rundir` (the output
folder: its files, its lock, the refusal of foreign folders, the resume and reuse rules), :mod:`.session` (what
``run``, ``train``, ``search`` and ``ablate`` do around their work: check everything, then lock and commit the
folder), :mod:`.commands` (the work of each ``patchmix`` command), :mod:`.report` (tables and ``report.md``),
:mod:`.figures` (the PNGs) and :mod:`.samples` (mixed samples of any method).
"""

from .run import (
    DistributedFitness,
    Workflow,
    build_fitness,
    check_search,
    run_search,
    run_workflow,
    search_policy,
    search_record,
    stop_if_requested,
    train_job,
)

__all__ = ["DistributedFitness", "Workflow", "build_fitness", "check_search", "run_search", "run_workflow",
           "search_policy", "search_record",
           "stop_if_requested", "train_job"]
