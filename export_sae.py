"""Export a stage-1 SAE (or a joint model's SAE part) as a SAELens or sparsify directory that the library loads as it
is, working on raw activations: the z-score normalization is folded into the weights (METHOD §12).

    python export_sae.py --sae1_model_path runs/cpu/sae1 --format saelens --output_dir exported/saelens
    python export_sae.py --sae1_model_path runs/cpu/sae1 --format sparsify --output_dir exported/layers.14
"""
from __future__ import annotations

from pathlib import Path

from common.config.fields import input_paths
from common.config.stages import ExportConfig
from common.errors import UserError
from common.models.formats import export_sae
from common.models.loading import PROVENANCE_KEYS, load_sae
from common.stages.cli import run_cli
from common.stages.opening import stage_config
from common.store.lock import OutputDir


def main(argv: list[str] | None = None) -> Path:
    cfg = stage_config(ExportConfig, __doc__, argv)
    sae, norm, source = load_sae(cfg.sae1_model_path)
    provenance = {key: source.config.get(key) for key in PROVENANCE_KEYS}
    if provenance["layer"] is None:
        raise UserError(f"{source.what} names no layer, so the exported SAE could name no hook: name its folder "
                        "layers.N as sparsify does (N = our layer - 1)")
    provenance.update(
        window=source.config.get("config", {}).get("window"),
        bos=source.config.get("data", {}).get("bos"),
        source={**source.record(), "stage": source.config["stage"]},
        normalization=("none: the SAE already read raw activations" if source.imported else
                       f"folded in: the z-score stats of {source.what} ({source.config.get('norm_stats_file')}) "
                       "became b_dec = mean, W_enc / std and W_dec * std"),
    )
    out = OutputDir(cfg.output_dir, overwrite=cfg.overwrite, inputs=input_paths(cfg))
    with out.writing(clear=cfg.overwrite):
        export_sae(sae, norm.mean, norm.std, provenance, cfg.format, out.path)
    print(f"{cfg.format} SAE (d {sae.d_model}, F {sae.num_features}, K {sae.k}, layer {provenance['layer']} of "
          f"{provenance['model_id']}) -> {out.path}")
    return out.path


if __name__ == "__main__":
    run_cli(main)
