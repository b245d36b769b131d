"""A searchable collection: a source's images encoded by a trained run, indexed, ready to serve.

``contrahash index build RUN --data SOURCE --out DIR`` writes one self-contained directory::

    DIR/manifest.json        format, the run (directory, run id, config hash), code lengths,
                             live item count, next id, removed ids, backend, how queries are
                             decoded, the segments, a generation counter
    DIR/model/               config.yaml + model.safetensors: everything that encodes a query
                             exactly as the database was encoded (backbone spec, weights,
                             method, resolution, precision, the test-time transform)
    DIR/training/            (one-command builds only) the run that learnt the model
    DIR/segments/000000/     one per build, ``index add`` or ``index sync``, never rewritten:
        codes_<bits>.index   packed codes and item ids (the HammingIndex file format)
        items.jsonl          one line per item: id, name, path, album, labels, sha256, width,
                             height, file size and mtime
        thumbnails.bin       every item's thumbnail (JPEG, aspect kept), concatenated
        thumbnails.npy       their byte offsets [n + 1]
        perceptual.npy       every item's perceptual code (near-duplicate search)

Every change — ``index add``, ``sync``, ``remove`` — writes a new segment (if it encodes
anything) under a temporary name, renames it into place, then replaces the manifest: the
commit point, one atomic rename. An interrupted writer leaves the manifest, hence the
collection, as it was; its leftovers are swept by the next writer. Ids of kept items never
change: a new item takes the next id, an item whose file changed keeps its id and its newer
row (in a later segment) supersedes the older one, a removed item's id is listed in the
manifest's ``removed`` and never served again. One writer at a time holds the directory's
lock (:mod:`contrahash.locks`).

:class:`Collection` is the read side (``contrahash search DIR``, ``contrahash serve DIR``): it
loads the model and every segment once, keeping each id's newest row that is not removed;
:meth:`Collection.reload` swaps in a new snapshot after a change while searches in flight
finish on the old one. An uploaded image is decoded the way the collection's first source decoded its own files
(:func:`contrahash.data.images.decode_like_source`) and encoded by the same model, so a
collection image uploaded as its original file finds itself at Hamming distance 0.

Modules, one job each: :mod:`~contrahash.retrieval.collection.manifest` (the format, the
manifest, staging and crash points), :mod:`~contrahash.retrieval.collection.writer` (build,
add, the commit), :mod:`~contrahash.retrieval.collection.sync` (sync, remove) and
:mod:`~contrahash.retrieval.collection.reader` (:class:`Collection`). The index a collection
searches is opened by its manifest's backend (:mod:`contrahash.retrieval.backends`).
"""

from contrahash.retrieval.collection.manifest import (
    CRASH_POINTS,
    FORMAT,
    CollectionError,
    check_new_collection_dir,
    collection_info,
    read_manifest,
)
from contrahash.retrieval.collection.reader import Collection, open_collection
from contrahash.retrieval.collection.sync import remove_from_collection, sync_collection
from contrahash.retrieval.collection.writer import (
    add_to_collection,
    build_collection,
    check_model_fits,
)

__all__ = [
    "CRASH_POINTS",
    "FORMAT",
    "Collection",
    "CollectionError",
    "add_to_collection",
    "build_collection",
    "check_model_fits",
    "check_new_collection_dir",
    "collection_info",
    "open_collection",
    "read_manifest",
    "remove_from_collection",
    "sync_collection",
]
