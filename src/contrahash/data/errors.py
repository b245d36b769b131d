"""The one exception the data layer raises for problems a user can fix."""

from __future__ import annotations


class DataError(ValueError):
    """A dataset, list file, split or protocol is structurally wrong.

    The message names the file (and line, where there is one), what is wrong and, where it is
    not obvious, how to fix it. Single bad images are *not* DataErrors: they are skipped,
    warned about and counted in :attr:`ImageDataset.skipped`.
    """
