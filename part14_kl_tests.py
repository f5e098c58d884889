"""Stage 4: KL / cross-entropy pathology tests of the sequential SAE and SAE + NFM (METHOD §4).

    python part14_kl_tests.py                                    # the paper's run, models evaluated as trained
    python part14_kl_tests.py --preset cpu --sae1_model_path runs/cpu/sae1 --nfm_model_path runs/cpu/nfm
    python part14_kl_tests.py --preset cpu ... --original_eval   # the original's evaluation (the paper's figures)
"""
from __future__ import annotations

from common.config.stages import KL14Config
from common.kl.conditions import SEQUENTIAL_CONDITIONS, sequential_conditions
from common.models.loading import check_nfm_on_sae, load_nfm, load_sae
from common.models.settings import original_settings, trained_settings
from common.paper import BANNERS
from common.stages.cli import run_cli
from common.stages.kl import KLStage, check_kl_settings, run_kl_stage
from common.stages.opening import stage_config

PAPER = BANNERS["kl14"]


def main(argv: list[str] | None = None) -> dict:
    cfg = stage_config(KL14Config, __doc__, argv)

    def read_inputs() -> KLStage:
        sae, norm, sae_source = load_sae(cfg.sae1_model_path)
        nfm, nfm_source = load_nfm(cfg.nfm_model_path)
        check_nfm_on_sae(nfm_source, sae, sae_source, norm)
        check_kl_settings(cfg, sae_source.config["layer"], "--sae1_model_path")
        if cfg.original_eval:
            settings = original_settings(sae.k, pooling="sum")
        else:
            settings = trained_settings(nfm_source.config["sae_k"], nfm_source.config["top_n_features"])

        return KLStage(
            stage="kl14",
            sources=[sae_source, nfm_source],
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

    return run_kl_stage(cfg, read_inputs)


if __name__ == "__main__":
    run_cli(main)
