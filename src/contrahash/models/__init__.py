"""Models: backbones by name, the hashing model of a run, its codes, and the frozen-backbone
features (the cache and the CPU inference engines that compute them).

Modules: :mod:`~contrahash.models.backbones` (registry and architectures),
:mod:`~contrahash.models.model` (backbone + method, built or read back),
:mod:`~contrahash.models.codes` (sign, packing), :mod:`~contrahash.models.features`
(extraction and the feature cache), :mod:`~contrahash.models.engine` (OpenVINO / ONNX Runtime).
The package imports nothing itself, so importing one module never loads the others.
"""
