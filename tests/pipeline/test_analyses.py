"""part16 (orthogonality) and part17 (bimodal shares) end to end, on checkpoints built here with known structure."""
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

import part16_orthogonality as part16
import part17_bimodal_gram as part17
from common.analysis import bimodal
from common.analysis.decoders import RESULTS_FILE, barely_moved, initial_norm_band, near_init
from common.errors import UserError
from common.models.loading import load_joint
from common.models.sae import TopKSAE
from common.paths import REPO_ROOT
from tests.pipeline.analysis_checkpoints import N_HIGH, N_INIT, N_LOW_MOVED, D, F

PNGS_16 = ("squared_norms.png", "pca_cumulative.png", "cosine_offdiag.png")
PNGS_17 = ("shares_vs_squared_norm.png", "shares_by_group.png", "squared_norms.png")


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
