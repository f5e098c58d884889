"""Fixtures of the part16 / part17 tests (``test_analyses*.py``): the constructed checkpoints written once, and
part16 and part17 run on them once per session."""
from pathlib import Path

import pytest
import torch

import part16_orthogonality as part16
import part17_bimodal_gram as part17
from tests.pipeline.analysis_checkpoints import (
    N_HIGH,
    N_INIT,
    N_LOW_MOVED,
    N_SILENT,
    NFM_K,
    D,
    F,
    initial_joint,
    rows_with_norms,
    write_joint,
    write_sae1,
)


@pytest.fixture(scope="session")
def joint_weights() -> dict[str, torch.Tensor]:
    """Decoder rows: N_INIT left at TopKSAE's init, N_LOW_MOVED squared norms in [0.04, 0.08], N_HIGH ~ N(0.37,
    0.04)."""
    g = torch.Generator().manual_seed(0)
    # Seeded: torch's global generator starts from a random seed in each process, and with about a 6% chance every one
    # of 100 freshly initialized rows lands within the near-init band that the test needs some row to leave. Seed 0
    # is the joint directory's recorded seed: these rows are exactly its initial ones.
    untouched = initial_joint().sae.W_dec.detach()[:N_INIT]
    low_sq = torch.linspace(0.04, 0.08, N_LOW_MOVED, dtype=torch.float64)
    high_sq = (0.37 + 0.04 * torch.randn(N_HIGH, generator=g, dtype=torch.float64)).clamp(min=0.25)
    W_dec = torch.cat([untouched, rows_with_norms(low_sq.sqrt(), D, g), rows_with_norms(high_sq.sqrt(), D, g)])
    linear = rows_with_norms(torch.rand(F, generator=g, dtype=torch.float64) + 0.2, D, g)
    embeddings = rows_with_norms(torch.rand(F, generator=g, dtype=torch.float64) + 0.2, NFM_K, g)
    firing = torch.cat([torch.zeros(N_INIT, dtype=torch.int64), torch.full((F - N_INIT - N_SILENT,), 5),
                        torch.zeros(N_SILENT, dtype=torch.int64)])
    return {"W_dec": W_dec, "linear": linear, "embeddings": embeddings, "firing": firing}


@pytest.fixture(scope="session")
def dirs(tmp_path_factory, joint_weights) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("analyses")
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    one_population = (0.4 + 0.05 * torch.randn(F, generator=g, dtype=torch.float64)).clamp(min=0.1).sqrt()
    return {
        "root": root,
        "orthogonal": write_sae1(root / "orthogonal", q.float()),  # F = d orthonormal rows
        "unimodal": write_sae1(root / "unimodal", rows_with_norms(one_population, D, g)),
        "narrow": write_sae1(root / "narrow", rows_with_norms(torch.ones(F, dtype=torch.float64), 32, g)),
        "joint": write_joint(root / "joint", **joint_weights),
    }


@pytest.fixture(scope="session")
def ortho_run(dirs) -> dict:
    out = dirs["root"] / "part16"
    return part16.main(["--preset", "tiny", "--sae1_model_path", str(dirs["unimodal"]),
                        "--sae2_model_path", str(dirs["joint"]),
                        "--sae1_name", "stage1", "--sae2_name", "joint", "--output_dir", str(out)])


@pytest.fixture(scope="session")
def orthogonal_run(dirs) -> dict:
    """part16 on two SAEs that are not the joint model: the orthogonal decoder and the one-population one."""
    return part16.main(["--sae1_model_path", str(dirs["orthogonal"]), "--sae2_model_path", str(dirs["unimodal"]),
                        "--output_dir", str(dirs["root"] / "part16_orthogonal")])


@pytest.fixture(scope="session")
def bimodal_run(dirs, ortho_run) -> dict:
    return part17.main(["--preset", "tiny", "--split", "0.2", "--joint_model_path", str(dirs["joint"]),
                        "--orthogonality_dir", str(dirs["root"] / "part16"),
                        "--output_dir", str(dirs["root"] / "part17")])
