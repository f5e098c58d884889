"""Stage 4: KL / cross-entropy pathology tests of the sequential SAE and SAE + NFM (SPEC §4).

    python part14_kl_tests.py                                    # the paper's run, models evaluated as trained
    python part14_kl_tests.py --preset cpu --sae1_model_path runs/cpu/sae1 --nfm_model_path runs/cpu/nfm
    python part14_kl_tests.py --preset cpu ... --original_eval   # the original's evaluation (the paper's figures)
"""
from __future__ import annotations

import torch

from common.checkpoint import require_match, stage_dir, weights_sha256
from common.cli import run_cli
from common.config import KL14Config, parse_config
from common.errors import UserError
from common.kl_conditions import SEQUENTIAL_CONDITIONS, original_settings, sequential_conditions, trained_settings
from common.kl_stage import KLStage, check_kl_settings, run_kl_stage
from common.loading import PROVENANCE_KEYS, load_nfm, load_sae
from common.stage import load_norm_stats

ALIASES = {"sae1_model_path": ["--primary_sae_path"], "nfm_model_path": ["--nfm_path"]}
PAPER = ("paper (original evaluation): SAE 2.99x ε-random, SAE + NFM 2.1x, a 29.8% KL reduction; "
         "linear 29.8% (t = 806.3), interaction 0.9%; 17.8M measurements")


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(KL14Config, "kl14", __doc__, argv, ALIASES)
    sae, norm, sae_config = load_sae(cfg.sae1_model_path)
    nfm, nfm_config = load_nfm(cfg.nfm_model_path)
    sae_what, nfm_what = f"--sae1_model_path {cfg.sae1_model_path}", f"--nfm_model_path {cfg.nfm_model_path}"
    require_match(f"{nfm_what} against {sae_what}", sae_config, nfm_config, PROVENANCE_KEYS)
    if nfm_config["num_features"] != sae.num_features:
        raise UserError(f"{nfm_what} was trained on an SAE with {nfm_config['num_features']} features, {sae_what} has {sae.num_features}")
    recorded = nfm_config.get("sae1", {}).get("weights_sha256")
    if recorded is not None and recorded != weights_sha256(stage_dir(cfg.sae1_model_path, "--sae1_model_path")):
        raise UserError(f"{nfm_what} was trained on another stage-1 SAE than {sae_what}")
    nfm_norm = load_norm_stats(stage_dir(cfg.nfm_model_path, "--nfm_model_path"))
    if not (torch.equal(nfm_norm.mean, norm.mean) and torch.equal(nfm_norm.std, norm.std)):
        raise UserError(f"{nfm_what} was trained with other normalization statistics than {sae_what}")
    check_kl_settings(cfg, sae_config["layer"], "--sae1_model_path")
    if not 1 <= nfm_config["sae_k"] <= sae.k:
        raise UserError(f"{nfm_what} records SAE K {nfm_config['sae_k']}, outside 1..{sae.k} of {sae_what}")
    if cfg.original_eval:
        settings = original_settings(sae.k, pooling="sum")
    else:
        settings = trained_settings(nfm_config["sae_k"], nfm_config["top_n_features"])

    kl = KLStage(
        stage="kl14",
        checkpoints={sae_what: sae_config, nfm_what: nfm_config},
        modules=[sae, nfm],
        norm=norm,
        conditions=lambda norm_on_device, decode: sequential_conditions(sae, nfm, norm_on_device, settings, decode),
        labels=SEQUENTIAL_CONDITIONS,
        reference="sae",
        settings=settings,
        title="part14 sequential SAE + NFM",
        paper=PAPER,
        extra={"sae1_model_path": str(cfg.sae1_model_path), "nfm_model_path": str(cfg.nfm_model_path)},
    )
    return run_kl_stage(cfg, kl)


if __name__ == "__main__":
    run_cli(main)
