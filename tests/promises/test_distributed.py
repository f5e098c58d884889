"""Past one process: the harvest, part14 and stage 1 under ``torchrun --standalone --nproc_per_node 2`` on the CPU
(gloo), each held to a one-process run of the same settings in this process; a rank killed mid-run under
``reproduce.py --nproc 2`` and the re-run that resumes it. The promise is about processes, so those are real
torchrun launches, started together once for the module (each costs seconds of start-up)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import part1c_sae_topK_implementation as part1c
import part2d_residual_NFM_streaming as part2d
import part14_kl_tests as part14
import part15_joint_SAENFM as part15
import reproduce
from common.data.batches import RowBatches
from common.errors import UserError
from common.kl.summary import PER_POSITION_FILE
from common.runtime.distributed import World
from common.seams import PAUSE_WRITE_ENV
from common.stages.cli import run_cli
from common.store.lock import LOCK_FILE
from common.store.model_files import load_weights
from common.store.stage_files import CONFIG_FILE, METRICS_FILE, RESULTS_FILE, load_resume_state
from tests.helpers import ROOT

# One thread per process on both sides: the cache and the KL parts are then the same computation bit for bit.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# 192 windows: three cache shards of 64, so rank 0 harvests shards 0 and 2, rank 1 shard 1; a few steps at batch 256.
STAGE1 = ["--preset", "tiny", "--num_tokens", "24576", "--train_steps", "12", "--val_every", "4",
          "--checkpoint_every", "4", "--log_every", "4"]
KILLED_PART = "batch_000001.npz"  # the tiny KL test has two batches of 8 windows; the second is rank 1's
TIMING = ("seconds", "tokens_per_second")


@dataclass
class Runs:
    stage1_two: Path  # stage 1 under torchrun, 2 ranks
    stage1_one: Path  # the same settings in this process
    cache_two: Path
    cache_one: Path
    kl_two: Path  # part14 by reproduce.py --nproc 2: rank 1 killed, then the run resumed
    kl_one: Path
    killed: subprocess.CompletedProcess
    resumed: subprocess.CompletedProcess


def _wait_for(path: Path, process: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _one_thread(run, *args) -> None:
    """A one-process reference with the torchrun workers' one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(*args)
    finally:
        torch.set_num_threads(threads)


def _start(command: list[str], log: Path, **env: str) -> subprocess.Popen:
    """Output into a file, never a pipe that nobody reads while the references run."""
    with open(log, "w") as handle:
        return subprocess.Popen(command, cwd=ROOT, env={**ENV, **env}, text=True, stdout=handle, stderr=handle)


@pytest.fixture(scope="module")
def runs(tiny_stage1_dir: Path, tiny_nfm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("ranks")
    stage1_log = root / "stage1.log"
    stage1 = _start([*TORCHRUN, str(ROOT / "part1c_sae_topK_implementation.py"), *STAGE1, "--checkpoint_dir",
                     str(root / "sae1_two"), "--cache_dir", str(root / "cache_two")], stage1_log)
    run = root / "run"
    shutil.copytree(tiny_stage1_dir, run / "sae1")
    shutil.copytree(tiny_nfm_dir, run / "nfm")
    command = [sys.executable, str(ROOT / "reproduce.py"), "--preset", "tiny", "--output_dir", str(run), "--nproc", "2",
               "--stages", "kl14"]
    killed_log = root / "killed.log"
    killed = _start(command, killed_log, **{PAUSE_WRITE_ENV: KILLED_PART})

    # The one-process references, while the ranks start.
    _one_thread(part1c.main, [*STAGE1, "--checkpoint_dir", str(root / "sae1_one"),
                              "--cache_dir", str(root / "cache_one")])
    _one_thread(part14.main, ["--preset", "tiny", "--sae1_model_path", str(tiny_stage1_dir), "--nfm_model_path",
                              str(tiny_nfm_dir), "--output_dir", str(root / "kl_one")])

    parts = run / "kl14" / "parts"
    _wait_for(parts / f".paused-{KILLED_PART}", killed, killed_log)  # rank 1, inside the write of its part
    _wait_for(parts / "batch_000000.npz", killed, killed_log)  # rank 0's part, which the re-run must keep
    pid = ""
    while not pid:  # the marker is created before its pid is written into it
        pid = (parts / f".paused-{KILLED_PART}").read_text().strip()
    os.kill(int(pid), signal.SIGKILL)
    killed.wait(timeout=240)
    killed_result = subprocess.CompletedProcess(command, killed.returncode, "", killed_log.read_text())
    resumed = subprocess.run(command, cwd=ROOT, env=ENV, text=True, capture_output=True, timeout=240)
    assert stage1.wait(timeout=240) == 0, stage1_log.read_text()[-3000:]
    return Runs(root / "sae1_two", root / "sae1_one", root / "cache_two", root / "cache_one", run / "kl14",
                root / "kl_one", killed_result, resumed)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_cache_harvested_by_two_ranks_is_the_one_process_harvest_bit_for_bit(runs: Runs) -> None:
    two, one = _files(runs.cache_two), _files(runs.cache_one)
    assert len([name for name in one if "shard_" in name]) == 3
    assert two.keys() == one.keys()
    assert all(two[name] == one[name] for name in one), [name for name in one if two[name] != one[name]]
    data = _json(runs.stage1_two / CONFIG_FILE)["data"]
    assert data["world_size"] == 2
    # disjoint shares: shards 0 and 2 (128 windows) on rank 0, shard 1 on rank 1, each window harvested once
    assert [r["harvested_windows"] for r in data["ranks"]] == [128, 64]
    assert _json(runs.stage1_one / CONFIG_FILE)["data"]["ranks"] == [
        {"rank": 0, "harvested_windows": 192, "rows_per_step": 256}]


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return float((a.double() - b.double()).norm()) <= 1e-5 * float(b.double().norm())


def test_stage1_on_two_ranks_matches_one_process(runs: Runs) -> None:
    two, one = load_weights(runs.stage1_two), load_weights(runs.stage1_one)
    assert two.keys() == one.keys() and all(_close(two[name], one[name]) for name in one)
    last_two, last_one = (load_resume_state(out)["model"] for out in (runs.stage1_two, runs.stage1_one))
    assert all(_close(last_two[name], last_one[name]) for name in last_one)
    metrics_two, metrics_one = _json(runs.stage1_two / METRICS_FILE), _json(runs.stage1_one / METRICS_FILE)
    assert metrics_two["steps"] == metrics_one["steps"] == 12
    for key in ("variance_explained", "mse", "fvu", "l0"):
        assert metrics_two[key] == pytest.approx(metrics_one[key], rel=1e-5), key
    for kind in ("train", "val"):  # the logged loss is the whole batch's, not rank 0's share
        losses_two = [entry["loss"] for entry in metrics_two["history"][kind]]
        assert losses_two == pytest.approx([entry["loss"] for entry in metrics_one["history"][kind]], rel=1e-5)
    assert (metrics_two["world_size"], metrics_one["world_size"]) == (2, 1)
    assert [r["rows_per_step"] for r in metrics_two["ranks"]] == [128, 128]
    assert not (runs.stage1_two / LOCK_FILE).exists()


def _without_timing(results: dict) -> dict:
    evaluation = {key: value for key, value in results["evaluation"].items()
                  if key not in (*TIMING, "ranks", "world_size")}
    return {**{key: value for key, value in results.items() if key not in ("resources", "world_size")},
            "evaluation": evaluation}


def test_part14_on_two_ranks_equals_one_process_bit_for_bit(runs: Runs) -> None:
    with np.load(runs.kl_two / PER_POSITION_FILE) as two, np.load(runs.kl_one / PER_POSITION_FILE) as one:
        assert two.files == one.files
        for name in one.files:
            assert two[name].dtype == one[name].dtype and np.array_equal(two[name], one[name]), name
    results_two, results_one = _json(runs.kl_two / RESULTS_FILE), _json(runs.kl_one / RESULTS_FILE)
    assert _without_timing(results_two) == _without_timing(results_one)
    assert (results_two["world_size"], results_one["world_size"]) == (2, 1)
    assert results_one["evaluation"]["ranks"] == [{"rank": 0, "batches": 2, "windows": 16, "evaluated_windows": 16}]


def test_a_killed_rank_is_one_line_naming_the_stage_and_the_rerun_resumes_from_its_parts(runs: Runs) -> None:
    killed = runs.killed
    lines = [line for line in killed.stderr.splitlines() if line.startswith("error:")]
    assert killed.returncode == 2 and len(lines) == 1, killed.stderr[-3000:]
    assert "stage kl14 (part14_kl_tests.py) failed" in lines[0] and "re-run the same command" in lines[0]
    assert "torchrun" in lines[0] and "SIGKILL" in killed.stderr  # torchrun's own report stays in the log
    assert runs.resumed.returncode == 0, runs.resumed.stderr[-3000:]
    # the re-run kept rank 0's part and evaluated only the batch of the rank that died
    ranks = _json(runs.kl_two / RESULTS_FILE)["evaluation"]["ranks"]
    assert ranks == [{"rank": 0, "batches": 1, "windows": 8, "evaluated_windows": 0},
                     {"rank": 1, "batches": 1, "windows": 8, "evaluated_windows": 8}]
    assert not (runs.kl_two / "parts").exists() and not (runs.kl_two / LOCK_FILE).exists()


# ---- without processes ---------------------------------------------------------------------------------------------


def test_the_shares_are_disjoint_cover_everything_and_differ_by_at_most_one() -> None:
    for size in (1, 2, 3, 4):
        for count in (0, 1, 5, 12):
            shares = [World(rank, size).share(range(count)) for rank in range(size)]
            assert sorted(i for share in shares for i in share) == list(range(count))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_each_rank_takes_its_rows_of_the_same_steps_batch() -> None:
    rows = torch.arange(100.0).unsqueeze(1)
    one = RowBatches((rows,), 20, seed=3, device=torch.device("cpu"))
    ranks = [RowBatches((rows,), 20, seed=3, device=torch.device("cpu"), world=World(r, 4)) for r in range(4)]
    for step in (0, 4, 5, 13):  # across epochs
        assert torch.equal(torch.cat([batches.batch(step)[0] for batches in ranks]), one.batch(step)[0])
    with pytest.raises(UserError, match="multiple of 3"):
        RowBatches((rows,), 20, seed=3, device=torch.device("cpu"), world=World(0, 3))


@pytest.mark.parametrize("main, stage", [(part2d.main, "nfm"), (part15.main, "joint")])
def test_stages_2_and_5_on_two_ranks_are_refused_in_one_line(main, stage: str, tmp_path: Path, capsys,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit) as stop:
        run_cli(main, ["--preset", "tiny", "--checkpoint_dir", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: stage {stage} runs in one process") and "SPEC §9" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, message", [(["--nproc", "0"], "at least 1"), (["--nproc", "2", "--no-cache"],
                                                                              "activation cache")])
def test_reproduce_refuses_a_bad_nproc_before_writing(extra: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=message):
        reproduce.main(["--preset", "tiny", "--output_dir", str(tmp_path / "run"), *extra])
    assert not (tmp_path / "run").exists()
