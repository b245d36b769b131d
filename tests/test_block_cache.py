"""Fine-tuning from cached block inputs (cache.mode=blocks) against the end-to-end path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contrahash.config import resolve_config
from contrahash.methods import StepInfo, build_method
from contrahash.models.backbones import build_backbone
from contrahash.training.rundir import RunDirectory
from contrahash.training.train import train_run

DIGITS = [
    "data.source=digits", "data.protocol_options={query: 0.1, train: 300}",
    "augment={flip_p: 0, jitter_p: 0, grayscale_p: 0}", "backbone.name=tiny_cnn",
    "backbone.random_init=true", "backbone.image_size=16", "backbone.finetune_blocks=2",
    "bits=[8,16]", "cache.views=3", "cache.mode=blocks", "deterministic=true",
]


def _loss_and_grads(backbone, method, views_inputs, n, cached: str | None):
    """Loss and gradients of one step on fixed inputs: end to end (cached=None) or from the
    block inputs, kept in float32 or rounded to float16 as the cache stores them."""
    backbone.zero_grad(set_to_none=True)
    method.zero_grad(set_to_none=True)
    torch.manual_seed(5)  # stochastic layers draw alike on both paths
    x = torch.cat(views_inputs)
    if cached is None:
        features = backbone(x)
    else:
        with torch.no_grad():
            a = backbone.block_input(x, n)
        if cached == "float16":
            a = a.half().float()
        features = backbone.forward_from(a, n)
    out = method.training_loss(list(features.chunk(len(views_inputs))), StepInfo())
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in [*backbone.named_parameters(),
                                                  *method.named_parameters()]
             if p.grad is not None}
    return float(out.loss.detach()), grads


@pytest.mark.parametrize("method_name", ["cibhash", "fdbh"])
def test_block_cache_gives_the_end_to_end_loss_and_gradients(method_name):
    """On the same fixed views, training the last N blocks from their cached inputs is the
    end-to-end step: the same loss and gradients to float32 rounding (rtol 1e-5), because the
    forward is split, not changed."""
    torch.manual_seed(0)
    backbone = build_backbone("tiny_cnn", random_init=True, finetune_blocks=2, image_size=16)
    backbone.train()
    method = build_method(method_name, backbone.feature_dim, [8, 16],
                          {"neighbour_prob": 0.0} if method_name == "fdbh" else None)
    method.train()
    g = torch.Generator().manual_seed(1)
    views = [backbone.normalize(torch.rand(12, 3, 16, 16, generator=g)) for _ in range(2)]
    loss_e2e, grads_e2e = _loss_and_grads(backbone, method, views, 2, None)
    loss_split, grads_split = _loss_and_grads(backbone, method, views, 2, "float32")
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable and trainable <= set(grads_e2e) and set(grads_split) == set(grads_e2e)
    assert loss_split == pytest.approx(loss_e2e, rel=1e-6, abs=1e-7)
    for name, grad in grads_e2e.items():
        torch.testing.assert_close(grads_split[name], grad, rtol=1e-5, atol=1e-7)


def test_float16_block_inputs_change_features_by_rounding_only():
    """The cache stores block inputs as float16 (11-bit mantissa): the backbone outputs move
    by < 0.5% (relative norm), less than bf16 autocast itself moves them (8-bit mantissa;
    both paths run under it on CPUs and GPUs with bf16). Through a sign quantiser any such
    perturbation can flip codes that sit at 0, so the loss is compared on features."""
    torch.manual_seed(0)
    backbone = build_backbone("tiny_cnn", random_init=True, finetune_blocks=2, image_size=16)
    backbone.eval()
    x = backbone.normalize(torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        exact = backbone(x)
        cached = backbone.forward_from(backbone.block_input(x, 2).half().float(), 2)
        bf16 = backbone(x.bfloat16().float())  # bf16 rounding of the input alone, for scale
    moved = float((cached - exact).norm() / exact.norm())
    assert moved < 5e-3
    assert moved < float((bf16 - exact).norm() / exact.norm())


def test_training_from_block_inputs_runs_resumes_and_caches(tmp_path):
    cfg = resolve_config(None, [*DIGITS, "method=fdbh", "method_config.neighbour_pool=database",
                                "optim.epochs=3", f"cache.dir={tmp_path / 'cache'}"])
    full = train_run(cfg, tmp_path / "full")
    run = RunDirectory(full.run_dir)
    assert run.events("start")[0]["provider"] == "BlockCache"
    assert 0.0 < full.results["bits"]["16"]["map"] <= 1.0
    keys = {p.name for p in (tmp_path / "cache").glob("*.json")}
    assert len(keys) == 2  # the clean and the training views' block inputs, nothing else
    part = train_run(cfg, tmp_path / "part", stop_after_epoch=1)
    assert not (part.run_dir / "results.json").exists()
    resumed = train_run(None, tmp_path / "part", resume=True)
    for k in ("8", "16"):
        a = np.load(full.run_dir / "codes" / f"{k}.npz")
        b = np.load(resumed.run_dir / "codes" / f"{k}.npz")
        assert np.array_equal(a["database"], b["database"])


def test_a_validation_split_shares_the_protocols_evaluated_image_cache(tmp_path):
    """A validation carve-out (database images as queries) evaluates images the split already
    holds: the validation run finds every cached array of the protocol's run and adds none."""
    base = [*DIGITS, "method=cibhash", "optim.epochs=1", f"cache.dir={tmp_path / 'cache'}"]
    base[1] = "data.protocol_options={query: 0.05, train: 300, val_size: 60}"
    train_run(resolve_config(None, base), tmp_path / "test")
    keys = {p.name for p in (tmp_path / "cache").glob("*.json")}
    val = train_run(resolve_config(None, [*base, "evaluate_on=val"]), tmp_path / "val")
    assert val.results["evaluated_on"] == "val"
    assert {p.name for p in (tmp_path / "cache").glob("*.json")} == keys


def test_block_cache_needs_blocks_to_fine_tune(tmp_path):
    cfg = resolve_config(None, [*DIGITS, "method=cibhash", "backbone.finetune_blocks=0",
                                "optim.epochs=1", f"cache.dir={tmp_path / 'cache'}"])
    result = train_run(cfg, tmp_path / "frozen")  # frozen: the ordinary feature cache
    assert RunDirectory(result.run_dir).events("start")[0]["provider"] == "CachedViews"
