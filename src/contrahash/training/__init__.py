"""Training: the run directory, where features come from, neighbour mining, distribution, and
the loop that ties them together (``contrahash train``).

Modules: :mod:`~contrahash.training.rundir` (what a run writes and reads back),
:mod:`~contrahash.training.providers` (feature providers and batch sampling),
:mod:`~contrahash.training.neighbours` (mined neighbour positives),
:mod:`~contrahash.training.distributed` (torch.distributed: the batch context),
:mod:`~contrahash.training.train` (the loop). Importing the package loads none of them.
"""
