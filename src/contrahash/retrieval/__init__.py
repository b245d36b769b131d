"""Retrieval: Hamming kernels, the search indexes (faiss, Milvus), the collection directory
that ``index build`` writes and ``serve`` reads, encoding with a run, and near-duplicates.

Modules: :mod:`~contrahash.retrieval.hamming` (exact kernels), :mod:`~contrahash.retrieval.index`
(the faiss index and its file format), :mod:`~contrahash.retrieval.milvus` and
:mod:`~contrahash.retrieval.milvus_server` (the Milvus backend and a local server),
:mod:`~contrahash.retrieval.collection`, :mod:`~contrahash.retrieval.encode`,
:mod:`~contrahash.retrieval.codes_io`, :mod:`~contrahash.retrieval.duplicates`.
Importing the package loads none of them.
"""
