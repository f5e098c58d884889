"""Stage 7: the joint model's low- and high-norm features (METHOD §7): how each feature's weight splits between the
residual pathway (its decoder column) and the NFM's linear column and embedding row, below and above a
squared-norm split, with part16's two-component mixture fit of the same squared norms printed beside; and the same
shares on the moved, active features beside the model at its initialization, each split at its median (the untrained
control, METHOD §13.4).

    python part17_bimodal_gram.py --joint_model_path checkpoints_joint --orthogonality_dir orthogonality_results
    python part17_bimodal_gram.py --preset cpu --joint_model_path runs/cpu/joint --orthogonality_dir runs/cpu/ortho
"""
from __future__ import annotations

from typing import Any

from common.analysis.bimodal import (
    ANALYSIS,
    CONSTRUCTION_NOTE,
    MIN_FEATURES_PER_GROUP,
    SHARE_DEFINITION,
    analyse,
    check_split,
    find_mixture_fit,
    format_table,
    pathway_norms,
    plot,
    untrained_control,
)
from common.analysis.decoders import initial_norm_band, read_results, run_folder, run_record, source_record
from common.config.fields import input_paths
from common.config.stages import BimodalConfig
from common.errors import UserError
from common.models.loading import load_joint
from common.paths import portable
from common.stages.cli import run_cli
from common.stages.finish import write_results
from common.stages.opening import stage_config
from common.store.lock import OutputDir


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = stage_config(BimodalConfig, __doc__, argv)
    if cfg.threshold < 0:
        raise UserError(f"--threshold {cfg.threshold} must be >= 0")
    if not cfg.orthogonality_dir:
        raise UserError("--orthogonality_dir is required: part16's output folder, whose mixture fit this table prints")
    joint, _, joint_source = load_joint(cfg.joint_model_path)
    source = source_record(joint_source, run_folder(cfg))
    orthogonality = read_results(cfg.orthogonality_dir, "--orthogonality_dir", "orthogonality")
    fit_name, fit_entry = find_mixture_fit(orthogonality, source, cfg.orthogonality_dir)
    norms = pathway_norms(joint)
    valid = norms["decoder"] ** 2 > cfg.threshold
    if valid.sum() < 2 * MIN_FEATURES_PER_GROUP:
        raise UserError(f"--joint_model_path: only {int(valid.sum())} features have squared norm > --threshold "
                        f"{cfg.threshold:g}")
    low = check_split(norms["decoder"][valid] ** 2, cfg.split)
    out = OutputDir(cfg.output_dir, overwrite=cfg.overwrite, inputs=input_paths(cfg))

    band = initial_norm_band(source["d_model"], source["features"])
    analysis = analyse(norms, valid, low, band)
    controlled = untrained_control(joint_source, norms, valid, cfg.seed)
    plot_data = analysis.pop("_plot")
    results = {
        **run_record(cfg, ANALYSIS),
        "source": source,
        "threshold": cfg.threshold,
        "split": cfg.split,
        "groups_defined_as": f"low: squared norm < {cfg.split:g}; high: >= {cfg.split:g}",
        "n_features": int(valid.sum()),
        "n_dropped": int((~valid).sum()),
        "share_definition": SHARE_DEFINITION,
        **analysis,
        "spearman_note": CONSTRUCTION_NOTE,
        "moved_from_init_band": band,
        "mixture_fit": {"from": portable(cfg.orthogonality_dir, run_folder(cfg)), "sae_name": fit_name,
                        **fit_entry["bimodality"]},
        "controlled": controlled,
    }
    with out.writing(clear=cfg.overwrite):
        plot(results, plot_data, out.path)
        write_results(out.path, results)
    print(format_table(results))
    return results


if __name__ == "__main__":
    run_cli(main)
