"""Every script, run as a process on bad input: exit code 2, exactly one ``error: ...`` line on stderr, no Python
traceback, and no output directory created or changed (``common.stages.cli.run_cli``'s promise).

Each case costs one Python + torch start-up (3-6 s), so all of them run from one module-scoped fixture, four at a
time, while the session's tiny stage directories are built in this process; the tests below only read the results.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import ROOT

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
TIMEOUT_S = 180
WORKERS = 4
# The session fixtures a case may read, in the order they are built (each needs the one before it).
FIXTURES = ("tiny_stage1_dir", "tiny_nfm_dir", "tiny_joint_dir")

Snapshot = dict[str, bytes] | None
Dirs = dict[str, Path]  # "stage1", "nfm", "joint" -> the finished tiny stage directory


def snapshot(path: Path) -> Snapshot:
    """Names and bytes of everything at ``path`` (None when nothing is there)."""
    if not path.exists():
        return None
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(path.rglob("*"))}


@dataclass
class Setup:
    args: list[str]  # after the script and --preset tiny
    watched: list[Path]  # must be byte-identical (or still absent) afterwards: the output first, then the inputs


@dataclass(frozen=True)
class Case:
    name: str
    script: str
    build: Callable[[Path, Dirs], Setup]  # (a fresh folder, the fixture directories) -> the command line
    names: str  # text the error line must contain: what was wrong
    needs: str | None = None  # the last of FIXTURES the case reads, if any


@dataclass
class Result:
    command: list[str]
    returncode: int | None  # None: killed after TIMEOUT_S
    stderr: str
    seconds: float
    before: dict[Path, Snapshot]
    after: dict[Path, Snapshot]

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]

    def __str__(self) -> str:
        status = f"exit {self.returncode} after {self.seconds:.1f} s"
        return f"$ {' '.join(self.command)}\n({status})\nstderr:\n{self.stderr}"


# ---- the cases -----------------------------------------------------------------------------------------------


def _copy(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def _part1c_k_above_features(tmp: Path, dirs: Dirs) -> Setup:
    out = tmp / "out"
    return Setup(["--k", "2000", "--features", "1000", "--checkpoint_dir", str(out)], [out])


def _part1c_existing_run(tmp: Path, dirs: Dirs) -> Setup:
    out = tmp / "out"
    out.mkdir()
    (out / "metrics.json").write_text('{"earlier": "run"}\n')
    (out / "notes.txt").write_bytes(b"keep me\n")
    return Setup(["--checkpoint_dir", str(out)], [out])


def _part1c_output_is_a_file(tmp: Path, dirs: Dirs) -> Setup:
    out = tmp / "out"
    out.write_bytes(b"not a directory\n")
    return Setup(["--checkpoint_dir", str(out)], [out])


def _part2d_missing_sae1(tmp: Path, dirs: Dirs) -> Setup:
    out = tmp / "out"
    return Setup(["--sae1_model_path", str(tmp / "no_such_sae1"), "--checkpoint_dir", str(out)], [out])


def _part2d_truncated_weights(tmp: Path, dirs: Dirs) -> Setup:
    sae1 = _copy(dirs["stage1"], tmp / "sae1")
    weights = sae1 / "best_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    out = tmp / "out"
    return Setup(["--sae1_model_path", str(sae1), "--checkpoint_dir", str(out)], [out, sae1])


def _part2d_output_is_the_input(tmp: Path, dirs: Dirs) -> Setup:
    sae1 = _copy(dirs["stage1"], tmp / "sae1")
    return Setup(["--sae1_model_path", str(sae1), "--checkpoint_dir", str(sae1), "--overwrite"], [sae1])


def _part10_nfm_is_stage1(tmp: Path, dirs: Dirs) -> Setup:
    out, stage1 = tmp / "out", dirs["stage1"]
    return Setup(["--sae1_model_path", str(stage1), "--nfm_model_path", str(stage1), "--checkpoint_dir", str(out)],
                 [out, stage1])


def _part14_corrupt_nfm_config(tmp: Path, dirs: Dirs) -> Setup:
    nfm = _copy(dirs["nfm"], tmp / "nfm")
    (nfm / "config.json").write_text("{")
    out, stage1 = tmp / "out", dirs["stage1"]
    return Setup(["--sae1_model_path", str(stage1), "--nfm_model_path", str(nfm), "--output_dir", str(out)],
                 [out, nfm, stage1])


def _part15_top_n_above_k(tmp: Path, dirs: Dirs) -> Setup:
    out = tmp / "out"
    return Setup(["--k", "20", "--top_n_features", "21", "--checkpoint_dir", str(out)], [out])


def _part16_same_names(tmp: Path, dirs: Dirs) -> Setup:
    out = tmp / "out"
    return Setup(["--sae1_name", "same", "--sae2_name", "same", "--output_dir", str(out)], [out])


def _part17_no_mixture_results(tmp: Path, dirs: Dirs) -> Setup:
    ortho = tmp / "ortho"
    ortho.mkdir()
    (ortho / "other.json").write_text("{}\n")
    out, joint = tmp / "out", dirs["joint"]
    return Setup(["--joint_model_path", str(joint), "--orthogonality_dir", str(ortho), "--output_dir", str(out)],
                 [out, ortho, joint])


def _part18_joint_is_stage1(tmp: Path, dirs: Dirs) -> Setup:
    out, stage1 = tmp / "out", dirs["stage1"]
    return Setup(["--joint_model_path", str(stage1), "--output_dir", str(out)], [out, stage1])


def _reproduce_nfm_without_sae1(tmp: Path, dirs: Dirs) -> Setup:
    out = tmp / "run"
    return Setup(["--stages", "nfm", "--output_dir", str(out)], [out])


def _export_relu_saelens(tmp: Path, dirs: Dirs) -> Setup:
    """A SAELens directory of another architecture: refused, naming what is supported."""
    lens, out = tmp / "relu", tmp / "out"
    lens.mkdir()
    (lens / "cfg.json").write_text('{"architecture": "standard", "d_in": 64, "d_sae": 128}')
    (lens / "sae_weights.safetensors").write_bytes(Path(dirs["stage1"], "best_model.safetensors").read_bytes())
    return Setup(["--sae1_model_path", str(lens), "--format", "sparsify", "--output_dir", str(out)], [out, lens])


def _reproduce_stage_fails(tmp: Path, dirs: Dirs) -> Setup:
    out = tmp / "run"
    return Setup(["--stages", "sae1", "--model", "no-such-org/no-such-model", "--output_dir", str(out)], [out])


PART1C, PART2D = "part1c_sae_topK_implementation.py", "part2d_residual_NFM_streaming.py"
CASES = [
    Case("part1c-k-above-features", PART1C, _part1c_k_above_features, "--k 2000"),
    Case("part1c-existing-run", PART1C, _part1c_existing_run, "already holds a run"),
    Case("part1c-output-is-a-file", PART1C, _part1c_output_is_a_file, "is not a directory"),
    Case("part2d-missing-sae1", PART2D, _part2d_missing_sae1, "no_such_sae1"),
    Case("part2d-truncated-weights", PART2D, _part2d_truncated_weights, "best_model.safetensors",
         needs="tiny_stage1_dir"),
    Case("part2d-output-is-the-input", PART2D, _part2d_output_is_the_input, "the input --sae1_model_path",
         needs="tiny_stage1_dir"),
    Case("part10-nfm-is-stage1", "part10_sae_decomp_of_NFM.py", _part10_nfm_is_stage1, "expected nfm",
         needs="tiny_stage1_dir"),
    Case("part14-corrupt-nfm-config", "part14_kl_tests.py", _part14_corrupt_nfm_config, "config.json",
         needs="tiny_nfm_dir"),
    Case("part15-top-n-above-k", "part15_joint_SAENFM.py", _part15_top_n_above_k, "--top_n_features 21"),
    Case("part16-same-names", "part16_orthogonality.py", _part16_same_names, "--sae1_name"),
    Case("part17-no-mixture-results", "part17_bimodal_gram.py", _part17_no_mixture_results, "results.json",
         needs="tiny_joint_dir"),
    Case("part18-joint-is-stage1", "part18_joint_kl.py", _part18_joint_is_stage1, "expected joint",
         needs="tiny_stage1_dir"),
    Case("export-relu-saelens", "export_sae.py", _export_relu_saelens, "only TopK SAEs are supported",
         needs="tiny_stage1_dir"),
    Case("reproduce-nfm-without-sae1", "reproduce.py", _reproduce_nfm_without_sae1, "stage nfm reads"),
    Case("reproduce-stage-fails", "reproduce.py", _reproduce_stage_fails, "stage sae1 (part1c"),
]
BY_NAME = {case.name: case for case in CASES}



NAMES = [case.name for case in CASES]


# ---- running them all at once --------------------------------------------------------------------------------


def _run(command: list[str], watched: list[Path], before: dict[Path, Snapshot]) -> Result:
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=TIMEOUT_S)
        returncode, stderr = done.returncode, done.stderr
    except subprocess.TimeoutExpired as err:
        stderr = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else (err.stderr or "")
        returncode = None
    seconds = time.perf_counter() - started
    return Result(command, returncode, stderr, seconds, before, {path: snapshot(path) for path in watched})


@pytest.fixture(scope="module")
def results(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    """Every case's process; the cases without fixture inputs start first, the others as soon as the fixture they
    read is built (here, while the earlier cases run)."""
    futures: dict[str, Future[Result]] = {}
    dirs: Dirs = {}
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for fixture in (None, *FIXTURES):
            if fixture is not None:
                dirs[fixture.removeprefix("tiny_").removesuffix("_dir")] = request.getfixturevalue(fixture)
            for case in CASES:
                if case.needs != fixture:
                    continue
                setup = case.build(tmp_path_factory.mktemp(case.name), dirs)
                command = [sys.executable, str(ROOT / case.script), "--preset", "tiny", *setup.args]
                before = {path: snapshot(path) for path in setup.watched}
                futures[case.name] = pool.submit(_run, command, setup.watched, before)
    return {name: future.result() for name, future in futures.items()}


# ---- the promise, check by check -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_exit_code_is_2(results: dict[str, Result], name: str) -> None:
    result = results[name]
    assert result.returncode == 2, str(result)


@pytest.mark.parametrize("name", NAMES)
def test_exactly_one_error_line_naming_the_problem(results: dict[str, Result], name: str) -> None:
    result = results[name]
    lines = result.error_lines()
    assert len(lines) == 1, str(result)
    assert BY_NAME[name].names in lines[0], str(result)


@pytest.mark.parametrize("name", NAMES)
def test_no_traceback(results: dict[str, Result], name: str) -> None:
    result = results[name]
    assert "Traceback" not in result.stderr, str(result)


@pytest.mark.parametrize("name", NAMES)
def test_outputs_not_created_and_inputs_unchanged(results: dict[str, Result], name: str) -> None:
    result = results[name]
    for path, before in result.before.items():
        after = result.after[path]
        if before is None:
            assert after is None, f"{path} was created, holding {sorted(after)}\n{result}"
        else:
            assert after is not None, f"{path} was removed\n{result}"
            changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
            assert not changed, f"{path} changed: {changed}\n{result}"


def test_reproduce_names_the_failed_stage_and_its_reason_last(results: dict[str, Result]) -> None:
    """The stage's own message reaches the user inside reproduce.py's one error line, the last on stderr."""
    result = results["reproduce-stage-fails"]
    line = result.error_lines()[0]
    assert "cannot load model 'no-such-org/no-such-model'" in line and "re-run the same command" in line, str(result)
    assert result.stderr.strip().splitlines()[-1] == line, str(result)
