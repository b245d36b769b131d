"""Training: the run directory, where features come from, neighbour mining, distribution, and
the loop that ties them together (``contrahash train``).

Modules: :mod:`~contrahash.training.rundir` (what a run writes and reads back),
:mod:`~contrahash.training.providers` (feature providers and batch sampling),
:mod:`~contrahash.training.neighbours` (mined neighbour positives),
:mod:`~contrahash.training.distributed` (torch.distributed: the batch context of several
processes), :mod:`~contrahash.training.optim` (optimiser and schedule),
:mod:`~contrahash.training.loop` (the epoch loop), :mod:`~contrahash.training.checkpoints`
(what a resume restores), :mod:`~contrahash.training.train` (a run: the Trainer and its
resume policy, :func:`~contrahash.training.train.train_run`). Importing the package loads none
of them.
"""
