"""Stage 6: orthogonality of two SAEs' decoders (METHOD §6): Gram and cosine statistics computed in blocks, PCA on
the original's definition and the standard one, and the bimodality of the squared norms (the two-component
mixture fit that part17 reads from this script's --output_dir, and the one bimodality verdict of METHOD §13.3).

    python part16_orthogonality.py                 # stage-1 SAE (checkpoints_topk) vs the joint model's SAE
    python part16_orthogonality.py --preset cpu --sae1_model_path runs/cpu/sae1 --sae2_model_path runs/cpu/joint
"""
from __future__ import annotations

import logging
from typing import Any

from common.analysis.decoders import load_decoder, run_folder, run_record
from common.analysis.geometry import squared_norms
from common.analysis.orthogonality import ANALYSIS, MIN_FEATURES, analyse, format_table, plot
from common.config.fields import input_paths
from common.config.stages import OrthoConfig
from common.errors import UserError
from common.runtime.regimes import resolve_device
from common.stages.cli import run_cli
from common.stages.finish import write_results
from common.stages.opening import stage_config
from common.store.lock import OutputDir

log = logging.getLogger("part16")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = stage_config(OrthoConfig, __doc__, argv)
    if cfg.threshold < 0:
        raise UserError(f"--threshold {cfg.threshold} must be >= 0")
    if cfg.pca_components < 1:
        raise UserError(f"--pca_components {cfg.pca_components} must be at least 1")
    if cfg.sae1_name == cfg.sae2_name:
        raise UserError(f"--sae1_name and --sae2_name are both '{cfg.sae1_name}': give the two SAEs different names")
    resolve_device(cfg.device)
    decoders = [load_decoder(cfg.sae1_model_path, "--sae1_model_path", cfg.sae1_name, run_folder(cfg)),
                load_decoder(cfg.sae2_model_path, "--sae2_model_path", cfg.sae2_name, run_folder(cfg))]
    first, second = (decoder.source["d_model"] for decoder in decoders)
    if first != second:
        raise UserError(f"the two SAEs have different widths (d = {first} and {second}): their decoders cannot be "
                        "compared")
    for decoder, flag in zip(decoders, ("--sae1_model_path", "--sae2_model_path")):
        kept = int((squared_norms(decoder.W_dec) > cfg.threshold).sum())
        if kept < MIN_FEATURES:
            raise UserError(f"{flag}: only {kept} features have squared norm > --threshold {cfg.threshold:g} "
                            f"(need {MIN_FEATURES})")
    out = OutputDir(cfg.output_dir, overwrite=cfg.overwrite, inputs=input_paths(cfg))

    saes, plot_data = {}, {}
    for decoder in decoders:
        log.info("analysing %s (%s)", decoder.name, decoder.source["path"])
        saes[decoder.name] = analyse(decoder, cfg)
        plot_data[decoder.name] = saes[decoder.name].pop("_plot")
    results = {**run_record(cfg, ANALYSIS), "threshold": cfg.threshold, "saes": saes}
    with out.writing(clear=cfg.overwrite):
        plot(results, plot_data, out.path)
        write_results(out.path, results)
    print(format_table(results, cfg.threshold))
    return results


if __name__ == "__main__":
    run_cli(main)
