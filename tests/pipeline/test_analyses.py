"""part16 (orthogonality) and part17 (bimodal shares) end to end, on checkpoints built here with known structure."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

import part16_orthogonality as part16
import part17_bimodal_gram as part17
from common.analysis import bimodal
from common.analysis.decoders import RESULTS_FILE, barely_moved, initial_norm_band, near_init
from common.data.activations import NORM_STATS_FILE, NormStats
from common.errors import UserError
from common.models.joint import JointSAENFM
from common.models.loading import load_joint
from common.models.sae import TopKSAE
from common.paths import REPO_ROOT
from common.store.savers import atomic_save_json, atomic_save_safetensors
from common.store.stage_files import CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE, write_firing_counts

D, F, NFM_K = 64, 1000, 6  # the tiny preset's shapes: the initial squared norm d/(3F) is 0.0213 as in the paper
HELD_OUT_ROWS = 1000
N_INIT, N_LOW_MOVED, N_HIGH = 100, 200, 700  # the joint decoder's constructed populations, in this row order
PNGS_16 = ("squared_norms.png", "pca_cumulative.png", "cosine_offdiag.png")
PNGS_17 = ("shares_vs_squared_norm.png", "shares_by_group.png", "squared_norms.png")


def _write_stage(folder: Path, stage: str, module: torch.nn.Module, d_model: int, config: dict) -> Path:
    folder.mkdir(parents=True)
    atomic_save_safetensors(module.state_dict(), folder / WEIGHTS_FILE)
    NormStats(torch.zeros(d_model), torch.ones(d_model)).save(folder / NORM_STATS_FILE)
    atomic_save_json({"stage": stage, "format_version": 1, "model_id": "constructed", "model_fingerprint": "test",
                      "layer": 2, "d_model": d_model, "config": config, "norm_stats_file": NORM_STATS_FILE},
                     folder / CONFIG_FILE)
    atomic_save_json({}, folder / METRICS_FILE)
    return folder


def write_sae1(folder: Path, W_dec: torch.Tensor) -> Path:
    features, d_model = W_dec.shape
    sae = TopKSAE(d_model, features, min(4, features))
    sae.W_dec.data.copy_(W_dec)
    return _write_stage(folder, "sae1", sae, d_model, {"features": features, "k": sae.k, "tied": True})


def write_joint(folder: Path, W_dec: torch.Tensor, linear: torch.Tensor, embeddings: torch.Tensor,
                firing: torch.Tensor) -> Path:
    """A joint directory whose run seed is 0 (so its initial model can be re-created) and whose held-out firing
    counts are ``firing`` (of 1,000 rows)."""
    features, d_model = W_dec.shape
    joint = JointSAENFM(d_model, features, 20, embeddings.shape[1], 10)
    joint.sae.W_dec.data.copy_(W_dec)
    joint.nfm.linear_weight.data.copy_(linear)
    joint.nfm.embeddings.data.copy_(embeddings)
    config = {"features": features, "k": 20, "tied": True, "nfm_k": embeddings.shape[1], "top_n_features": 10,
              "dropout": 0.15, "seed": 0}
    _write_stage(folder, "joint", joint, d_model, config)
    write_firing_counts(folder, firing, HELD_OUT_ROWS)
    return folder


def initial_joint() -> JointSAENFM:
    """The joint model as a run of seed 0 starts it (the untrained control)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return JointSAENFM(D, F, 20, NFM_K, 10)


def _directions(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    v = torch.randn(n, d, generator=generator, dtype=torch.float64)
    return v / v.norm(dim=1, keepdim=True)


def _rows_with_norms(norms: torch.Tensor, d: int, generator: torch.Generator) -> torch.Tensor:
    return (_directions(len(norms), d, generator) * norms[:, None]).float()


@pytest.fixture(scope="module")
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
    W_dec = torch.cat([untouched, _rows_with_norms(low_sq.sqrt(), D, g), _rows_with_norms(high_sq.sqrt(), D, g)])
    linear = _rows_with_norms(torch.rand(F, generator=g, dtype=torch.float64) + 0.2, D, g)
    embeddings = _rows_with_norms(torch.rand(F, generator=g, dtype=torch.float64) + 0.2, NFM_K, g)
    firing = torch.cat([torch.zeros(N_INIT, dtype=torch.int64), torch.full((F - N_INIT,), 5, dtype=torch.int64)])
    return {"W_dec": W_dec, "linear": linear, "embeddings": embeddings, "firing": firing}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, joint_weights) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("analyses")
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    one_population = (0.4 + 0.05 * torch.randn(F, generator=g, dtype=torch.float64)).clamp(min=0.1).sqrt()
    return {
        "root": root,
        "orthogonal": write_sae1(root / "orthogonal", q.float()),  # F = d orthonormal rows
        "unimodal": write_sae1(root / "unimodal", _rows_with_norms(one_population, D, g)),
        "narrow": write_sae1(root / "narrow", _rows_with_norms(torch.ones(F, dtype=torch.float64), 32, g)),
        "joint": write_joint(root / "joint", **joint_weights),
    }


@pytest.fixture(scope="module")
def ortho_run(dirs) -> dict:
    out = dirs["root"] / "part16"
    return part16.main(["--preset", "tiny", "--sae1_model_path", str(dirs["unimodal"]),
                        "--sae2_model_path", str(dirs["joint"]),
                        "--sae1_name", "stage1", "--sae2_name", "joint", "--output_dir", str(out)])


@pytest.fixture(scope="module")
def orthogonal_run(dirs) -> dict:
    """part16 on two SAEs that are not the joint model: the orthogonal decoder and the one-population one."""
    return part16.main(["--sae1_model_path", str(dirs["orthogonal"]), "--sae2_model_path", str(dirs["unimodal"]),
                        "--output_dir", str(dirs["root"] / "part16_orthogonal")])


@pytest.fixture(scope="module")
def bimodal_run(dirs, ortho_run) -> dict:
    return part17.main(["--preset", "tiny", "--split", "0.2", "--joint_model_path", str(dirs["joint"]),
                        "--orthogonality_dir", str(dirs["root"] / "part16"),
                        "--output_dir", str(dirs["root"] / "part17")])


def test_initial_norm_band_matches_the_default_init():
    squared = TopKSAE(D, 20_000, 20).W_dec.detach().double().square().sum(dim=1).numpy()
    band = initial_norm_band(D, 20_000)
    assert band["mean"] == pytest.approx(D / (3 * 20_000))
    assert squared.mean() == pytest.approx(band["mean"], rel=0.01)  # std/mean = 2/sqrt(5d) = 11%, over 20,000 rows
    assert squared.std() == pytest.approx(band["std"], rel=0.03)
    assert barely_moved(squared, band).mean() > 0.999
    assert not barely_moved(np.array([band["low"] * 0.99, band["high"] * 1.01, 0.4]), band).any()
    mean = band["mean"]
    assert near_init(np.array([0.76, 1.24, 0.74, 1.26]) * mean, band).tolist() == [True, True, False, False]


def test_orthogonal_decoder_has_zero_offdiagonals_and_unit_norms(orthogonal_run):
    entry = orthogonal_run["saes"]["standalone"]
    assert entry["n_features"] == D and entry["n_dropped"] == 0
    for key in ("gram_offdiag", "cosine_offdiag"):
        assert entry[key]["count"] == D * (D - 1)
        assert entry[key]["max_abs"] < 1e-6 and entry[key]["mean_abs"] < 1e-7
    assert entry["squared_norms"]["min"] == pytest.approx(1.0, abs=1e-6)
    assert entry["squared_norms"]["max"] == pytest.approx(1.0, abs=1e-6)
    # Orthonormal rows spread the uncentred variance evenly: 90% needs 58 of 64 components.
    assert entry["pca"]["original"]["components_90"] == int(np.ceil(0.9 * D))


def test_part16_finds_the_two_modes_and_not_in_one_population(ortho_run, joint_weights, dirs):
    joint, stage1 = ortho_run["saes"]["joint"], ortho_run["saes"]["stage1"]
    assert joint["bimodality"]["bimodal"] and not stage1["bimodality"]["bimodal"]
    squared = joint_weights["W_dec"].double().square().sum(dim=1).numpy()
    low, high = squared[: N_INIT + N_LOW_MOVED], squared[N_INIT + N_LOW_MOVED :]
    np.testing.assert_allclose(joint["bimodality"]["two_component"]["means"], [low.mean(), high.mean()], atol=0.01)
    np.testing.assert_allclose(joint["bimodality"]["two_component"]["weights"], [0.3, 0.7], atol=0.02)
    assert joint["moved_from_init"]["count"] == N_INIT
    # recorded relative to the folder that holds part16's output folder, never as an absolute path
    assert joint["source"]["path"] == "joint" and joint["source"]["stage"] == "joint"
    assert stage1["cosine_offdiag"]["random_directions_mean_abs"] == pytest.approx(np.sqrt(2 / (np.pi * D)), rel=0.01)


def test_part16_writes_results_and_figures(ortho_run, dirs):
    out = dirs["root"] / "part16"
    saved = json.loads((out / RESULTS_FILE).read_text())
    assert saved["analysis"] == "orthogonality" and list(saved["saes"]) == ["stage1", "joint"]
    entry = saved["saes"]["joint"]
    for key in ("squared_norms", "bimodality", "moved_from_init", "gram_offdiag", "cosine_offdiag", "cosine_histogram",
                "pca"):
        assert key in entry
    assert sum(entry["cosine_histogram"]["counts"]) == F * (F - 1)
    assert len(entry["cosine_histogram"]["edges"]) == len(entry["cosine_histogram"]["counts"]) + 1
    assert entry["pca"]["standard"]["cumulative"][-1] == pytest.approx(1.0)
    assert "rule" in entry["moved_from_init"]["band"] and "Ashman" in entry["bimodality"]["rule"]
    for name in PNGS_16:
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_part16_verdict_sets_the_untouched_features_apart(ortho_run, joint_weights):
    """The joint directory records seed 0 and its firing counts: its 100 untouched rows are exactly its initial ones
    and never fired, so they are set apart; the 900 moved ones hold the two populations. The other decoder has no
    seed or counts: nothing can be set apart."""
    verdict = ortho_run["saes"]["joint"]["verdict"]
    assert verdict["never_moved"] == {**verdict["never_moved"], "known": True, "count": N_INIT,
                                      "fraction": N_INIT / F}
    moved = verdict["moved"]
    assert moved["n"] == N_LOW_MOVED + N_HIGH and verdict["bimodal"]
    assert moved["dip"]["p"] < 0.05 and moved["kde"]["ratio"] < 0.9 and 0.08 < moved["low_mode_below"] < 0.25
    # the low mode is the 200 moved low rows; all of them fire on 5 of 1,000 rows, so none is rare (< 0.1%)
    assert moved["by_firing"]["rare"] == 0 and moved["by_firing"]["low_share_rest"] == pytest.approx(
        N_LOW_MOVED / (N_LOW_MOVED + N_HIGH))
    stage1 = ortho_run["saes"]["stage1"]["verdict"]
    assert not stage1["never_moved"]["known"] and stage1["moved"]["n"] == F and not stage1["bimodal"]


def test_part17_untrained_control_by_hand(bimodal_run, joint_weights):
    """The moved, active features against the seed-0 initial model, each split at its own median; the difference of
    differences and the Spearman r recomputed here from the weights."""
    control = bimodal_run["controlled"]
    W = {name: t.double() for name, t in joint_weights.items() if name != "firing"}
    initial = initial_joint()
    untrained = {"W_dec": initial.sae.W_dec, "linear": initial.nfm.linear_weight, "embeddings": initial.nfm.embeddings}

    def shares_of(weights: dict) -> tuple[np.ndarray, dict]:
        decoder, linear, nonlinear = (weights[n].detach().double().norm(dim=1).numpy()
                                      for n in ("W_dec", "linear", "embeddings"))
        total = decoder + linear + nonlinear
        return decoder**2, {"interaction": (linear + nonlinear) / total, "residual": decoder / total}

    analysed = slice(N_INIT, F)  # the untouched rows neither moved nor fired
    sq_t, shares_t = shares_of({name: w[analysed] for name, w in W.items()})
    sq_u, shares_u = shares_of(untrained)
    assert (control["trained"]["n"], control["untrained"]["n"]) == (F - N_INIT, F)  # the control has the model's F
    for share in ("interaction", "residual"):
        gaps = [values[sq < np.median(sq)].mean() - values[sq >= np.median(sq)].mean()
                for sq, values in ((sq_t, shares_t[share]), (sq_u, shares_u[share]))]
        did = control["difference_of_differences"][share]
        assert did["estimate"] == pytest.approx(gaps[0] - gaps[1], rel=1e-9)
        assert did["low"] < did["estimate"] < did["high"] and did["level"] == 0.99
        r = [stats.spearmanr(sq, values[share]).statistic for sq, values in ((sq_t, shares_t), (sq_u, shares_u))]
        assert control["spearman_difference"][share]["estimate"] == pytest.approx(r[0] - r[1], rel=1e-9)
    # the residual share is 1 - the interaction share: its gaps and r are the interaction's, negated
    assert control["difference_of_differences"]["residual"]["estimate"] == pytest.approx(
        -control["difference_of_differences"]["interaction"]["estimate"])


def test_part17_shares_tests_and_correlations(bimodal_run, joint_weights):
    W = {name: t.double() for name, t in joint_weights.items()}
    decoder, linear, nonlinear = (W[name].norm(dim=1).numpy() for name in ("W_dec", "linear", "embeddings"))
    total = decoder + linear + nonlinear
    shares = {"residual": decoder / total, "linear": linear / total, "nonlinear": nonlinear / total}
    shares["interaction"] = shares["linear"] + shares["nonlinear"]
    squared = decoder**2
    low = squared < 0.2
    assert bimodal_run["groups"]["low"]["squared_norm"]["count"] == N_INIT + N_LOW_MOVED == low.sum()
    assert bimodal_run["groups"]["high"]["squared_norm"]["count"] == N_HIGH

    for name, share in shares.items():
        entry = bimodal_run["shares"][name]
        assert (entry["mean_low"] == pytest.approx(share[low].mean())
                and entry["mean_high"] == pytest.approx(share[~low].mean()))
        assert entry["student"]["t"] == pytest.approx(stats.ttest_ind(share[low], share[~low]).statistic)
        assert entry["welch"]["t"] == pytest.approx(stats.ttest_ind(share[low], share[~low], equal_var=False).statistic)
        assert (bimodal_run["spearman_vs_squared_norm"][name]["r"]
                == pytest.approx(stats.spearmanr(squared, share).statistic))
    for side in ("mean_low", "mean_high"):
        assert (sum(bimodal_run["shares"][name][side] for name in ("residual", "linear", "nonlinear"))
                == pytest.approx(1.0))
    r = bimodal_run["spearman_vs_squared_norm"]
    assert r["interaction"]["r"] == pytest.approx(-r["residual"]["r"])
    raw = bimodal_run["spearman_raw_norms_vs_squared_norm"]
    assert raw["linear"]["r"] == pytest.approx(stats.spearmanr(squared, linear).statistic)
    assert raw["nonlinear"]["r"] == pytest.approx(stats.spearmanr(squared, nonlinear).statistic)


def test_part17_barely_moved_and_mixture_fit(bimodal_run, ortho_run, dirs, joint_weights):
    groups = bimodal_run["groups"]
    assert groups["low"]["moved_from_init"]["count"] == N_INIT
    untouched = joint_weights["W_dec"][:N_INIT].double().square().sum(dim=1).numpy()
    near = int((np.abs(untouched / (D / (3 * F)) - 1) <= 0.25).sum())
    assert 0 < near < N_INIT and groups["low"]["moved_from_init"]["near_init_count"] == near
    assert groups["high"]["moved_from_init"]["near_init_count"] == 0
    assert groups["low"]["moved_from_init"]["fraction"] == pytest.approx(N_INIT / (N_INIT + N_LOW_MOVED))
    assert groups["high"]["moved_from_init"]["count"] == 0
    fit = bimodal_run["mixture_fit"]
    assert (fit["sae_name"] == "joint"
            and fit["two_component"] == ortho_run["saes"]["joint"]["bimodality"]["two_component"])
    out = dirs["root"] / "part17"
    saved = json.loads((out / RESULTS_FILE).read_text())
    assert saved["analysis"] == "bimodal" and saved["split"] == 0.2
    assert any("spearman" in key for key in saved) and set(saved["spearman_vs_squared_norm"]) == set(bimodal.SHARES)
    for name in PNGS_17:
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_part17_table_has_the_papers_rows(bimodal_run):
    table = bimodal.format_table(bimodal_run)
    for text in ("82.8 / 71.3", "33.1 / 29.0", "49.7 / 42.3", "17.2 / 28.7", "-0.987", "barely moved",
                 "two-component mixture"):
        assert text in table


def test_both_scripts_on_tiny_checkpoints(tiny_stage1_dir, tiny_joint_dir, tmp_path):
    joint_dir = tiny_joint_dir
    ortho = part16.main(["--preset", "tiny", "--sae1_model_path", str(tiny_stage1_dir),
                         "--sae2_model_path", str(joint_dir), "--output_dir", str(tmp_path / "part16")])
    for entry in ortho["saes"].values():
        assert entry["n_features"] + entry["n_dropped"] == entry["source"]["features"]
        assert 0 < entry["cosine_offdiag"]["mean_abs"] <= entry["cosine_offdiag"]["max_abs"] <= 1
        assert 1 <= entry["pca"]["original"]["components_90"] <= entry["pca"]["original"]["n_components"] <= D
        assert sum(entry["bimodality"]["two_component"]["weights"]) == pytest.approx(1.0)

    joint, _, _ = load_joint(joint_dir)
    # both groups, whatever training did
    split = float(np.median(joint.sae.W_dec.detach().double().square().sum(dim=1).numpy()))
    bimodal = part17.main(["--preset", "tiny", "--joint_model_path", str(joint_dir),
                           "--orthogonality_dir", str(tmp_path / "part16"),
                           "--split", str(split), "--output_dir", str(tmp_path / "part17")])
    groups = bimodal["groups"]
    assert groups["low"]["squared_norm"]["count"] + groups["high"]["squared_norm"]["count"] == bimodal["n_features"]
    for side in ("mean_low", "mean_high"):
        assert sum(bimodal["shares"][name][side] for name in ("residual", "linear", "nonlinear")) == pytest.approx(1.0)
    assert bimodal["mixture_fit"]["two_component"] == ortho["saes"]["joint"]["bimodality"]["two_component"]
    # a directory the pipeline trained records its seed and firing counts: both the verdict and the control exist
    assert ortho["saes"]["joint"]["verdict"]["never_moved"]["known"]
    assert bimodal["controlled"]["untrained"]["n"] == F and bimodal["controlled"]["trained"]["n"] <= F


def test_part16_bad_inputs(dirs, tmp_path):
    out = tmp_path / "out"
    base = ["--output_dir", str(out)]
    cases = [
        (["--sae1_model_path", str(tmp_path / "missing"), "--sae2_model_path", str(dirs["joint"])],
         "not a finished checkpoint"),
        (["--sae1_model_path", str(dirs["unimodal"]), "--sae2_model_path", str(dirs["narrow"])], "different widths"),
        (["--sae1_model_path", str(dirs["unimodal"]), "--sae2_model_path", str(dirs["joint"]),
          "--sae2_name", "standalone"], "different names"),
        (["--sae1_model_path", str(dirs["unimodal"]), "--sae2_model_path", str(dirs["joint"]), "--threshold", "-1"],
         "--threshold"),
        (["--sae1_model_path", str(dirs["unimodal"]), "--sae2_model_path", str(dirs["joint"]), "--threshold", "10"],
         "only 0 features"),
    ]
    for args, message in cases:
        with pytest.raises(UserError, match=message):
            part16.main(args + base)
        assert not out.exists()
    with pytest.raises(UserError, match="is the input --sae2_model_path"):
        part16.main(["--sae1_model_path", str(dirs["unimodal"]), "--sae2_model_path", str(dirs["joint"]),
                     "--output_dir", str(dirs["joint"]), "--overwrite"])
    with pytest.raises(UserError, match="already holds"):
        part16.main(["--sae1_model_path", str(dirs["unimodal"]), "--sae2_model_path", str(dirs["joint"]),
                     "--output_dir", str(dirs["root"] / "part16")])


def test_part17_bad_inputs(dirs, ortho_run, orthogonal_run, tmp_path):
    out = tmp_path / "out"
    ortho = str(dirs["root"] / "part16")
    other = dirs["root"] / "part16_orthogonal"
    cases = [
        (["--joint_model_path", str(dirs["unimodal"]), "--orthogonality_dir", ortho], "holds a 'sae1' checkpoint"),
        (["--joint_model_path", str(dirs["joint"]), "--orthogonality_dir", str(tmp_path)], "no results.json"),
        (["--joint_model_path", str(dirs["joint"]), "--orthogonality_dir", str(other)], "not this --joint_model_path"),
        (["--joint_model_path", str(dirs["joint"]), "--orthogonality_dir", ortho, "--split", "5"],
         "leaves 1000 features below and 0"),
        (["--joint_model_path", str(dirs["joint"]), "--orthogonality_dir", ortho, "--split", "0.001"],
         "leaves 0 features below"),
    ]
    for args, message in cases:
        with pytest.raises(UserError, match=message):
            part17.main(args + ["--output_dir", str(out)])
        assert not out.exists()
    with pytest.raises(UserError, match="is the input --orthogonality_dir"):
        part17.main(["--joint_model_path", str(dirs["joint"]), "--orthogonality_dir", ortho, "--output_dir", ortho,
                     "--overwrite"])


def test_part17_wrong_analysis_folder_exits_2_with_one_line(dirs, bimodal_run, tmp_path):
    result = subprocess.run(
        [sys.executable, "part17_bimodal_gram.py", "--joint_model_path", str(dirs["joint"]),
         "--orthogonality_dir", str(dirs["root"] / "part17"), "--output_dir", str(tmp_path / "out")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --orthogonality_dir {dirs['root'] / 'part17'}: "
        "holds the results of 'bimodal', expected 'orthogonality'"]
    assert not (tmp_path / "out").exists()
