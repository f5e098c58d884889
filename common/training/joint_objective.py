"""The joint model's loss and its evaluation (METHOD §5): the stage-5 script trains on these and benchmarks time
them."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from common.config.stages import JointConfig
from common.data.activations import NormStats
from common.models.joint import JointSAENFM, paper_parameter_counts, unique_parameter_counts, with_shares
from common.models.sae import TopKSAE
from common.paper import PAPER
from common.paper import text as _t
from common.runtime.context import Runtime
from common.runtime.regimes import autocast, param_dtype
from common.training.metrics import EVAL_BATCH_ROWS, ReconstructionMetrics
from common.training.sae_objective import sae_metrics
from common.training.window_cis import joint_cis


def joint_loss(joint: JointSAENFM, x: Tensor, decode: str) -> tuple[Tensor, dict[str, Tensor]]:
    """MSE of the joint reconstruction against the normalized input, the only training signal (no other term).

    The SAE path's own error is logged beside it, so the curves show what the NFM adds.
    """
    out = joint(x.to(joint.sae.W_dec.dtype), decode=decode)
    loss = F.mse_loss(out.recon.float(), x)
    return loss, {"sae_part_mse": F.mse_loss(out.sae_recon.detach().float(), x)}


class JointPass:
    """The joint model's reconstructions of a set of rows, accumulated: the whole model, its own SAE path, and the SAE
    path with one NFM path each (per window too, given ``rows_per_window``); the mean |output| of each path."""

    def __init__(self, joint: JointSAENFM, dead_threshold: float, rows_per_window: int | None) -> None:
        self.whole = ReconstructionMetrics(rows_per_window=rows_per_window)
        self.sae_part = ReconstructionMetrics(joint.sae.num_features, dead_threshold, rows_per_window)
        self.sae_plus_linear = ReconstructionMetrics(rows_per_window=rows_per_window)
        self.sae_plus_interaction = ReconstructionMetrics(rows_per_window=rows_per_window)
        self.mean_abs = torch.zeros(3, dtype=torch.float64)  # Σ|sae|, Σ|lin|, Σ|int|, then / entries

    def run(self, joint: JointSAENFM, rows: Tensor, norm: NormStats, decode: str, batch_size: int) -> JointPass:
        device = joint.sae.W_dec.device
        norm = norm.to(device)
        with torch.no_grad():
            for start in range(0, rows.shape[0], batch_size):
                x = norm.normalize(rows[start : start + batch_size].to(device))
                out = joint(x.to(joint.sae.W_dec.dtype), decode=decode)
                sae_recon, linear, interaction = out.sae_recon.float(), out.linear.float(), out.interaction.float()
                self.whole.update(x, out.recon.float())
                self.sae_part.update(x, sae_recon, out.top_acts, out.top_indices)
                self.sae_plus_linear.update(x, sae_recon + linear)
                self.sae_plus_interaction.update(x, sae_recon + interaction)
                self.mean_abs += torch.stack([t.double().abs().sum() for t in (sae_recon, linear, interaction)]).cpu()
        self.mean_abs /= rows.shape[0] * rows.shape[1]
        return self

    def per_window(self) -> dict[str, list[float]]:
        """Each window's ``rows``, the whole model's ``sst`` and ``sse_centred`` (variance explained), and the SSE of
        every reconstruction (``joint_sse``, ``sae_part_sse``, ``sae_plus_linear_sse``, ``sae_plus_interaction_sse``),
        with the SAE part's ``sae_part_sse_centred`` and ``sae_part_sst``."""
        whole, part = self.whole.per_window(), self.sae_part.per_window()
        return {"rows": whole["rows"], "sst": whole["sst"], "sse_centred": whole["sse_centred"],
                "joint_sse": whole["sse"], "sae_part_sse": part["sse"], "sae_part_sst": part["sst"],
                "sae_part_sse_centred": part["sse_centred"],
                "sae_plus_linear_sse": self.sae_plus_linear.per_window()["sse"],
                "sae_plus_interaction_sse": self.sae_plus_interaction.per_window()["sse"]}


def evaluate_joint(joint: JointSAENFM, rows: Tensor, norm: NormStats, decode: str, batch_size: int,
                   dead_threshold: float = 1e-6) -> dict[str, float]:
    """Whole-set figures on raw LM rows (n, d), in normalized units. The caller sets eval mode and any autocast.

    ``joint_*`` is the full reconstruction, ``sae_part_*`` the joint model's own SAE path alone (the paper's 0.275),
    ``sae_plus_linear_mse`` / ``sae_plus_interaction_mse`` leave one NFM path out. ``mean_abs_*`` are each path's
    mean |output| over every row and dimension, the shares over the linear + interaction sum (the paper's
    94.0% / 6.0%). Sums run in float64.
    """
    return joint_figures(JointPass(joint, dead_threshold, None).run(joint, rows, norm, decode, batch_size))


def joint_figures(evaluated: JointPass) -> dict[str, float]:
    """``evaluate_joint``'s figures from a finished pass."""
    whole, sae_part = evaluated.whole.compute(), evaluated.sae_part.compute()
    sae_plus_linear = evaluated.sae_plus_linear.compute()["mse"]
    sae_plus_interaction = evaluated.sae_plus_interaction.compute()["mse"]
    mean_abs_sae, mean_abs_linear, mean_abs_interaction = evaluated.mean_abs.tolist()
    return {
        "loss": whole["mse"],
        "joint_mse": whole["mse"],
        "sae_part_mse": sae_part["mse"],
        "improvement": 1.0 - whole["mse"] / sae_part["mse"],
        "joint_variance_explained": whole["variance_explained"],
        "sae_part_variance_explained": sae_part["variance_explained"],
        "joint_fvu": whole["fvu"],
        "sae_part_fvu": sae_part["fvu"],
        "sae_plus_linear_mse": sae_plus_linear,
        "sae_plus_interaction_mse": sae_plus_interaction,
        "linear_contribution": 1.0 - sae_plus_linear / sae_part["mse"],
        "interaction_contribution": 1.0 - whole["mse"] / sae_plus_linear,
        "mean_abs_sae": mean_abs_sae,
        "mean_abs_linear": mean_abs_linear,
        "mean_abs_interaction": mean_abs_interaction,
        "linear_share": mean_abs_linear / (mean_abs_linear + mean_abs_interaction),
        "interaction_share": mean_abs_interaction / (mean_abs_linear + mean_abs_interaction),
        "l0": sae_part.get("l0", 0.0),
        "dead_fraction": sae_part["dead_fraction"],
        "rows": whole["rows"],
    }


def joint_stage_metrics(best: JointSAENFM, val_rows: Tensor, paper_rows: Tensor, norm: NormStats, rt: Runtime,
                        dead_threshold: float, rows_per_window: int,
                        standalone: TopKSAE | None = None) -> tuple[dict[str, Any], Tensor]:
    """The final figures of stage 5's metrics.json, each comparison named (METHOD §5): on held-out rows against the
    joint model's own SAE path and (given ``standalone``) the stage-1 SAE, with CIs over the held-out windows
    (METHOD §13); the paper's recipe on its training rows; the parameter counts both ways. Also returns the SAE
    part's firing count per feature on the held-out rows."""
    with autocast(rt.precision, rt.device):
        held_out = JointPass(best, dead_threshold, rows_per_window).run(best, val_rows, norm, rt.decode,
                                                                        EVAL_BATCH_ROWS)
        on_paper_rows = evaluate_joint(best, paper_rows, norm, rt.decode, EVAL_BATCH_ROWS, dead_threshold)
    val, window = joint_figures(held_out), held_out.per_window()
    metrics = {key: val[key] for key in val if key not in ("loss", "rows")}
    metrics["evaluated_on"] = f"{val['rows']} rows of held-out windows (normalized units)"
    if standalone is not None:
        standalone = standalone.to(rt.device, param_dtype(rt.precision)).eval()
        with autocast(rt.precision, rt.device):
            evaluated = sae_metrics(standalone, val_rows, norm, rt, EVAL_BATCH_ROWS, dead_threshold,
                                    rows_per_window=rows_per_window)
        figures = evaluated.compute()
        window["standalone_sse"] = evaluated.per_window()["sse"]
        metrics["standalone_sae_mse"] = figures["mse"]
        metrics["standalone_sae_variance_explained"] = figures["variance_explained"]
        metrics["improvement_vs_standalone"] = 1.0 - val["joint_mse"] / figures["mse"]
    metrics["ci"], metrics["per_window"] = joint_cis(window, best.sae.d_model), window
    metrics["paper_recipe"] = {
        **{key: on_paper_rows[key] for key in ("joint_mse", "sae_part_mse", "improvement", "linear_share",
                                               "interaction_share")},
        "evaluated_on": f"the first {on_paper_rows['rows']} training rows of chunk 1 (training data, as the paper "
                        "measured)",
    }
    sae_shape, nfm_shape = best.sae.shape, best.nfm.shape
    metrics["parameters"] = {
        "paper_style": {**with_shares(paper_parameter_counts(sae_shape.d_model, sae_shape.num_features,
                                                             nfm_shape.embed_dim)),
                        "recipe": "encoder (F·d + F) and decoder (F·d) counted apart even when tied, as the paper"},
        "unique_tensors": {**with_shares(unique_parameter_counts(best)),
                           "recipe": "each parameter tensor once (a tied SAE's F × d matrix is encoder and decoder)"},
    }
    return metrics, held_out.sae_part.firing


def format_joint_table(metrics: dict[str, Any], cfg: JointConfig) -> str:
    """Stage 5's figures beside the paper's, each line saying how its figure is computed."""
    pct = lambda value: f"{100 * value:.1f}%"  # noqa: E731

    def pct_ci(key: str) -> str:  # the figure with its 95% CI over held-out windows, where the metrics hold one
        ci = metrics.get("ci", {}).get(key)
        return pct(metrics[key]) + ("" if ci is None else f" [{100 * ci['low']:.1f}, {100 * ci['high']:.1f}]")

    lines = [f"stage 5 joint SAE + NFM (F {cfg.features}, K {cfg.k}, top {cfg.top_n_features}, k {cfg.nfm_embed_dim}; "
             f"{metrics['precision_regime']}, {metrics['decode_path']} decode; {metrics['steps']} steps)",
             f"{'held-out rows unless said; [95% CI over windows]':<52}{'ours':>20}{'paper':>16}"]
    rows = [("joint MSE: SAE + NFM linear + NFM interaction", f"{metrics['joint_mse']:.4f}", _t("joint.joint_mse")),
            ("  MSE of its own SAE path alone", f"{metrics['sae_part_mse']:.4f}", _t("joint.sae_part_mse")),
            ("  improvement = 1 - joint / own SAE path", pct_ci("improvement"), _t("joint.improvement"))]
    if "sequential_improvement_val" in metrics:
        rows.append(("  sequential: stage 2's NFM on the SAE residual", pct(metrics["sequential_improvement_val"]),
                     _t("joint.sequential_improvement")))
    if "standalone_sae_mse" in metrics:
        rows += [("MSE of the standalone stage-1 SAE", f"{metrics['standalone_sae_mse']:.4f}", "-"),
                 ("  improvement = 1 - joint / standalone SAE", pct_ci("improvement_vs_standalone"), "-")]
    paper_recipe = metrics["paper_recipe"]
    rows += [("paper's recipe, first 1,000 training rows: joint", f"{paper_recipe['joint_mse']:.4f}",
              _t("joint.joint_mse")),
             ("  own SAE path / improvement",
              f"{paper_recipe['sae_part_mse']:.4f} / {pct(paper_recipe['improvement'])}",
              f"{_t('joint.sae_part_mse')} / {_t('joint.improvement')}"),
             ("mean |output| over rows and dims: linear path",
              f"{metrics['mean_abs_linear']:.3f} ({pct(metrics['linear_share'])})",
              f"{_t('joint.mean_abs_linear')} ({_t('joint.linear_share')})"),
             ("  interaction path", f"{metrics['mean_abs_interaction']:.3f} ({pct(metrics['interaction_share'])})",
              f"{_t('joint.mean_abs_interaction')} ({_t('joint.interaction_share')})"),
             ("error cut by adding the linear path to the SAE path", pct_ci("linear_contribution"), "-"),
             ("  then by adding the interaction path", pct_ci("interaction_contribution"), "-")]
    paper_style, unique = metrics["parameters"]["paper_style"], metrics["parameters"]["unique_tensors"]
    shares = paper_style["shares"]
    rows += [("parameters, encoder and decoder counted apart", f"{paper_style['total']:,}",
              _t("joint.parameters_total")),
             ("  NFM linear layer, share of that count", pct(shares["nfm_linear"]), _t("joint.nfm_linear_share")),
             ("  embeddings + MLP, share of that count", pct(shares["nfm_embeddings"] + shares["nfm_mlp"]),
              f"{PAPER['joint.nfm_embeddings_share'].value:.0%}"),
             ("parameters, unique tensors (tied weight once)", f"{unique['total']:,}", _t("joint.parameters_unique"))]
    lines += [f"{name:<52}{ours:>20}{paper:>16}" for name, ours, paper in rows]
    return "\n".join(lines)
