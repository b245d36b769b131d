"""Retrieval protocols: which images are queries, which form the database, which train.

Presets follow the field's protocols (``docs``: methods.md, "Protocols"):

| name | query | database | train | cut-off |
|---|---|---|---|---|
| ``cifar10-1`` | 100/class | the rest | 500/class ⊂ database | mAP@1000 |
| ``cifar10`` | 100/class | the rest minus train | 500/class, disjoint | mAP@1000 |
| ``cifar10-2`` | 1,000/class | the rest | = database | mAP@1000 |
| ``cifar10-ii`` | 1,000/class | the rest | 500/class ⊂ database | mAP@1000 |
| ``nuswide21`` | 100/concept | the rest | 500/concept ⊂ database | mAP@5000 |
| ``coco`` | 5,000 | the rest | 10,000 ⊂ database | mAP@5000 |
| ``flickr25k`` | 2,000 | the rest | 5,000 ⊂ database | mAP@5000 |
| ``custom`` | options | options | options | option (default @ALL) |

The ``cifar10*`` presets pool every image they are given (for CIFAR-10: the official 50k train
+ 10k test) and split each class with one seeded permutation; they need single-label data and
fail with a :class:`DataError` naming the class when one has too few images. ``nuswide21``
applies the field's assignment rule exactly (see :func:`split_nuswide21`); images with no
label are left out of every part (they could never be relevant to anything). ``coco`` and
``flickr25k`` draw uniformly from all images given (use the list file to choose the pool, or
``drop_unlabeled=True``).

Every index array is sorted ascending (dataset order), so the database order — which breaks
Hamming-distance ties — is the dataset order. ``val_size`` (count or fraction) carves a
validation set from the database (outside train when the protocol leaves database images
outside train), with its own random stream: adding it never changes the other parts.

``scale`` (for small and test runs) shrinks every part of every protocol, each count ``n``
becoming ``max(1, round(n * scale))``:

* query and train: the preset counts (per class / per concept / in total) are scaled;
* the database: train (when train ⊂ database) plus ``scale`` × the images the protocol would
  put in the database beyond train at that scale — the first of them in the protocol's own
  seeded order, so no extra random draw is made (``cifar10-1`` on CIFAR-10 at 0.05: 50 query,
  250 train, 3,230 database instead of 59,950);
* ``custom``: counts are scaled; fractions and ``None`` ("all that is left") are scaled too,
  except for train drawn from the database (already scaled) and ``train=None``
  (train = database);
* ``val_size`` is not scaled: it is carved out of the (scaled) database as given.

``scale=1.0`` gives exactly the unscaled split (the same lists, the same random draws).
"""

from contrahash.data.protocols.custom import split_custom
from contrahash.data.protocols.files import load_split, save_split, split_for_run
from contrahash.data.protocols.presets import assign_nuswide, split_nuswide21
from contrahash.data.protocols.registry import PROTOCOLS, get_protocol, make_split
from contrahash.data.protocols.split import PARTS, SPLIT_FORMAT, Protocol, Split

__all__ = [
    "PARTS",
    "PROTOCOLS",
    "SPLIT_FORMAT",
    "Protocol",
    "Split",
    "assign_nuswide",
    "get_protocol",
    "load_split",
    "make_split",
    "save_split",
    "split_custom",
    "split_for_run",
    "split_nuswide21",
]
