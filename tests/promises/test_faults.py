"""Faults that lose nothing (the promise is about the process, so each fault is a real subprocess): a training stage
killed with SIGKILL at several points, one of them inside an atomic write, resumes to the weights of an uninterrupted
run; a full disk stops it in one line with the previous checkpoint intact and loadable."""
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import part2d_residual_NFM_streaming as part2d
from common.seams import PAUSE_WRITE_ENV
from common.store.lock import LOCK_FILE
from common.store.model_files import load_weights
from common.store.stage_files import RESUME_FILE, WEIGHTS_FILE, load_resume_state
from tests.helpers import ROOT

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
# The tiny NFM's best_model.safetensors is 283 KB and its resume.pt 868 KB: a 500 KB file-size limit lets the first
# through and stops the second, as a disk that fills up between two checkpoints would.
FILE_SIZE_LIMIT = 500_000


def stage2(stage1: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "part2d_residual_NFM_streaming.py"), "--preset", "tiny", "--sae1_model_path",
            str(stage1), "--checkpoint_dir", str(out), *extra]


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def same_weights(a: Path, b: Path) -> bool:
    first, second = load_weights(a), load_weights(b)
    return first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


@pytest.fixture(scope="module")
def killed_runs(tiny_stage1_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three stage-2 runs killed with SIGKILL: inside the first resume.pt write, inside the first best-model write,
    and at an arbitrary moment after the first checkpoint. Started together, so they share the cores' time."""
    root = tmp_path_factory.mktemp("killed")
    plans = {"in_resume_write": RESUME_FILE, "in_best_write": WEIGHTS_FILE, "mid_training": None}
    processes = {}
    for name, pause in plans.items():
        env = {**ENV, PAUSE_WRITE_ENV: pause} if pause else ENV
        processes[name] = subprocess.Popen(stage2(tiny_stage1_dir, root / name), cwd=ROOT, env=env, text=True,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for name, pause in plans.items():
        out, process = root / name, processes[name]
        wait_for(out / (f".paused-{pause}" if pause else RESUME_FILE), process)
        if not pause:
            time.sleep(0.3)  # somewhere in the steps after the first checkpoint
        process.send_signal(signal.SIGKILL)
        process.wait()
    return {name: root / name for name in plans}


def test_a_kill_inside_a_write_leaves_no_partial_file(killed_runs: dict[str, Path]):
    in_resume, in_best = killed_runs["in_resume_write"], killed_runs["in_best_write"]
    assert not (in_resume / RESUME_FILE).exists() and list(in_resume.glob(f".{RESUME_FILE}.*.tmp"))
    assert not (in_best / WEIGHTS_FILE).exists() and list(in_best.glob(f".{WEIGHTS_FILE}.*.tmp"))
    assert all((out / LOCK_FILE).exists() for out in killed_runs.values())  # the killed writers' stale locks


@pytest.mark.parametrize("point", ["in_resume_write", "in_best_write", "mid_training"])
def test_a_killed_run_resumes_to_the_uninterrupted_weights(killed_runs: dict[str, Path], point: str,
                                                           tiny_stage1_dir: Path, tiny_nfm_dir: Path):
    out = killed_runs[point]
    part2d.main(stage2(tiny_stage1_dir, out, "--resume")[2:])
    assert same_weights(out, tiny_nfm_dir)
    assert not list(out.glob(".*.tmp")) and not (out / LOCK_FILE).exists()


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG instead of killing


def test_a_full_disk_stops_in_one_line_and_keeps_the_previous_checkpoint(tiny_stage1_dir: Path, tmp_path: Path):
    out = tmp_path / "nfm"
    part2d.main(stage2(tiny_stage1_dir, out, "--stop_at_step", "40")[2:])
    before = (out / RESUME_FILE).read_bytes()
    result = subprocess.run(stage2(tiny_stage1_dir, out, "--resume"), cwd=ROOT, env=ENV, text=True,
                            capture_output=True, preexec_fn=_limit_file_size, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"cannot write {out / RESUME_FILE}" in errors[0] and "previous resume.pt is intact" in errors[0]
    assert (out / RESUME_FILE).read_bytes() == before and load_resume_state(out)["step"] == 40
    assert not list(out.glob(".*.tmp"))
