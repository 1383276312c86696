"""Two processes with gloo on the CPU through torchrun (torch.distributed.run): DDP training with reduced
metrics; the whole workflow with the search's population split across ranks and the policy broadcast."""

import json
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

TINY = ["--epochs", "2", "--set", "data.limit_train=128", "--set", "model.width=8", "--batch-size", "32",
        "--threads", "1", "--quiet", "--device", "cpu", "--set", "run.fgsm_epsilons=0.1",
        "--set", "search.num_draws=4", "--set", "search.masks_per_draw=4", "--set", "run.fidelity_individuals=8",
        "--set", "run.fidelity_draws=4"]


def torchrun(args, tmp_path, timeout=240):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "-m", "patchmix", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=str(tmp_path))
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r


def test_ddp_train(tmp_path):
    out = str(tmp_path / "ddp")
    r = torchrun(["train", "--method", "cutmix", *TINY, "--seed", "0", "--out", out], tmp_path)
    m = json.load(open(os.path.join(out, "metrics.json")))
    res = m["results"][0]
    assert m["world"] == 2 and res["world"] == 2 and len(res["history"]) == 2
    assert 0.0 <= res["test_acc"] <= 1.0 and "CutMix" in r.stdout
    # only rank 0 writes: one log, one checkpoint; the table is printed once
    assert os.listdir(os.path.join(out, "checkpoints")) == ["cutmix-seed0.pt"]
    assert r.stdout.count("CutMix") == 1
    events = [json.loads(line)["event"] for line in open(os.path.join(out, "log.jsonl"))]
    assert events.count("epoch") == 2


def test_ddp_workflow_random_search_guided(tmp_path):
    out = str(tmp_path / "run")
    torchrun(["run", "--methods", "random,guided", *TINY, "--seeds", "0", "--population", "8",
              "--generations", "2", "--set", "run.show_samples=4", "--out", out], tmp_path)
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert set(m["summary"]) == {"random", "guided"} and m["device"].endswith("x2")
    assert all(r["world"] == 2 for r in m["results"])
    assert json.load(open(os.path.join(out, "policy.json")))["format"] == "patchmix-policy"


def test_ddp_search_with_the_papers_exact_fitness_matches_one_process(tmp_path):
    """search.fitness = exact: f_T runs on every composed sample of every individual, each rank a share of the
    population; the search is the one a single process runs (same f_T, seed and draws)."""
    from patchmix.cli import main

    ft = str(tmp_path / "ft")
    assert main(["train", "--method", "random", *TINY, "--seed", "0", "--out", ft]) == 0
    ck = os.path.join(ft, "checkpoints", "random-seed0.pt")
    args = ["search", *TINY, "--model-checkpoint", ck, "--fitness", "exact", "--population", "6",
            "--generations", "2", "--set", "search.num_draws=2"]
    torchrun([*args, "--out", str(tmp_path / "ddp")], tmp_path)
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    ddp, one = (json.load(open(tmp_path / d / "policy.json")) for d in ("ddp", "one"))
    assert ddp["search"]["fitness"] == "exact" and ddp["pairs"] == one["pairs"] and ddp["masks"] == one["masks"]
    assert ddp["fitness"] == pytest.approx(one["fitness"], abs=1e-5)
    m = json.load(open(tmp_path / "ddp" / "metrics.json"))
    assert m["search"]["0"]["fitness_build"]["fitness"] == "exact"


RESUME_SCRIPT = r'''
import sys, torch
from patchmix import config, data, train
out = sys.argv[1]
cfg = config.resolve(None, None, {"data.limit_train": 192, "train.epochs": 2, "train.batch_size": 32,
                                  "model.width": 8, "run.fgsm_epsilons": "", "run.seeds": "0", "run.device": "cpu",
                                  "run.threads": 1})
ds = data.load_dataset("digits", limit_train=192)
rt = train.setup_runtime(cfg)
ref, ref_res = train.train_model(cfg, ds, "random", 3, rt=rt)
ck = out + "/ck.pt"
try:
    train.train_model(cfg, ds, "random", 3, rt=rt, checkpoint=ck, stop_after_steps=2)  # mid-epoch
    raise SystemExit("expected an interruption")
except train.Interrupted:
    pass
net, res = train.train_model(cfg, ds, "random", 3, rt=rt, checkpoint=ck, resume=True)
same = all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), net.state_dict().values()))
hist = [(h["train_loss"], h["train_acc"]) for h in res["history"]]
ref_hist = [(h["train_loss"], h["train_acc"]) for h in ref_res["history"]]
if rt.rank == 0:
    print("RESULT", same, hist == ref_hist)
train.teardown_runtime(rt)
'''


def test_ddp_mid_epoch_resume_matches_uninterrupted(tmp_path):
    """Every rank's generator states and partial sums are saved and restored, so a DDP run interrupted
    mid-epoch ends with the weights and the epoch metrics of an uninterrupted one."""
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", str(script),
           str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-4000:]
    assert "RESULT True True" in r.stdout, r.stdout[-2000:]
