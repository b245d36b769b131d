"""The training engine end to end on tiny data: run directory, resume, errors, encode/evaluate."""

from __future__ import annotations

import json
import platform
import sys

import numpy as np
import pytest
import torch

from contrahash.config import resolve_config
from contrahash.data import load_source
from contrahash.data.protocols import load_split
from contrahash.evaluation.evaluate import evaluate, evaluate_run
from contrahash.methods import OptimSpec, build_method
from contrahash.models.features import FeatureCache, autocast_dtype, autocast_for
from contrahash.models.model import build_model, load_trained
from contrahash.retrieval.encode import encode_run
from contrahash.training.loop import TrainingError
from contrahash.training.neighbours import mine_neighbours
from contrahash.training.providers import feature_view_batches
from contrahash.training.rundir import RunDirectory
from contrahash.training.train import train_run

DIGITS = [
    "data.source=digits",
    "data.protocol_options={query: 0.1, train: 300}",
    "augment={flip_p: 0, jitter_p: 0, grayscale_p: 0}",
    "backbone.name=pixels",
    "backbone.image_size=8",
    "bits=[8,16]",
    "cache.views=3",
    "deterministic=true",
]


def _cfg(tmp_path, *extra):
    return resolve_config(None, [*DIGITS, f"cache.dir={tmp_path / 'cache'}",
                                 f"out_dir={tmp_path}", *extra])


def test_run_directory_is_complete(tmp_path):
    cfg = _cfg(tmp_path, "method=fdbh", "method_config.neighbour_pool=train", "optim.epochs=2")
    result = train_run(cfg, tmp_path / "run", command="test")
    run = result.run_dir
    for name in ("config.yaml", "command.txt", "environment.json", "metrics.jsonl",
                 "model.safetensors", "results.json", "split/split.json", "codes/8.npz",
                 "neighbours.npz"):
        assert (run / name).exists(), name
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "loss" in json.loads(lines[0])
    env = json.loads((run / "environment.json").read_text())
    assert env["split_hashes"] and env["dataset"] and "torch" in env
    assert set(result.results["bits"]) == {"8", "16"}
    saved = json.loads((run / "results.json").read_text())
    # the effective hyper-parameters, defaults included, are recorded with the numbers
    assert saved["method_config"]["neighbour_mode"] == "extra"
    assert saved["method_config"]["lambda_rec"] == 0.1 and saved["optim"]["epochs"] == 2
    # evaluate from saved codes reproduces the run's numbers
    again = evaluate_run(run)
    assert again["16"]["map"] == pytest.approx(result.results["bits"]["16"]["map"])


@pytest.mark.parametrize("pool", ["train", "database"])
def test_fdbh_extra_neighbour_views_train_from_cache(tmp_path, pool):
    cfg = _cfg(tmp_path, "method=fdbh", f"method_config.neighbour_pool={pool}",
               "method_config.neighbour_mode=extra", "optim.epochs=2")
    result = train_run(cfg, tmp_path / "run")
    logs = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "neighbour_16" in logs[-1]
    assert 0.0 < result.results["bits"]["16"]["map"] <= 1.0


def test_neighbour_refresh_re_mines_from_the_model(tmp_path):
    cfg = _cfg(tmp_path, "method=fdbh", "method_config.neighbour_pool=database",
               "method_config.neighbour_refresh=2", "optim.epochs=5")
    result = train_run(cfg, tmp_path / "run")
    events = [json.loads(x) for x in (result.run_dir / "events.jsonl").read_text().splitlines()]
    mined = [e["epoch"] for e in events if e["event"] == "neighbours"]
    assert mined == [-1, 2, 4]  # frozen features first, then the model at epochs 2 and 4
    z = np.load(result.run_dir / "neighbours.npz")
    assert int(z["epoch"]) == 4 and z["neighbours"].shape[1] == 5
    assert np.isin(z["neighbours"], z["pool"]).all()


def test_existing_run_is_never_overwritten(tmp_path):
    cfg = _cfg(tmp_path, "method=itq")
    train_run(cfg, tmp_path / "run")
    with pytest.raises(FileExistsError, match="--resume"):
        train_run(cfg, tmp_path / "run")


@pytest.mark.parametrize("method", [
    ["method=cibhash"],
    # neighbours re-mined from the model every epoch: resume must pick up the latest set
    ["method=fdbh", "method_config.neighbour_pool=train", "method_config.neighbour_refresh=1"],
])
def test_resume_gives_bit_identical_codes(tmp_path, method):
    cfg = _cfg(tmp_path, *method, "optim.epochs=3", "optim.batch_size=32")
    full = train_run(cfg, tmp_path / "full")
    partial = train_run(cfg, tmp_path / "part", stop_after_epoch=1)
    assert not (partial.run_dir / "results.json").exists()
    resumed = train_run(cfg, tmp_path / "part", resume=True)
    for k in ("8", "16"):
        a = np.load(full.run_dir / "codes" / f"{k}.npz")
        b = np.load(resumed.run_dir / "codes" / f"{k}.npz")
        assert np.array_equal(a["query"], b["query"]) and np.array_equal(a["database"], b["database"])
    assert len((resumed.run_dir / "metrics.jsonl").read_text().splitlines()) == 3


def test_end_to_end_path_trains_and_fine_tunes(tmp_path):
    cfg = _cfg(tmp_path, "method=cibhash", "optim.epochs=1", "backbone.name=tiny_cnn",
               "backbone.random_init=true", "backbone.finetune_blocks=1", "backbone.image_size=16")
    ctx_result = train_run(cfg, tmp_path / "e2e")
    assert ctx_result.images_per_second > 0
    assert "backbone" in "".join(__import__("safetensors.torch").torch.load_file(
        str(ctx_result.run_dir / "model.safetensors")).keys())
    # the last block trained, the blocks below it kept their (seeded) initial weights
    initial = dict(build_model(cfg, torch.device("cpu")).backbone.named_parameters())
    _, trained = load_trained(ctx_result.run_dir)
    after = dict(trained.backbone.named_parameters())
    tuned = {name for name, p in initial.items() if p.requires_grad}
    assert tuned and tuned != set(initial)
    for name, p in initial.items():
        assert torch.equal(p.detach(), after[name].detach().cpu()) == (name not in tuned), name
    codes, dataset = encode_run(ctx_result.run_dir)
    assert codes[16].shape == (len(dataset.images), 16)
    assert set(np.unique(codes[16])) <= {-1, 1}


def test_end_to_end_path_with_extra_neighbour_view(tmp_path):
    cfg = _cfg(tmp_path, "method=fdbh", "optim.epochs=1", "backbone.name=tiny_cnn",
               "backbone.random_init=true", "backbone.finetune_blocks=1", "backbone.image_size=16",
               "method_config.neighbour_mode=extra", "method_config.neighbour_pool=train")
    result = train_run(cfg, tmp_path / "e2e3")
    logs = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "neighbour_8" in logs[-1] and (result.run_dir / "neighbours.npz").exists()


def test_compile_option_compiles_backbone_and_keeps_weight_names(tmp_path):
    cfg = _cfg(tmp_path, "method=cibhash", "optim.epochs=1", "backbone.name=tiny_cnn",
               "backbone.random_init=true", "backbone.finetune_blocks=1", "backbone.image_size=16",
               "compile=true")
    result = train_run(cfg, tmp_path / "compiled")
    keys = __import__("safetensors.torch").torch.load_file(str(result.run_dir / "model.safetensors"))
    assert any(k.startswith("backbone.") for k in keys) and not any("_orig_mod" in k for k in keys)
    _, model = load_trained(result.run_dir)
    assert hasattr(model.backbone.forward, "_torchdynamo_orig_callable")  # really compiled
    codes, _ = encode_run(result.run_dir)
    assert set(np.unique(codes[16])) <= {-1, 1}


@pytest.mark.parametrize("limit", [4.0, 0.0])
def test_token_methods_use_the_cache_when_it_fits(tmp_path, limit):
    cfg = _cfg(tmp_path, "method=wch", "optim.epochs=1", "optim.batch_size=32",
               "backbone.name=tiny_cnn", "backbone.random_init=true", "backbone.image_size=16",
               f"cache.max_token_gib={limit}", "method_config.hidden=64")
    result = train_run(cfg, tmp_path / "wch")
    start = RunDirectory(result.run_dir).events("start")[0]
    assert start["provider"] == ("CachedViews" if limit > 0 else "EndToEnd")
    assert 0.0 < result.results["bits"]["16"]["map"] <= 1.0


def test_non_finite_loss_stops_with_message(tmp_path):
    cfg = _cfg(tmp_path, "method=cibhash", "optim.epochs=2", "optim.lr=1e30")
    with pytest.raises(TrainingError, match="non-finite loss"):
        train_run(cfg, tmp_path / "nan")


def test_trained_fdbh_beats_untrained_head_on_digits(tmp_path):
    cfg = _cfg(tmp_path, "method=fdbh", "optim.epochs=8", "method_config.neighbour_pool=train")
    trained = train_run(cfg, tmp_path / "t").results["bits"]["16"]["map"]
    _, model = load_trained(tmp_path / "t")
    model.method = build_method("fdbh", model.backbone.feature_dim, [8, 16]).to(model.device)
    model.method.fdo["16"].track_running_stats = False  # untrained: batch statistics
    dataset = load_source("digits")
    split = load_split(tmp_path / "t" / "split")

    def features(indices):
        return model.extract(dataset.images, indices)

    untrained = evaluate(model, features, dataset.labels, split, method_name="fdbh")
    assert trained > untrained["bits"]["16"]["map"] + 0.05


def test_feature_view_batches_uses_neighbours():
    views = torch.arange(10, dtype=torch.float32).view(10, 1, 1).repeat(1, 2, 1)
    neighbours = np.full((10, 1), 9)
    g = torch.Generator().manual_seed(0)
    (batch, idx), = list(feature_view_batches(views, 10, 2, g, neighbours, 1.0))
    assert torch.equal(batch[0].flatten(), idx.float())
    assert (batch[1] == 9).all()
    pool = torch.full((3, 1), -5.0)
    (batch, _), = list(feature_view_batches(views, 10, 2, g, np.zeros((10, 1), int), 1.0, pool))
    assert (batch[1] == -5).all()


def test_mine_neighbours_excludes_self():
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    nb = mine_neighbours(x, x, 1, self_index=np.arange(3))
    assert nb[:, 0].tolist() == [1, 0, 1]


def test_feature_cache_resumes_partial(tmp_path):
    cache = FeatureCache(tmp_path)
    calls = []

    def compute(out, start):
        calls.append(start)
        out[start:] = 1
        return out

    parts = {"k": 1}
    partial = cache.path(parts).with_suffix(".partial.npy")
    arr = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(4, 2))
    arr[:2] = 1
    arr.flush()
    cache.path(parts).with_suffix(".progress").write_text("2")
    result = cache.get_or_compute(parts, (4, 2), compute)
    assert calls == [2] and float(np.asarray(result).sum()) == 8.0
    assert cache.get_or_compute(parts, (4, 2), compute) is not None and calls == [2]


def test_train_on_features_rejects_tiny_sets():
    from contrahash.training.loop import train_on_features

    with pytest.raises(ValueError, match="at least 2 images"):
        train_on_features(build_method("cibhash", 4, [4]), torch.randn(1, 2, 4), epochs=1,
                          optim=OptimSpec(batch_size=8))


def test_validation_evaluation_never_uses_queries(tmp_path):
    cfg = _cfg(tmp_path, "method=itq", "evaluate_on=val",
               "data.protocol_options={query: 0.1, train: 300, val_size: 100}")
    run = train_run(cfg, tmp_path / "val").run_dir
    z = np.load(run / "codes" / "8.npz")
    split_query = np.loadtxt(run / "split" / "query.txt", dtype=np.int64)
    assert len(z["query_index"]) == 100
    assert not np.intersect1d(z["query_index"], split_query).size
    assert not np.intersect1d(z["query_index"], z["database_index"]).size
    with pytest.raises(ValueError, match="val_size"):
        train_run(_cfg(tmp_path, "method=itq", "evaluate_on=val"), tmp_path / "v2")


def test_cached_views_keep_their_recipe_roles():
    # column j made with recipe j % 3: view p must always come from a column ≡ p (mod 3)
    views = torch.arange(7, dtype=torch.float32).view(1, 7, 1).repeat(12, 1, 1)
    g = torch.Generator().manual_seed(0)
    for batch, _ in feature_view_batches(views, 4, 3, g, recipes=3):
        for p in range(3):
            assert ((batch[p].flatten().long() % 3) == p).all()


def test_cpu_bf16_follows_amp_and_the_override(monkeypatch):
    monkeypatch.setenv("CONTRAHASH_CPU_BF16", "1")
    assert autocast_dtype("cpu") is torch.bfloat16 and autocast_dtype("cpu", enabled=False) is None
    with autocast_for("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    monkeypatch.setenv("CONTRAHASH_CPU_BF16", "0")
    assert autocast_dtype("cpu") is None and autocast_dtype("cuda") is torch.bfloat16
    with autocast_for("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.parametrize(("amp", "native", "precision"),
                         [("true", "1", "bfloat16"), ("true", "0", "fp32"), ("false", "1", "fp32")])
def test_feature_cache_key_names_the_precision(tmp_path, monkeypatch, amp, native, precision):
    monkeypatch.setenv("CONTRAHASH_CPU_BF16", native)
    cfg = _cfg(tmp_path, "method=cibhash", "optim.epochs=1", f"amp={amp}")
    result = train_run(cfg, tmp_path / "run")
    assert load_trained(result.run_dir)[1].precision == precision


def test_bf16_and_fp32_features_never_share_a_cache_file(tmp_path, monkeypatch):
    for native in ("1", "0"):
        monkeypatch.setenv("CONTRAHASH_CPU_BF16", native)
        train_run(_cfg(tmp_path, "method=cibhash", "optim.epochs=1"), tmp_path / f"run{native}")
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 4  # clean + views, per precision


def test_cpu_allocator_tuning_is_idempotent_and_can_be_turned_off(monkeypatch):
    from contrahash import runtime

    monkeypatch.setattr(runtime, "_tuned", None)
    monkeypatch.setenv("CONTRAHASH_MALLOC_TUNING", "0")
    assert runtime.tune_cpu_allocator() is False
    monkeypatch.setattr(runtime, "_tuned", None)
    monkeypatch.delenv("CONTRAHASH_MALLOC_TUNING")
    first = runtime.tune_cpu_allocator()
    assert first is (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc")
    assert runtime.tune_cpu_allocator() is first


def test_cpu_extraction_batch_defaults_to_64(tmp_path):
    result = train_run(_cfg(tmp_path, "method=itq"), tmp_path / "itq")
    assert load_trained(result.run_dir)[1].eval_batch_size == 64


def test_resume_of_a_finished_run_recomputes_nothing(tmp_path):
    cfg = _cfg(tmp_path, "method=cibhash", "optim.epochs=1")
    first = train_run(cfg, tmp_path / "run")
    stamp = (tmp_path / "run" / "results.json").stat().st_mtime_ns
    again = train_run(None, tmp_path / "run", resume=True)
    assert again.reused and again.results == first.results
    assert (tmp_path / "run" / "results.json").stat().st_mtime_ns == stamp


def test_resume_can_train_longer_and_refuses_other_changes(tmp_path):
    cfg = _cfg(tmp_path, "method=cibhash", "optim.epochs=2")
    train_run(cfg, tmp_path / "run")
    with pytest.raises(ValueError, match="'bits' cannot change"):
        train_run(None, tmp_path / "run", resume=True, resume_overrides=["bits=[8]"])
    with pytest.raises(ValueError, match="fewer than the 2 epochs"):
        train_run(None, tmp_path / "run", resume=True, resume_overrides=["optim.epochs=1"])
    longer = train_run(None, tmp_path / "run", resume=True, resume_overrides=["optim.epochs=3"])
    assert not longer.reused and [r["epoch"] for r in longer.epochs] == [3]
    assert longer.results["optim"]["epochs"] == 3
    run = RunDirectory(tmp_path / "run")
    assert run.events("config_change")[0]["overrides"] == ["optim.epochs=3"]
    # the same three epochs as a run planned for three (constant schedule): identical codes
    planned = train_run(_cfg(tmp_path, "method=cibhash", "optim.epochs=3"), tmp_path / "planned")
    for k in ("8", "16"):
        a = np.load(tmp_path / "run" / "codes" / f"{k}.npz")["database"]
        b = np.load(planned.run_dir / "codes" / f"{k}.npz")["database"]
        assert np.array_equal(a, b)


def test_resume_refuses_another_thread_count(tmp_path):
    cfg = _cfg(tmp_path, "method=cibhash", "optim.epochs=2")
    train_run(cfg, tmp_path / "run", stop_after_epoch=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        with pytest.raises(RuntimeError, match="bit-identical"):
            train_run(None, tmp_path / "run", resume=True)
        done = train_run(None, tmp_path / "run", resume=True, allow_thread_change=True)
    finally:
        torch.set_num_threads(threads)
    assert done.results["bits"] and RunDirectory(done.run_dir).events("thread_change")


def test_a_failed_start_leaves_nothing_behind(tmp_path):
    cfg = _cfg(tmp_path, "method=cibhash", "data.source=/nonexistent/x.npz")
    with pytest.raises(ValueError, match="/nonexistent/x.npz"):
        train_run(cfg, tmp_path / "runs" / "bad")
    assert not (tmp_path / "runs" / "bad").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError):
        train_run(cfg, tmp_path / "mine")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


def test_a_run_directory_has_one_writer(tmp_path):
    from contrahash.locks import DirectoryLock, LockedError

    cfg = _cfg(tmp_path, "method=itq")
    with DirectoryLock(tmp_path / "run", what="run"), pytest.raises(LockedError, match="one writer"):
        train_run(cfg, tmp_path / "run")


def test_methods_with_one_recipe_share_the_cached_views(tmp_path):
    """FDBH's three contrastive views and CIBHash's two are the same cached array."""
    train_run(_cfg(tmp_path, "method=cibhash", "optim.epochs=1"), tmp_path / "a")
    train_run(_cfg(tmp_path, "method=fdbh", "method_config.neighbour_pool=train",
                   "optim.epochs=1"), tmp_path / "b")
    import json as _json

    kinds = [_json.loads(p.read_text())["kind"] for p in (tmp_path / "cache").glob("*.json")]
    assert sorted(kinds) == ["clean", "views"]
