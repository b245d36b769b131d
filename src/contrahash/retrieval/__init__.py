"""Retrieval: Hamming kernels, the search indexes (faiss, Milvus), the collection directory
that ``index build`` writes and ``serve`` reads, encoding with a run, and near-duplicates.

Modules: :mod:`~contrahash.retrieval.hamming` (exact kernels),
:mod:`~contrahash.retrieval.search_index` (``SearchIndex``, the interface every index
backend implements), :mod:`~contrahash.retrieval.backends` (the table of backends and the
factory a collection opens its indexes with), :mod:`~contrahash.retrieval.index` (the faiss
index and its file format), :mod:`~contrahash.retrieval.milvus`,
:mod:`~contrahash.retrieval.milvus_connect` and :mod:`~contrahash.retrieval.milvus_server`
(the Milvus backend, reaching Milvus, a local server), the package
:mod:`~contrahash.retrieval.collection` (manifest, writer, sync, reader),
:mod:`~contrahash.retrieval.encode`, :mod:`~contrahash.retrieval.codes_io`,
:mod:`~contrahash.retrieval.duplicates`. Importing the package loads none of them.
"""
