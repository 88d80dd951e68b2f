"""Data parallel with torchrun (gloo on CPU): shared replay memory, 1-process equivalence, rank-0-only writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "experiments" / "synthetic" / "ddp_tiny.yaml"

# A SplitNet like small_cnn_cut whose head normalises with GroupNorm (per item) instead of BatchNorm:
# BatchNorm after the cut sees each rank's own half-batch (no SyncBatchNorm on CPU/gloo), a documented
# difference; with per-item normalisation 1 and 2 processes take the same steps up to float rounding,
# so this model tests the data-parallel machinery itself (gradients, batch split, replay, buffers).
MODEL_PY = '''
from collections import OrderedDict
from torch import nn
from streamcl.models.splitnet import SplitNet

def tiny_gn_cut(num_classes, width=8):
    c = 2 * width
    trunk = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, width, 3, padding=1, bias=False), bn1=nn.BatchNorm2d(width), relu1=nn.ReLU(),
        pool1=nn.MaxPool2d(2), conv2=nn.Conv2d(width, c, 3, padding=1, bias=False), bn2=nn.BatchNorm2d(c),
        relu2=nn.ReLU(), pool2=nn.MaxPool2d(2)))
    head = nn.Sequential(OrderedDict(
        conv=nn.Conv2d(c, c, 3, padding=1, bias=False), gn=nn.GroupNorm(4, c), relu=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d((1, 1)), flatten=nn.Flatten(1), fc=nn.Linear(c, num_classes)))
    return SplitNet(trunk, head, meta={"arch": "tiny_gn", "cut": "tiny_gn", "classifier_prefix": "head.fc."})
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path: Path, **extra: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", STREAMCL_DATA=str(tmp_path / "data"),
               HOME=os.environ.get("HOME", str(tmp_path)))
    env.update(extra)
    return env


def _run(cmd, env, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _files(root: Path):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and ".locks" not in p.parts and "tfevents" not in p.name) + \
        sorted(str(p.parent.relative_to(root)) for p in root.rglob("*tfevents*"))


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path):
    doc = yaml.safe_load(TINY.read_text())
    doc["model"] = {"name": "ddp_model:tiny_gn_cut", "width": 8}
    doc["runs"] = [3]  # a run whose first experience is learnt (the tiny stream is hard for a random trunk)
    (tmp_path / "ddp_model.py").write_text(MODEL_PY)
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(doc))
    py = sys.executable

    # 1 process (also generates the synthetic data the 2-process run then reads)
    _run([py, "-m", "streamcl", "run", str(path), "-q", "-o", f"output_dir={tmp_path / 'one'}"],
         _env(tmp_path, STREAMCL_DUMP_BUFFER=str(tmp_path / "dump1")))
    # 2 processes, gloo on the CPU
    dump = tmp_path / "dump2"
    proc = _run([py, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                 "--master_port", str(_free_port()), "-m", "streamcl", "run", str(path), "-q",
                 "-o", f"output_dir={tmp_path / 'two'}"], _env(tmp_path, STREAMCL_DUMP_BUFFER=str(dump)))
    assert "differs across ranks" not in proc.stderr and "differ across ranks" not in proc.stderr

    # (a) every rank ends every experience with the same weights, buffer and codec
    assert not (tmp_path / "dump1").exists()  # one process: nothing to compare, nothing dumped
    r0, r1 = ((dump / f"rank{k}.txt").read_text().splitlines() for k in (0, 1))
    assert len(r0) == 4 and r0 == r1  # 2 cells x 2 experiences
    assert all("Plugin.buffer=" in line and "buffer=empty" not in line for line in r0)

    # (b) the same accuracies as 1 process: measured |difference| <= 0.006 (2 of 360 test items) per
    # experience over 4 runs x 2 methods; 0.03 allows float-rounding drift, while a wrong batch split,
    # replay share or gradient average changes the steps taken and shows at once
    one, two = tmp_path / "one" / "ddp_tiny", tmp_path / "two" / "ddp_tiny"
    for cell in ("crumb", "remind"):
        a = json.loads((one / cell / "run3" / "summary.json").read_text())
        b = json.loads((two / cell / "run3" / "summary.json").read_text())
        assert len(a["accuracy_per_experience"]) == len(b["accuracy_per_experience"]) == 2
        for x, y in zip(a["accuracy_per_experience"], b["accuracy_per_experience"]):
            assert abs(x - y) <= 0.03, (cell, a["accuracy_per_experience"], b["accuracy_per_experience"])
        assert a["stored_bytes"] == b["stored_bytes"] > 0

        # (c) only rank 0 wrote: the same files as one process, one TensorBoard file, no duplicated rows
        for root in (one, two):
            assert len(list((root / cell / "run3" / "tb").glob("events.out.tfevents.*"))) == 1
        rows_a = (one / cell / "run3" / "metrics.csv").read_text().splitlines()
        rows_b = (two / cell / "run3" / "metrics.csv").read_text().splitlines()
        keys_b = [tuple(r.split(",")[:3]) for r in rows_b]
        assert len(keys_b) == len(set(keys_b)) and len(rows_b) == len(rows_a)
    assert _files(one) == _files(two)
    # the checkpoint is the one a single process writes (no wrapper plugin, no "module." keys): it resumes anywhere
    ckpt = torch.load(two / "crumb" / "run3" / "checkpoint.pt", weights_only=True)
    names = [p["cls"] for p in ckpt["strategy"]["plugins"]]
    assert not any("Distributed" in n for n in names), names


def _grad_worker(rank: int, init_file: str, out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    from streamcl import distributed

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sync = distributed.GradientSync(model)
    distributed._ACTIVE = sync
    x = torch.arange(24, dtype=torch.float32).reshape(8, 3) / 10
    mine = x[rank::2]  # this rank's half of the global batch
    model(mine).pow(2).mean().backward()
    distributed.sync_gradients(model.parameters())  # e.g. before a gradient clamp ...
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()  # ... then the step: not averaged twice
    torch.save({"grads": grads, "weights": [p.detach().clone() for p in model.parameters()]}, f"{out}.{rank}")
    sync.close()
    torch.distributed.destroy_process_group()


def test_gradient_sync_averages_once_over_ranks(tmp_path):
    """Two gloo processes, each with half a batch: the step uses the full batch's gradient, on both."""
    torch.multiprocessing.spawn(_grad_worker, args=(str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2)
    res = [torch.load(f"{tmp_path / 'out'}.{k}", weights_only=True) for k in (0, 1)]
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x = torch.arange(24, dtype=torch.float32).reshape(8, 3) / 10
    # mean of the two half-batch means = the full-batch mean (equal halves)
    model(x).pow(2).mean().backward()
    for g0, g1, ref in zip(res[0]["grads"], res[1]["grads"], [p.grad for p in model.parameters()]):
        assert torch.equal(g0, g1)
        assert torch.allclose(g0, ref, atol=1e-6)
    with torch.no_grad():
        expected = [p - 0.1 * p.grad for p in model.parameters()]
    for w0, w1, ref in zip(res[0]["weights"], res[1]["weights"], expected):
        assert torch.equal(w0, w1)
        assert torch.allclose(w0, ref, atol=1e-6)


def test_helper_uses_the_local_rank_gpu_on_every_node():
    """Avalanche's helper takes the global rank as the GPU index; on a second node that GPU does not exist."""
    from avalanche.distributed.distributed_helper import _DistributedHelperCls

    from streamcl.distributed import use_local_rank_gpu

    class SecondNode(_DistributedHelperCls):  # rank 11 of 16: the 4th GPU of the second 8-GPU node
        is_distributed = True
        rank = 11

    helper = SecondNode()  # not the process-wide helper, which stays untouched
    helper.use_cuda = True
    assert helper.get_device_id() == 11 and helper.make_device() == torch.device("cuda", 11)  # Avalanche's choice
    use_local_rank_gpu(helper, 3)
    assert helper.get_device_id() == 3 and helper.make_device() == torch.device("cuda", 3)
    helper.use_cuda = False  # gloo on the CPU: no GPU at all
    assert helper.get_device_id() == -1 and helper.make_device() == torch.device("cpu")
