"""Starting from saved weights: ``load_weights`` (torchvision / timm / patchmix names, safetensors), ``--init``
(recorded with its sha256, the resume rules), ``--freeze backbone`` (a frozen backbone stays bit-identical),
``train.lr_mult`` (per-group learning rates) and the CAM-ready model options."""

import json
import os
import pickle
import sys

import pytest
import torch

from patchmix.cli import main
from patchmix.config import Config
from patchmix.errors import CheckpointError, ConfigError
from patchmix.models import create_model, load_weights
from patchmix.training.optim import lr_at, param_groups, set_lr
from tests.conftest import CodeRunningPayload

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--epochs", "1", "--set", "data.limit_train=160", "--batch-size", "32", "--set", "run.fgsm_epsilons=",
        "--quiet"]


def torchvision_resnet50_shapes() -> dict[str, tuple]:
    """torchvision's ``resnet50().state_dict()`` names and shapes, written out from torchvision's definition
    (``torchvision/models/resnet.py``: Bottleneck v1.5, expansion 4, blocks 3, 4, 6, 3, ``downsample.0/1`` on the
    first block of each stage, ``fc``). timm's ``resnet50`` uses the same names (``timm/models/resnet.py``)."""
    shapes: dict[str, tuple] = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix, c):
        shapes.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                       f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()})

    bn("bn1", 64)
    cin = 64
    for stage, (blocks, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True), start=1):
        for j in range(blocks):
            p = f"layer{stage}.{j}"
            shapes[f"{p}.conv1.weight"] = (planes, cin, 1, 1)
            bn(f"{p}.bn1", planes)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            bn(f"{p}.bn3", planes * 4)
            if j == 0:
                shapes[f"{p}.downsample.0.weight"] = (planes * 4, cin, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
            cin = planes * 4
    shapes.update({"fc.weight": (1000, 2048), "fc.bias": (1000,)})
    return shapes


def random_state(shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {k: (torch.randint(0, 100, s, generator=g) if k.endswith("num_batches_tracked") else
                torch.randn(s, generator=g)) for k, s in shapes.items()}


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    shapes = torchvision_resnet50_shapes()
    params = sum(torch.Size(s).numel() for k, s in shapes.items() if "running" not in k and "num_batches" not in k)
    assert params == 25_557_032  # torchvision's published count: the name list is the whole network
    state = random_state(shapes)
    path = tmp_path_factory.mktemp("weights") / "resnet50-torchvision.pth"
    torch.save(state, path)
    return path, state


def test_a_torchvision_resnet50_file_loads_completely(resnet50_file):
    path, state = resnet50_file
    model = create_model("resnet50", 200, last_stride=1)
    fresh_fc = model.head.fc.weight.detach().clone()
    report = load_weights(model, path)
    own = model.state_dict()
    for k, v in state.items():
        if not k.startswith("fc."):
            assert torch.equal(own["backbone." + k], v), k
    assert len(report.loaded) == len(state) - 2 and report.names == "torchvision/timm"
    assert report.fresh == {"head.fc": "the file has 1000 classes, this model 200", "head.patch_fc": "not in the file"}
    assert torch.equal(model.head.fc.weight, fresh_fc)  # started fresh: untouched
    line = str(report)
    assert "\n" not in line and "loaded 318 tensors" in line and "head.fc (the file has 1000 classes" in line
    # the same class count keeps the image classifier; a legacy file without num_batches_tracked loads too
    legacy = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    model = create_model("resnet50", 1000)
    report = load_weights(model, legacy)
    assert torch.equal(model.head.fc.weight, state["fc.weight"]) and list(report.fresh) == ["head.patch_fc"]


def test_a_safetensors_file_loads_like_the_pth(resnet50_file, tmp_path, monkeypatch):
    _, state = resnet50_file
    safetensors = pytest.importorskip("safetensors.torch")
    path = str(tmp_path / "resnet50.safetensors")
    safetensors.save_file(state, path)
    model = create_model("resnet50", 10)
    report = load_weights(model, path)
    assert len(report.loaded) == len(state) - 2
    assert torch.equal(model.backbone.layer4[2].conv3.weight, state["layer4.2.conv3.weight"])
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # the package missing: one clear error naming it
    with pytest.raises(CheckpointError, match="needs the 'safetensors' package"):
        load_weights(model, path)


def test_torchvision_mobilenet_v2_names_map_onto_mobilenetv2():
    """torchvision's ``mobilenet_v2`` layout (a block's last conv and its BN at ``conv.<k>``, ``conv.<k+1>``; the
    classifier at ``classifier.1``), written out from its definition."""
    model = create_model("mobilenetv2", 10)
    stages = ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1))
    state, cin, i = {"features.0.0.weight": torch.randn(32, 3, 3, 3)}, 32, 1

    def bn(prefix, c):
        state.update({f"{prefix}.{n}": torch.rand(c) for n in ("weight", "bias", "running_mean", "running_var")})

    bn("features.0.1", 32)
    for t, c, n in stages:
        for _ in range(n):
            hidden, k = cin * t, 0
            if t != 1:
                state[f"features.{i}.conv.0.0.weight"] = torch.randn(hidden, cin, 1, 1)
                bn(f"features.{i}.conv.0.1", hidden)
                k = 1
            state[f"features.{i}.conv.{k}.0.weight"] = torch.randn(hidden, 1, 3, 3)
            bn(f"features.{i}.conv.{k}.1", hidden)
            state[f"features.{i}.conv.{k + 1}.weight"] = torch.randn(c, hidden, 1, 1)
            bn(f"features.{i}.conv.{k + 2}", c)
            cin, i = c, i + 1
    state["features.18.0.weight"] = torch.randn(1280, 320, 1, 1)
    bn("features.18.1", 1280)
    state.update({"classifier.1.weight": torch.randn(1000, 1280), "classifier.1.bias": torch.randn(1000)})
    report = load_weights(model, state)
    assert report.names == "torchvision" and len(report.loaded) == len(state) - 2
    assert torch.equal(model.backbone.features[2].conv[2][1].running_var, state["features.2.conv.3.running_var"])


def test_timm_mobilenetv2_names_map_onto_mobilenetv2():
    """timm's ``mobilenetv2_100`` layout (``timm/models/efficientnet.py``: ``conv_stem``, ``bn1``, blocks grouped by
    stage, a depthwise-separable first block ``conv_dw, bn1, conv_pw, bn2``, inverted residuals ``conv_pw, bn1,
    conv_dw, bn2, conv_pwl, bn3``, ``conv_head``, ``bn2``, ``classifier``), written out from its definition."""
    model = create_model("mobilenetv2", 10)
    stages = ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1))
    state, cin = {"conv_stem.weight": torch.randn(32, 3, 3, 3)}, 32

    def bn(prefix, c):
        state.update({f"{prefix}.{n}": torch.rand(c) for n in ("weight", "bias", "running_mean", "running_var")})

    bn("bn1", 32)
    for s, (t, c, n) in enumerate(stages):
        for j in range(n):
            p, hidden = f"blocks.{s}.{j}", cin * t
            if t == 1:
                state[f"{p}.conv_dw.weight"] = torch.randn(cin, 1, 3, 3)
                bn(f"{p}.bn1", cin)
                state[f"{p}.conv_pw.weight"] = torch.randn(c, cin, 1, 1)
                bn(f"{p}.bn2", c)
            else:
                state[f"{p}.conv_pw.weight"] = torch.randn(hidden, cin, 1, 1)
                bn(f"{p}.bn1", hidden)
                state[f"{p}.conv_dw.weight"] = torch.randn(hidden, 1, 3, 3)
                bn(f"{p}.bn2", hidden)
                state[f"{p}.conv_pwl.weight"] = torch.randn(c, hidden, 1, 1)
                bn(f"{p}.bn3", c)
            cin = c
    state["conv_head.weight"] = torch.randn(1280, 320, 1, 1)
    bn("bn2", 1280)
    state.update({"classifier.weight": torch.randn(10, 1280), "classifier.bias": torch.randn(10)})
    report = load_weights(model, state)
    assert report.names == "timm" and len(report.loaded) == len(state) and list(report.fresh) == ["head.patch_fc"]
    assert torch.equal(model.backbone.features[17].conv[2][0].weight, state["blocks.6.0.conv_pwl.weight"])
    assert torch.equal(model.head.fc.weight, state["classifier.weight"])


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    """A finished Random PatchMix training on the digits (10 classes, small_cnn): the file to start from."""
    out = str(tmp_path_factory.mktemp("init") / "source")
    assert main(["train", "--method", "random", *TINY, "--out", out]) == 0
    return os.path.join(out, "checkpoints", "random-seed0.pt")


def test_a_patchmix_checkpoint_loads_into_a_model_with_another_class_count(digits_checkpoint):
    ckpt = torch.load(digits_checkpoint, weights_only=True)
    model = create_model("small_cnn", 3, in_channels=1, width=16)
    report = load_weights(model, digits_checkpoint)
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, ckpt["model"]["model.backbone." + k]), k
    assert report.fresh == {"head.fc": "the file has 10 classes, this model 3",
                            "head.patch_fc": "the file has 10 classes, this model 3"}
    assert set(report.ignored) == {"mean", "std"} and report.kind.startswith("patchmix checkpoint (method random")
    same = create_model("small_cnn", 10, in_channels=1, width=16)
    load_weights(same, digits_checkpoint)  # the same class count keeps both classifiers
    assert torch.equal(same.head.patch_fc.weight, ckpt["model"]["model.head.patch_fc.weight"])


def test_a_frozen_backbone_stays_bit_identical_through_training(digits_checkpoint, tmp_path, capsys):
    out = str(tmp_path / "probe")
    rc = main(["train", "--method", "random", *TINY, "--epochs", "2", "--init", digits_checkpoint,
               "--freeze", "backbone", "--out", out])
    assert rc == 0
    before = torch.load(digits_checkpoint, weights_only=True)["model"]
    after = torch.load(os.path.join(out, "checkpoints", "random-seed0.pt"), weights_only=True)
    backbone = [k for k in before if k.startswith("model.backbone.")]
    assert backbone and any("running_mean" in k for k in backbone)
    for k in backbone:  # weights and BatchNorm statistics
        assert torch.equal(before[k], after["model"][k]), k
    for k in ("model.head.fc.weight", "model.head.patch_fc.weight"):  # the heads trained (a linear probe)
        assert not torch.equal(before[k], after["model"][k]), k
    groups = after["optimizer"]["param_groups"]
    assert sum(len(g["params"]) for g in groups) == 4  # the two classifiers' weights and biases only


def test_init_records_the_file_and_its_sha256_and_resume_needs_the_same(digits_checkpoint, tmp_path, capsys):
    import hashlib

    src = tmp_path / "start.pt"
    src.write_bytes(open(digits_checkpoint, "rb").read())
    out = str(tmp_path / "run")
    args = ["train", "--method", "base", *TINY, "--init", str(src), "--out", out]
    assert main(args) == 0
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["train"]["init"] == str(src) and cfg["train"]["init_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0  # the same file: the run continues (here: it is finished)
    capsys.readouterr()
    other = tmp_path / "other.pt"
    other.write_bytes(src.read_bytes() + b"\0")  # another file (and another hash)
    rc = main(["train", "--method", "base", *TINY, "--init", str(other), "--out", out, "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and "--resume: the settings differ" in err and "train.init" in err and len(err.splitlines()) == 1
    rc = main(["train", "--method", "base", *TINY, "--out", out, "--resume"])  # the run started from a file
    assert rc == 2 and "train.init" in capsys.readouterr().err
    src.write_bytes(src.read_bytes() + b"\0")  # the recorded file changed
    rc = main(["train", "--method", "base", "--config", os.path.join(out, "config.json"), "--out", out, "--resume",
               "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "the file changed since its sha256 was recorded" in err, err


def test_bad_weight_files_exit_2_with_one_line(digits_checkpoint, tmp_path, capsys):
    state = torch.load(digits_checkpoint, weights_only=True)["model"]
    wrong = {k: (torch.zeros(8, 1, 3, 3) if k == "model.backbone.features.0.weight" else v) for k, v in state.items()}
    cases = {"misfit.pt": (wrong, "backbone.features.0.weight has shape (8, 1, 3, 3) in the file, (16, 1, 3, 3) here"),
             "list.pt": ([1, 2, 3], "is not a state dict"),
             "numbers.pt": ({"a": 1}, "is not a state dict"),
             "text.pth": (None, "cannot read weights file")}
    for name, (obj, needle) in cases.items():
        path = tmp_path / name
        if obj is None:
            path.write_text("not a checkpoint\n")
        else:
            torch.save(obj, path)
        out = tmp_path / f"out-{name}"
        rc = main(["train", "--method", "base", *TINY, "--init", str(path), "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, (name, err)
        assert not out.exists()  # refused before anything is written
    marker, evil = tmp_path / "code-ran", tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"conv1.weight": CodeRunningPayload(marker)}, f, protocol=2)
    rc = main(["train", "--method", "base", *TINY, "--init", str(evil), "--out", str(tmp_path / "evil")])
    assert rc == 2 and "never unpickles" in capsys.readouterr().err and not marker.exists()


def test_lr_mult_groups_get_their_learning_rates():
    model = create_model("resnet50", 10)
    groups = param_groups(model, 0.01, "layer4:10,classifier:10,layer4.2.conv3:3")
    by_name = {n: g["lr"] for g in groups for n in g["names"]}
    assert by_name["backbone.layer4.0.conv1.weight"] == pytest.approx(0.1)
    assert by_name["backbone.layer4.2.conv3.weight"] == pytest.approx(0.03)  # the longest pattern wins
    assert by_name["head.fc.weight"] == by_name["head.patch_fc.bias"] == pytest.approx(0.1)
    assert by_name["backbone.layer3.5.conv1.weight"] == by_name["backbone.conv1.weight"] == pytest.approx(0.01)
    assert len(by_name) == len(list(model.parameters()))
    opt = torch.optim.SGD([{k: v for k, v in g.items() if k != "names"} for g in groups], lr=0.01)
    set_lr(opt, 0.5)  # the schedule sets the base rate; each group keeps its multiple
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([0.5, 1.5, 5.0])
    probe = param_groups(create_model("resnet50", 10), 0.01, {"classifier": 10}, freeze="backbone")
    assert [n for g in probe for n in g["names"]] == ["head.fc.weight", "head.fc.bias", "head.patch_fc.weight",
                                                      "head.patch_fc.bias"]
    with pytest.raises(ConfigError, match="'layer5' names no parameter"):
        param_groups(model, 0.01, "layer5:10")
    for bad in ("layer4", "layer4:0", "layer4:nan", "layer4:2,layer4:3"):
        with pytest.raises(ConfigError, match="train.lr_mult"):
            Config().override({"train.lr_mult": bad})


def test_wsolevaluation_step_schedule():
    cfg = Config().override({"train.schedule": "step", "train.lr_step_epochs": 15, "train.lr": 1.0,
                             "train.epochs": 50})
    assert [lr_at(cfg, e * 10, 500, 10) for e in (0, 14, 15, 29, 30, 45)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.001])


def test_cam_ready_feature_maps():
    x = torch.zeros(1, 3, 224, 224)
    default, wsol = create_model("resnet50", 10).eval(), create_model("resnet50", 10, last_stride=1).eval()
    assert default.features(x).shape[-2:] == (7, 7) and wsol.features(x).shape[-2:] == (14, 14)
    assert {k: v.shape for k, v in default.state_dict().items()} == {k: v.shape for k, v in wsol.state_dict().items()}
    for name in ("small_cnn", "small_resnet", "resnet32"):  # 64 x 64 inputs end at 8 x 8 or finer
        assert create_model(name, 10).eval().features(torch.zeros(1, 3, 64, 64)).shape[-1] >= 8, name
    with pytest.raises(ValueError, match="last_stride"):
        create_model("resnet50", 10, last_stride=3)


def test_the_wsol_preset_needs_data_and_last_stride_needs_resnet50(tmp_path, capsys):
    out = tmp_path / "wsol"
    rc = main(["train", "--method", "base", "--preset", "wsol-cub", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "--data" in err and "wsolevaluation's layout" in err and not out.exists(), err
    rc = main(["train", "--method", "base", *TINY, "--set", "model.last_stride=1", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "model.last_stride applies to resnet50, not small_cnn" in err and not out.exists(), err


def test_the_python_api_example_of_docs_transfer_runs(resnet50_file, capsys):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "transfer.md").read_text()
    block = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "param_groups(" in b]
    assert len(block) == 1
    exec(compile(block[0].replace("resnet50-imagenet.pth", str(resnet50_file[0])), "docs/transfer.md", "exec"), {})
    assert "loaded 318 tensors" in capsys.readouterr().out


def test_the_transfer_study_runs_probe_finetune_and_scratch(tmp_path, capsys):
    """bench/transfer_study.py at toy size: every pretrained checkpoint of a run folder gets a linear probe and a
    fine-tune on the target, beside a from-scratch row; the tables and the paired differences are written."""
    from bench.transfer_study import cli as study

    run = str(tmp_path / "run")
    assert main(["run", "--methods", "base,random", "--seeds", "0,1", "--epochs", "1", "--threads", "1", "--quiet",
                 "--set", "run.fidelity_individuals=0", "--out", run]) == 0
    out = str(tmp_path / "transfer")
    assert study([run, "--out", out, "--seeds", "0,1", "--probe-epochs", "1", "--finetune-epochs", "1",
                  "--target", "digits", "--threads", "1"]) == 0
    doc = json.load(open(os.path.join(out, "transfer.json")))
    assert doc["methods"] == ["base", "random"] and len(doc["rows"]["probe"]) == len(doc["rows"]["finetune"]) == 4
    assert len(doc["rows"]["scratch"]) == 2
    assert doc["paired"]["finetune"]["random"]["base"]["n"] == 2  # Base minus Random PatchMix, seed by seed
    text = open(os.path.join(out, "transfer.md")).read()
    assert "| Random PatchMix |" in text and "none (from scratch)" in text and "minus Random PatchMix" in text
    # the probe kept the pretrained backbone: its first convolution equals the checkpoint's
    probe = torch.load(os.path.join(out, "probe-random-seed0", "checkpoints", "base-seed0.pt"), weights_only=True)
    pre = torch.load(os.path.join(run, "checkpoints", "random-seed0.pt"), weights_only=True)
    key = next(k for k in pre["model"] if "backbone" in k and k.endswith("weight"))
    assert torch.equal(probe["model"][key], pre["model"][key])
