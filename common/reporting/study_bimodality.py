"""The study's bimodality question (METHOD §11): every decoder's squared norms under each test, beside its initial
decoder and its moved features."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.analysis.decoders import NEAR_INIT_TOLERANCE, load_decoder
from common.analysis.geometry import squared_norms
from common.config.stages import OrthoConfig
from common.reporting.report import STAGE_FILES
from common.reporting.study_plan import seed_variants
from common.reporting.study_tables import Runs, pct
from common.stats import bimodality, dip_test, valley
from common.store.reads import load_json
from common.store.stage_files import CONFIG_FILE

REPORT_VERDICT = "the mixture rule (REPORT.md's 'Squared norms (part16)' rows)"




def initial_decoder(folder: Path) -> torch.Tensor:
    """The decoder the stage started from, re-created as its runner made it: the run's seed, then the model built
    from its recorded shape (every parameter drawn in the same order)."""
    from common.models.joint import JointSAENFM
    from common.models.sae import TopKSAE

    config = load_json(folder / CONFIG_FILE)
    classes = {cls.__name__: cls for cls in (TopKSAE, JointSAENFM)}
    record = config["model"]
    cls = classes[record["class"]]
    torch.manual_seed(config["config"]["seed"])
    model = cls.from_shape(cls.shape_from_record(record))
    return (model.sae if isinstance(model, JointSAENFM) else model).W_dec.detach().float()


def norm_statistics(norms: np.ndarray, seed: int) -> dict[str, Any]:
    mixture = bimodality(norms, seed)
    return {"n": int(norms.size), "mixture": {key: mixture[key] for key in ("bimodal", "delta_bic", "ashman_d",
                                                                              "two_component")},
            "dip": dip_test(norms), "valley": valley(norms, mixture["two_component"]["means"])}


def decoder_bimodality(folder: Path, seed: int) -> dict[str, Any]:
    """The squared decoder norms by the mixture rule, the dip test and the valley check; the same for the initial
    decoder, and for the features whose squared norm moved more than the near-init tolerance from their own start."""
    threshold = OrthoConfig().threshold
    trained = squared_norms(load_decoder(folder, "--sae1_model_path", folder.name).W_dec).numpy()
    initial = squared_norms(initial_decoder(folder)).numpy()
    kept = trained > threshold
    moved = kept & (np.abs(trained - initial) > NEAR_INIT_TOLERANCE * initial)
    kept_stats = norm_statistics(trained[kept], seed)
    agree = (kept_stats["mixture"]["bimodal"] and kept_stats["dip"]["bimodal"]
             and kept_stats["valley"]["valley"])
    return {"trained": kept_stats, "initial": norm_statistics(initial, seed),
            "moved": norm_statistics(trained[moved], seed) if moved.sum() > 3 else {"n": int(moved.sum())},
            "moved_fraction": float(moved.sum() / kept.sum()),
            "verdict": bool(agree)}


def _verdicts(entry: dict[str, Any]) -> str:
    trained, moved = entry["trained"], entry["moved"]
    on_moved = "too few moved features" if "mixture" not in moved else (
        f"{'bimodal' if moved['mixture']['bimodal'] else 'not bimodal'} by the mixture rule on its "
        f"{pct(entry['moved_fraction'])} moved features (dip p = {moved['dip']['p']:.3g})")
    return (f"is {'bimodal' if trained['mixture']['bimodal'] else 'not bimodal'} by the mixture rule, dip p = "
            f"{trained['dip']['p']:.3g}, {'a' if trained['valley']['valley'] else 'no'} valley between the modes, "
            f"{on_moved}")


def bimodality_section(runs: Runs) -> dict[str, Any]:
    entries = []
    for variant in ("main", "fp16", "long", *seed_variants(runs.study_dir)):
        for stage, name in (("sae1", "standalone"), ("joint", "joint")):
            if not (runs.folder(variant) / STAGE_FILES[stage]).is_file():
                continue
            result = decoder_bimodality(runs.folder(variant) / stage, 0)
            entries.append({"variant": variant, "sae": name, "folder": f"{variant}/{stage}", **result})
    main = {e["sae"]: e for e in entries if e["variant"] == "main"}
    finding = "not run" if len(main) < 2 else (
        f"Main run: the standalone SAE {_verdicts(main['standalone'])}; the joint SAE {_verdicts(main['joint'])}. "
        f"The report uses {REPORT_VERDICT}; the study calls a decoder bimodal only where the mixture rule, the dip "
        "test and the valley agree.")
    return {"entries": entries, "report_uses": REPORT_VERDICT,
            "study_verdict": "bimodal where the mixture rule, the dip test (p < 0.05) and the valley check all agree",
            "finding": finding}


