"""The localisation workflow: `patchmix run` on a dataset with boxes scores every job's CAMs (thresholds chosen
on val, scores on test), reports the methods beside the centre baseline with paired differences and draws the CAM
figure; `patchmix eval --localization` prints the same scores for a checkpoint."""

import json
import os

import numpy as np
import pytest
import torch

from patchmix import data
from patchmix.cli import main
from patchmix.localization import BoxAccumulator, centre_gaussian
from patchmix.workflow import localize
from tests.test_fmnist_loc import write_items

TINY = ["--format", "fmnist-loc", "--epochs", "1", "--batch-size", "16", "--threads", "1",
        "--set", "model.name=small_cnn", "--set", "run.fidelity_individuals=0", "--quiet"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One run of three methods and two seeds on a tiny fmnist-loc built from idx files written here."""
    root = write_items(tmp_path_factory.mktemp("fm"), per_class=6, test_per_class=2)
    out = str(tmp_path_factory.mktemp("run"))
    rc = main(["run", "--data", root, *TINY, "--methods", "base,cutmix,random", "--seeds", "0,1",
               "--set", "run.cam_heads=image,patch", "--out", out])
    assert rc == 0
    with open(os.path.join(out, "metrics.json")) as f:
        return root, out, json.load(f)


def test_split_scores_match_the_accumulators_on_the_same_maps():
    ds = data.load_dataset(write_items_tmp(), format="fmnist-loc")
    maps = localize.centre_maps
    got = localize.split_scores(maps, ds.test, batch_size=7, v1_tau_index=10)
    cams = centre_gaussian(len(ds.test), (64, 64))
    ref = BoxAccumulator(iou_thresholds=localize.IOU_LEVELS)
    ref.update(cams, ds.test.boxes)
    assert got["v2"].value == ref.compute().value and got["count"] == len(ds.test)
    assert "top1" not in got and "top1_loc" not in got and 0 <= got["gt_known_at_tau"] <= 1
    assert 0 <= got["pxap"] <= 100


def write_items_tmp():
    import tempfile

    return write_items(tempfile.mkdtemp(), per_class=4, test_per_class=2)


def test_every_job_is_scored_and_the_report_shows_the_table(tiny_run):
    _, out, m = tiny_run
    for r in m["results"]:
        loc = r["localization"]
        assert set(loc) == ({"image", "patch"} if r["method"] == "random" else {"image"})
        s = loc["image"]
        assert s["split"] == "test" and s["count"] == 20
        for k in localize.SCORE_KEYS:
            assert 0 <= s[k] <= 100, k
        assert s["top1_loc"] <= min(s["top1"], s["gt_known_loc"]) + 1e-9
        assert set(s["thresholds"]["v2"]) == {"30", "50", "70"}
    summary = m["localization"]
    assert set(summary["heads"]) == {"image", "patch"}
    assert set(summary["heads"]["image"]["summary"]) == {"base", "cutmix", "random"}
    assert summary["heads"]["image"]["summary"]["base"]["maxboxacc_v2"]["n"] == 2
    assert summary["heads"]["image"]["paired"]["maxboxacc_v2"]["base"]["cutmix"]["n"] == 2
    assert "top1" not in summary["centre"] and 0 <= summary["centre"]["maxboxacc_v2"] <= 100
    report = open(os.path.join(out, "report.md")).read()
    assert "## Weakly supervised localisation" in report and "| centre baseline |" in report
    assert "### CAM of the patch classifier" in report and "figures/cams.png" in report
    assert os.path.getsize(os.path.join(out, "figures", "cams.png")) > 1000


def test_eval_localization_prints_and_writes_the_scores(tiny_run, tmp_path, capsys):
    root, out, m = tiny_run
    ck = os.path.join(out, "checkpoints", "random-seed0.pt")
    js = str(tmp_path / "eval.json")
    capsys.readouterr()
    assert main(["eval", ck, "--data", root, "--epsilons", "", "--localization", "--json", js]) == 0
    text = capsys.readouterr().out
    assert "MaxBoxAccV2" in text and "top-1 loc" in text and "PxAP" in text
    row = json.load(open(js))[0]
    ran = next(r for r in m["results"] if r["method"] == "random" and r["seed"] == 0)["localization"]["image"]
    for k in ("maxboxacc_v2", "maxboxacc", "top1_loc", "pxap"):
        assert row["localization"][k] == pytest.approx(ran[k]), k  # the same model, the same numbers
    assert main(["eval", ck, "--data", root, "--localization", "--cam-head", "patch", "--split", "val",
                 "--epsilons", ""]) == 0
    assert "patch CAM val:" in capsys.readouterr().out


def test_eval_localization_refuses_a_dataset_without_boxes_and_the_train_split(tiny_run, tmp_path, capsys):
    root, out, _ = tiny_run
    ck = os.path.join(out, "checkpoints", "base-seed0.pt")
    assert main(["eval", ck, "--data", root, "--localization", "--split", "train"]) == 2
    assert "train split has labels only" in capsys.readouterr().err
    digits_out = str(tmp_path / "d")
    assert main(["train", "--method", "base", "--epochs", "1", "--quiet", "--out", digits_out]) == 0
    assert main(["eval", os.path.join(digits_out, "checkpoints", "base-seed0.pt"), "--localization"]) == 2
    err = capsys.readouterr().err
    assert "has no boxes" in err and len(err.strip().splitlines()) == 1


def test_cam_examples_and_the_figure_rows(tmp_path):
    from patchmix.models import create_model

    ds = data.load_dataset(write_items_tmp(), format="fmnist-loc")
    net = create_model("small_cnn", 10, grid_size=4, in_channels=1)
    idx = localize.example_indices(ds.test)
    assert torch.equal(ds.test.labels[idx], torch.arange(10)[:8])
    ex = localize.cam_examples(net, ds.test, idx, 0.3, "cpu")
    assert ex["cams"].shape == (8, 64, 64) and len(ex["pred"]) == len(ex["gt"]) == 8
    centre = localize.centre_examples(ex, 0.5)
    assert torch.equal(centre["images"], ex["images"]) and np.asarray(centre["pred"][0]).shape == (1, 4)
