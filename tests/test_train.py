"""Training loop: config and presets, every method, determinism, kill/Ctrl-C + resume, FGSM, the workflow."""

import json
import os

import numpy as np
import pytest
import torch

from patchmix import config, data, training
from patchmix.choices import METHODS
from patchmix.errors import ConfigError
from patchmix.training.checkpoint import CHECKPOINT_FORMAT
from patchmix.training.interrupt import StopCheck
from patchmix.training.methods import Method, make_loss, make_mixer
from patchmix.training.model import build_model
from patchmix.training.optim import build_optimizer, lr_at
from patchmix.training.pipeline import TrainLoader
from patchmix.training.streams import EpochStreams

TINY = {"data.limit_train": 192, "train.epochs": 2, "train.batch_size": 32, "model.width": 8,
        "run.fgsm_epsilons": "", "run.seeds": "0"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return data.load_dataset("digits", limit_train=192)


def tiny_cfg(**extra):
    return config.resolve(None, None, {**TINY, **extra})


def tiny_policy(ds, P=4):
    from patchmix.search import Policy

    rng = np.random.default_rng(0)
    pairs = np.array([[0, 0], [1, 7], [3, 8], [4, 9]])
    return Policy(pairs, rng.random((4, P, P)) < 0.5, ds.classes, P)


# --------------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------------


def test_paper_cifar_preset_is_the_papers_recipe():
    cfg = config.preset("paper-cifar")
    t = cfg.train
    assert (t.epochs, t.batch_size, t.lr, t.momentum, t.nesterov, t.weight_decay, t.schedule) == \
        (400, 100, 0.1, 0.9, True, 5e-4, "cosine")
    assert cfg.model.grid_size == 4 and t.alpha == 1.0 and cfg.model.name == "resnet32"
    assert (cfg.search.population, cfg.search.generations, cfg.search.cxpb, cfg.search.mutpb) == \
        (500, 250, 0.5, 0.3)
    # flags still override the preset; it names no data, so the command line needs a CIFAR folder
    assert config.resolve("paper-cifar", None, {"train.epochs": "2", "data.source": "cifar"}).train.epochs == 2
    with pytest.raises(ConfigError, match="--preset paper-cifar needs a CIFAR folder"):
        config.resolve("paper-cifar", None, {"train.epochs": "2"})
    # the schedule of the preset: cosine from 0.1 to 0 over 400 epochs
    assert lr_at(cfg, 0, 400 * 500, 500) == pytest.approx(0.1)
    assert lr_at(cfg, 200 * 500, 400 * 500, 500) == pytest.approx(0.05)
    assert lr_at(cfg, 400 * 500 - 1, 400 * 500, 500) < 1e-6


def test_mnist5k_preset_runs_the_comparison_on_real_digits():
    cfg = config.preset("mnist5k")
    assert cfg.data.source == "mnist5k" and cfg.data.augment == "auto" and cfg.model.name == "auto"
    assert cfg.model.grid_size == 4 and cfg.train.batch_size == 128 and cfg.train.schedule == "cosine"
    assert (cfg.search.population, cfg.search.generations) == (500, 250) and cfg.run.seeds == (0, 1, 2)
    assert config.resolve("mnist5k", None, {"data.source": "/data/my.csv.gz"}).data.source == "/data/my.csv.gz"


def test_fmnist_preset_runs_the_comparison_on_fashion_mnist():
    """The measured budget (docs/results.md, "Fashion-MNIST: data and budget"): 10,000 of the training images,
    small_resnet, 5 seeds; the search at the paper's scale."""
    cfg = config.preset("fmnist")
    assert cfg.data.source == "fashion-mnist" and cfg.data.train_subset == 10000 and cfg.model.name == "small_resnet"
    assert cfg.data.augment in ("crop", "crop-flip") and cfg.run.seeds == (0, 1, 2, 3, 4)
    assert (cfg.search.population, cfg.search.generations) == (500, 250) and cfg.model.grid_size == 4
    every = config.resolve("fmnist", None, {"data.train_subset": "none"})  # all 60,000 training images
    assert every.data.train_subset is None


def test_config_file_round_trip_and_errors(tmp_path):
    cfg = config.resolve("paper-cifar", None, {"run.seeds": "3,4", "train.guided_fractions": "0.5,0.25,0.25",
                                              "data.source": "/data/cifar-10-batches-py"})
    cfg.save(tmp_path / "c.json")
    again = config.resolve(None, str(tmp_path / "c.json"))
    assert again == cfg and again.run.seeds == (3, 4)
    assert config.resolve(None, str(tmp_path / "c.json"), {"train.lr": 0.2}).train.lr == 0.2
    for bad in ({"train.nope": 1}, {"nope.x": 1}, {"train.epochs": "ten"}, {"train.epochs": 0},
                {"run.methods": "base,foo"}, {"data.format": "mnist"}, {"train.alpha": -1}):
        with pytest.raises(config.ConfigError):
            config.resolve(None, None, bad)
    with pytest.raises(config.ConfigError):
        config.resolve("nope")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(config.ConfigError, match="not valid JSON"):
        config.load(tmp_path / "bad.json")
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(tmp_path / "missing.json")


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains(digits, method):
    cfg = tiny_cfg()
    policy = tiny_policy(digits) if method == "guided" else None
    net, res = training.train_model(cfg, digits, method, 0, policy=policy)
    assert len(res["history"]) == 2 and 0.0 <= res["test_acc"] <= 1.0
    assert all(np.isfinite(h["train_loss"]) for h in res["history"])
    out = net(torch.rand(3, 1, 8, 8))
    assert out[0].shape == (3, 10) and out[1].shape == (3, 10, 4, 4)


def test_guided_batches_hold_three_parts(digits):
    cfg = tiny_cfg(**{"train.guided_fractions": "0.25,0.25,0.5"})
    policy = tiny_policy(digits)
    method = Method("guided", cfg, digits, training.Runtime(torch.device("cpu")), policy)
    assert method.counts == (8, 8, 16) and method.load_size == 16 and method.batch_size == 32
    index_batches, mixer = method.epoch(EpochStreams(0, 0))
    assert len(index_batches) == method.steps_per_epoch == 6
    idx = index_batches[0]
    assert idx.shape == (16 + 2 * 16,)
    x, y = digits.train.get(idx)
    x = data.to_float(x, "cpu")
    mb = mixer(x, y)
    assert len(mb) == 32 and mb.mask.shape == (32, 4, 4)
    assert torch.all(mb.lam[:8] == 1) and torch.equal(mb.images[:8], x[:8])
    # the plain parts walk the epoch's order: no image twice within an epoch
    plain = torch.cat([b[:16] for b in index_batches])
    assert plain.unique().numel() == plain.numel() == 6 * 16
    pairs = {tuple(p) for p in policy.pairs.tolist()}
    for a, b, m in zip(mb.target_a[16:].tolist(), mb.target_b[16:].tolist(), mb.mask[16:], strict=False):
        assert (a, b) in pairs
        k = policy.pairs.tolist().index([a, b])
        assert torch.equal(m, torch.from_numpy(policy.masks[k]))


def _weights(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_deterministic_with_seed_and_different_across_seeds(digits):
    cfg = tiny_cfg(**{"train.epochs": 1})
    a, ra = training.train_model(cfg, digits, "random", 0)
    b, rb = training.train_model(cfg, digits, "random", 0)
    c, _ = training.train_model(cfg, digits, "random", 1)
    assert _same(_weights(a), _weights(b)) and ra["test_acc"] == rb["test_acc"]
    assert not _same(_weights(a), _weights(c))


@pytest.mark.parametrize("method,stop", [("random", 3), ("guided", 6), ("cutmix", 12)])
def test_resume_after_kill_ends_where_an_uninterrupted_run_ends(digits, tmp_path, method, stop):
    """stop=3: mid-epoch (the Ctrl-C path: generators' states saved); stop=6: at an epoch boundary
    (6 steps per epoch); stop=12 kills after the 2nd epoch's boundary checkpoint of a 3-epoch run."""
    cfg = tiny_cfg(**{"train.epochs": 3, "data.limit_train": 192})
    policy = tiny_policy(digits) if method == "guided" else None
    ref, ref_res = training.train_model(cfg, digits, method, 5, policy=policy)
    ck = str(tmp_path / "ck.pt")
    with pytest.raises(training.Interrupted):
        training.train_model(cfg, digits, method, 5, policy=policy, checkpoint=ck, stop_after_steps=stop)
    saved = training.load_checkpoint(ck)
    assert not saved["complete"] and saved["epoch"] * 6 + saved["step"] == stop
    net, res = training.train_model(cfg, digits, method, 5, policy=policy, checkpoint=ck, resume=True)
    assert _same(_weights(ref), _weights(net))
    assert res["test_acc"] == ref_res["test_acc"]
    assert [h["train_loss"] for h in res["history"]] == [h["train_loss"] for h in ref_res["history"]]
    # a finished checkpoint resumes to its result at once
    _, again = training.train_model(cfg, digits, method, 5, policy=policy, checkpoint=ck, resume=True)
    assert again["test_acc"] == ref_res["test_acc"]
    # and the checkpoint rebuilds the model
    model, _, meta = training.model_from_checkpoint(ck, digits)
    assert meta["complete"] and _same(_weights(model), _weights(ref))


def test_resume_refuses_another_methods_checkpoint(digits, tmp_path):
    cfg = tiny_cfg(**{"train.epochs": 1})
    ck = str(tmp_path / "ck.pt")
    training.train_model(cfg, digits, "base", 0, checkpoint=ck)
    with pytest.raises(ValueError, match="holds method base"):
        training.train_model(cfg, digits, "mixup", 0, checkpoint=ck, resume=True)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        training.load_checkpoint(str(tmp_path / "junk.pt"))


def test_fgsm_and_evaluate(digits):
    cfg = tiny_cfg(**{"train.epochs": 1})
    net, _ = training.train_model(cfg, digits, "base", 0)
    rt = training.Runtime(torch.device("cpu"))
    clean = training.evaluate(net, digits.test, 100, rt)
    res = training.fgsm_evaluate(net, digits.test, [0.0, 0.1, 0.3], 100, rt)
    assert res["0"] == pytest.approx(clean["acc"])
    assert res["0.3"] <= res["0"]
    assert clean["n"] == len(digits.test)


def test_workflow_writes_everything(tmp_path):
    from patchmix.workflow import run_workflow

    cfg = tiny_cfg(**{"train.epochs": 1, "search.population": 8, "search.generations": 3, "run.show_samples": 4,
                      "run.fgsm_epsilons": "0.1"})
    out = str(tmp_path / "run")
    m = run_workflow(cfg, out, quiet=True)
    assert set(m["summary"]) == {"base", "mixup", "cutmix", "random", "guided"}
    for f in ("metrics.json", "config.json", "log.jsonl", "report.md", "policy.json", "policies/seed0.json",
              "search/seed0-logbook.json", "checkpoints/guided-seed0.pt", "checkpoints/search-seed0.npz",
              "figures/samples.png", "figures/guided_samples.png", "figures/fitness.png", "figures/pairs.png",
              "figures/accuracy.png", "figures/curves.png"):
        assert os.path.isfile(os.path.join(out, f)), f
    # every file the run wrote is one a fresh run may remove again (patchmix.workflow.rundir.RUN_FILES), nothing else
    from patchmix.workflow.rundir import RUN_FILES

    written = [os.path.relpath(os.path.join(d, f), out).replace(os.sep, "/") for d, _, fs in os.walk(out) for f in fs]
    assert [w for w in written if not RUN_FILES.fullmatch(w)] == []
    report = open(os.path.join(out, "report.md")).read()
    for f in m["figures"].values():
        assert f"]({f})" in report
    book = json.load(open(os.path.join(out, "search", "seed0-logbook.json")))
    assert [r["gen"] for r in book] == [0, 1, 2, 3] and all({"best", "mean", "worst"} <= set(r) for r in book)
    events = [json.loads(line)["event"] for line in open(os.path.join(out, "log.jsonl"))]
    assert events[0] == "start" and events[-1] == "done" and "search" in events and events.count("trained") == 5
    # resume of a finished run trains nothing and gives the same table
    m2 = run_workflow(config.load(os.path.join(out, "config.json")), out, resume=True, quiet=True)
    assert m2["summary"] == m["summary"]


# --------------------------------------------------------------------------------------------------
# reliability
# --------------------------------------------------------------------------------------------------


def test_a_crafted_checkpoint_is_refused_and_runs_no_code(digits, tmp_path):
    """A checkpoint is read with torch.load(weights_only=True): a file whose unpickling would run code (here:
    create a marker file) is refused with a CheckpointError naming the object, and nothing in it runs."""
    import pickle

    from patchmix.errors import CheckpointError
    from tests.conftest import CodeRunningPayload

    marker = tmp_path / "code-ran"
    blob = {"format": CHECKPOINT_FORMAT, "method": "base", "seed": 0, "epoch": 1, "step": 0,
            "complete": False, "model": CodeRunningPayload(marker)}
    torch.save(blob, tmp_path / "evil.pt")  # torch's zip format
    with open(tmp_path / "evil-pickle.pt", "wb") as f:  # a plain pickle
        pickle.dump(blob, f, protocol=2)
    cfg = tiny_cfg(**{"train.epochs": 1})
    for path in (str(tmp_path / "evil.pt"), str(tmp_path / "evil-pickle.pt")):
        with pytest.raises(CheckpointError, match="never unpickles"):
            training.load_checkpoint(path)
        with pytest.raises(CheckpointError):
            training.model_from_checkpoint(path, digits)
        with pytest.raises(CheckpointError):
            training.train_model(cfg, digits, "base", 0, checkpoint=path, resume=True)
    assert not marker.exists()


def test_checkpoints_hold_only_tensors_and_plain_containers(digits, tmp_path):
    """What train_model writes loads under weights_only=True, mid-epoch state included."""
    cfg = tiny_cfg(**{"train.epochs": 2})
    ck = str(tmp_path / "ck.pt")
    with pytest.raises(training.Interrupted):
        training.train_model(cfg, digits, "guided", 0, policy=tiny_policy(digits), checkpoint=ck, stop_after_steps=2)
    saved = torch.load(ck, weights_only=True)
    assert saved["mid"]["ranks"][0]["sums"].shape == (3,) and saved["step"] == 2


@pytest.mark.parametrize("method", METHODS)
def test_train_one_epoch_reads_nothing_from_the_device(digits, method):
    """The loop makes no host-device sync per step: a whole epoch runs with the model, the data, the mixing
    and the metric sums on the meta device, where any read of a tensor's value raises."""
    cfg = tiny_cfg(**{"data.limit_train": 64, "train.batch_size": 16})
    rt = training.Runtime(torch.device("meta"))
    net = build_model(cfg, digits).to(rt.device)
    plan = Method(method, cfg, digits, rt, tiny_policy(digits) if method == "guided" else None)
    index_batches = plan.index_batches(EpochStreams(0, 0), 0)
    ema = training.ModelEma(net, 0.99, warmup=True)
    with TrainLoader(plan, seed=0) as loader:  # uint8 batches mixed in the loader, then moved to meta
        batches = loader.epoch(0, index_batches)
        meter = training.TrainMeter(rt.device)
        done = training.train_one_epoch(net, batches, plan.loss, build_optimizer(cfg, net),
                                        schedule=plan.schedule(0), meter=meter, rt=rt, stop=StopCheck(rt),
                                        after_step=lambda step: ema.update(net, step + 1))
    assert done is None and meter.n == len(index_batches) * plan.batch_size and meter.sums.is_meta
    with pytest.raises((RuntimeError, NotImplementedError)):  # the meta device does catch a read
        meter.read()


# --------------------------------------------------------------------------------------------------
# the DataLoader pipeline, mix_off_epoch, model EMA, torch.compile
# --------------------------------------------------------------------------------------------------


def test_loader_workers_do_not_change_the_training(digits):
    """Crops, flips and mixing draw per batch from (seed, rank, epoch, step): the same weights with 0 or 2 worker
    processes, and the persistent workers are gone when the training returns."""
    import multiprocessing

    cfg = tiny_cfg(**{"train.epochs": 2, "data.augment": "crop-flip", "train.mix_mode": "pair"})
    a, _ = training.train_model(cfg, digits, "mix", 0)
    b, _ = training.train_model(cfg.override({"data.workers": 2}), digits, "mix", 0)
    assert _same(_weights(a), _weights(b))
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("method", ["random", "guided"])
def test_mix_off_epoch_trains_on_unmixed_batches_from_that_epoch(digits, method):
    cfg = tiny_cfg(**{"train.mix_off_epoch": 1})
    plan = Method(method, cfg, digits, training.Runtime(torch.device("cpu")),
                           tiny_policy(digits) if method == "guided" else None)
    with TrainLoader(plan, seed=0) as loader:
        assert loader.collate.switch is plan.switch, "one switch decides for the index batches and the collate"
        for epoch, mixing in ((0, True), (1, False)):
            index_batches = plan.index_batches(EpochStreams(0, epoch), epoch)
            loaded = plan.load_size + (2 * plan.counts[2] if method == "guided" else 0)  # + the guided pairs
            assert all(len(b) == (loaded if mixing else plan.batch_size) for b in index_batches)
            batch = next(iter(loader.epoch(epoch, index_batches)))
            assert len(batch) == plan.batch_size and bool((batch.lam < 1).any()) == mixing
            assert plan.mixing(epoch) == mixing


def test_model_ema_is_timms_model_ema_v3():
    from patchmix.training import ModelEma

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = ModelEma(net, 0.99, warmup=True)
    # timm's get_decay: 0 for the first update (a copy), then the warm-up 1 - (1 + s) ** (-2/3), capped by decay
    assert ema.get_decay(1) == 0.0 and ema.get_decay(2) == pytest.approx(1 - 2 ** (-2 / 3))
    assert ema.get_decay(10**6) == 0.99 and ModelEma(net, 0.9).get_decay(5) == 0.9
    ref = {k: v.clone().double() for k, v in net.state_dict().items()}
    for step in range(1, 6):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net.train()(torch.randn(8, 3))  # moves the BatchNorm statistics and num_batches_tracked
        ema.update(net, step)
        d = ema.get_decay(step)
        for k, v in net.state_dict().items():
            ref[k] = v.double().clone() if not v.is_floating_point() else d * ref[k] + (1 - d) * v.double()
    for k, v in ema.module.state_dict().items():
        torch.testing.assert_close(v.double(), ref[k], rtol=1e-6, atol=1e-6)
    assert int(ema.module[1].num_batches_tracked) == 5, "integer buffers are copied, not averaged"


def test_averaged_model_reads_its_counter_on_the_host():
    """Why ModelEma is a small class and not swa_utils.AveragedModel: AveragedModel.update_parameters reads
    n_averaged on the host every update (a device sync on CUDA), which the meta device refuses."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    net = torch.nn.Linear(3, 4, device="meta")
    averaged = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), device="meta")
    with pytest.raises((RuntimeError, NotImplementedError)):
        averaged.update_parameters(net)
    training.ModelEma(net, 0.9).update(net, 1)  # no read


def test_ema_is_evaluated_checkpointed_and_resumes_exactly(digits, tmp_path):
    cfg = tiny_cfg(**{"train.epochs": 2, "train.ema_decay": 0.9, "train.ema_warmup": "true"})
    ref, ref_res = training.train_model(cfg, digits, "cutmix", 1)
    assert 0 <= ref_res["ema_test_acc"] <= 1 and all("ema_val_acc" in h for h in ref_res["history"])
    ck = str(tmp_path / "ck.pt")
    with pytest.raises(training.Interrupted):
        training.train_model(cfg, digits, "cutmix", 1, checkpoint=ck, stop_after_steps=3)
    _, res = training.train_model(cfg, digits, "cutmix", 1, checkpoint=ck, resume=True)
    assert res["ema_test_acc"] == ref_res["ema_test_acc"]
    assert [h["ema_val_acc"] for h in res["history"]] == [h["ema_val_acc"] for h in ref_res["history"]]
    ema = torch.load(ck, weights_only=True)["ema"]
    assert ema is not None and set(ema) == set(ref.state_dict())


def test_compile_compiles_the_model(digits, monkeypatch):
    calls = []
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append(kw) or real(model, **kw))
    torch._dynamo.reset()
    cfg = tiny_cfg(**{"train.epochs": 1, "run.compile": "aot_eager"})
    eager, _ = training.train_model(tiny_cfg(**{"train.epochs": 1}), digits, "random", 0)
    compiled, res = training.train_model(cfg, digits, "random", 0)
    assert calls == [{"backend": "aot_eager"}] and np.isfinite(res["history"][0]["train_loss"])
    for k, v in _weights(eager).items():
        torch.testing.assert_close(_weights(compiled)[k], v, rtol=1e-4, atol=1e-5)
    with pytest.raises(config.ConfigError, match="unknown torch.compile backend"):
        training.train_model(tiny_cfg(**{"run.compile": "nope"}), digits, "base", 0)


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_an_infinite_alpha_is_a_configuration_error_not_a_hang(tmp_path, capsys, digits, mode):
    """``patchmix train --method mixup --mix-mode batch --alpha inf`` hung in Python's betavariate (batch mode) or
    trained on NaN images and exited 0 (elem mode); now it exits 2 naming the alpha, at once."""
    import signal

    from patchmix.cli import main

    def hung(*_):
        raise TimeoutError("patchmix train did not return")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    try:
        rc = main(["train", "--method", "mixup", "--mix-mode", mode, "--alpha", "inf", "--epochs", "1", "--seeds",
                   "0", "--set", "data.limit_train=64", "--set", "model.width=8", "--quiet", "--out",
                   str(tmp_path / "out")])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert rc == 2 and "alpha" in capsys.readouterr().err
    cfg = tiny_cfg()
    cfg.train.alpha = float("inf")  # past the configuration's own checks: the mixers refuse it too
    for method in ("mixup", "cutmix", "random", "mix"):
        with pytest.raises(config.ConfigError, match=rf"method '{method}': Mix: \w+_alpha must be a finite number"):
            make_mixer(method, cfg)
    for method, key, bad in (("random", "label_smoothing", 1.0), ("base", "label_smoothing", float("nan")),
                             ("random", "patch_weight", float("inf"))):
        bad_cfg = tiny_cfg()
        setattr(bad_cfg.train, key, bad)  # past the configuration's checks, as above
        with pytest.raises(config.ConfigError, match=f"method '{method}': PatchMixLoss: {key} must be a finite"):
            make_loss(method, bad_cfg)
    plan = Method("guided", cfg, digits, training.Runtime(torch.device("cpu")), tiny_policy(digits))
    with pytest.raises(config.ConfigError, match=r"method 'guided': RandomPatchMix: alpha must be a finite number"):
        plan.mixer()


def test_mixing_knobs_reach_the_methods():
    cfg = tiny_cfg(**{"train.mix_mode": "batch", "train.mixup_alpha": 0.4, "train.cutmix_minmax": "0.2,0.8",
                      "train.mix_weights": "1,2,0", "train.mix_prob": 0.5})
    mix = make_mixer("mix", cfg)
    assert mix.mode == "batch" and mix.alphas["mixup"] == 0.4 and mix.cutmix_minmax == (0.2, 0.8)
    assert mix.methods == ("mixup", "cutmix") and mix.weights[1] == pytest.approx(2 / 3) and mix.prob == 0.5
    assert make_mixer("cutmix", cfg).methods == ("cutmix",)
    with pytest.raises(config.ConfigError, match="method 'mixup'"):
        make_mixer("mixup", tiny_cfg(**{"train.mixup_alpha": 0}))
    for bad in ({"train.mix_mode": "half"}, {"train.mix_weights": "0,0,0"}, {"train.cutmix_minmax": "0.8,0.2"},
                {"train.ema_decay": 1.0}, {"train.mix_off_epoch": -1}, {"data.prefetch_factor": 0}):
        with pytest.raises(config.ConfigError):
            tiny_cfg(**bad)
