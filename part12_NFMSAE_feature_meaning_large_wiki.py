"""Stage 10d (part12): what the selected secondary features mean (METHOD §10). Their top-activating 10-token chunks
in held-out text, labelled offline (the token most often at the max-activating position of the top examples, its
share, and its lift over corpus frequency; no language-model service), and greedy generations with each feature
clamped through the same patch part13 uses, so the clamp really reaches the model. The same scan keeps what each
feature's dashboard shows (METHOD §15), for the selected secondary features and the primary features part9b found:
the top examples with their neighbours' codes, the activation density, the logit lens of a primary feature's decoder
direction and the primary features that drive a secondary one; --feature_pages writes one HTML page per feature.

    python part12_NFMSAE_feature_meaning_large_wiki.py --sae1_model_path checkpoints_topk \\
        --nfm_model_path checkpoints_nfm --interaction_sae_path interaction_sae --selection_dir selection_results
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from common.behavior.feature_drivers import drivers
from common.behavior.feature_scan import PRIMARY, SECONDARY, ScanResult, dashboard_data, scan_features
from common.behavior.logit_lens import logit_lens
from common.behavior.pipeline import Clamp
from common.behavior.run import BehaviorRun, greedy
from common.behavior.stimuli import load_stimuli
from common.behavior.texts import stimulus_set
from common.config.stages import MeaningConfig
from common.data.activations import ActivationStream
from common.data.text import WindowedText, resolve_text
from common.errors import UserError
from common.paper import BANNERS
from common.reporting.html.dashboards import write_feature_pages
from common.stages.behavior import finish, open_run, read_earlier
from common.stages.cli import run_cli
from common.stages.opening import stage_config

ANALYSIS = "meaning"
PAPER = BANNERS["meaning"]


def label(examples: list[tuple[float, int, int]], text: WindowedText, counts: Any, tokenizer) -> dict[str, Any]:
    """The token most often at the max-activating position, its share of the examples and its lift over its
    frequency in the scanned text."""
    if not examples:
        return {"token": None, "share": 0.0, "lift": None}
    tops = Counter(int(text.get(window)[position]) for _, window, position in examples)
    token, hits = tops.most_common(1)[0]
    share = hits / len(examples)
    frequency = float(counts[token] / counts.sum())
    return {"token": tokenizer.decode([token]), "token_id": token, "share": share,
            "lift": share / frequency if frequency else None}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = stage_config(MeaningConfig, __doc__, argv)
    if min(cfg.examples, cfg.chunk_tokens, cfg.num_windows, cfg.batch_size) < 1:
        raise UserError("--examples, --chunk_tokens, --num_windows and --batch_size must be at least 1")
    earlier: dict[str, Any] = {}
    run = open_run(cfg, check_more=lambda sources: earlier.update(
        read_earlier(cfg.selection_dir, "--selection_dir", "selection", sources)))
    selection = earlier
    features = [selection["target"], *selection["exploratory"]]
    if max(features) >= run.pipeline.secondary.num_features:
        raise UserError(f"--selection_dir {cfg.selection_dir} names feature {max(features)}, outside this secondary "
                        f"SAE's {run.pipeline.secondary.num_features}")
    tokenizer = run.lm.tokenizer
    text = WindowedText(resolve_text(cfg.eval_text_files, cfg.preset, "eval"), tokenizer, cfg.window,
                        run.lm.bos_token_id if run.lm.adds_bos else None)
    stream = ActivationStream(run.lm, run.layer, text, cfg.batch_size, cache_dir=cfg.cache_dir)
    if not cfg.original_eval and run.layer + 1 < run.lm.num_layers:  # the same pass keeps the next block's
        stream.also_cache((run.layer + 1,))  # residual, the one --original_eval reads
    indices = text.available(0, cfg.num_windows)
    primaries = [row["primary"] for row in selection["attribution"]]  # the primary features part9b found
    scan = scan_features(run, stream, indices, primaries, features, cfg.examples, cfg.batch_size)
    prompts = load_stimuli(cfg.stimuli).prompts
    clamps = [Clamp("secondary", f, value, cfg.clamp_mode) for f in features for value in cfg.multipliers]
    continued = {prompt: greedy(run, prompt, [None, *clamps], cfg.generation_tokens) for prompt in prompts}
    texts = {prompt: [tokenizer.decode(ids) for ids in rows] for prompt, rows in continued.items()}
    driven = drivers(run, stimulus_set(run, "selection").texts, features, primaries)
    entries = {}
    for feature in features:
        best = scan.best(SECONDARY, feature)
        examples = [{"code": code, "window": window,
                     "text": tokenizer.decode(text.get(window)[max(run.first_position, position + 1 - cfg.chunk_tokens):
                                                               position + 1].tolist())}
                    for code, window, position in best]
        generations = {f"{clamp.value:g}": {prompt: texts[prompt][1 + i] for prompt in prompts}
                       for i, clamp in enumerate(clamps) if clamp.feature == feature}
        entries[str(feature)] = {"role": "target" if feature == features[0] else "exploratory",
                                 **scan.summary(SECONDARY, feature),
                                 "label": label(best, text, scan.token_counts, tokenizer), "examples": examples,
                                 "generations": generations,
                                 "dashboard": dashboard_data(scan, SECONDARY, feature, tokenizer),
                                 "attribution": driven[feature]}
    results = {"analysis": ANALYSIS, **run.describe(), "text": text.source.description,
               "text_identity": text.source.identity, "windows_requested": cfg.num_windows,
               "windows_used": len(indices), "clamp_mode": cfg.clamp_mode, "multipliers": cfg.multipliers,
               "clean_generations": {prompt: rows[0] for prompt, rows in texts.items()},
               "features": entries, "primary_features": primary_entries(run, scan, primaries)}
    finish(run, results, lambda folder: write_feature_pages(folder, results, selection) if cfg.feature_pages else None)
    print(format_table(results))
    return results


def primary_entries(run: BehaviorRun, scan: ScanResult, primaries: list[int]) -> dict[str, Any]:
    """Each primary feature's dashboard data: its scan and the logit lens of its decoder direction."""
    lens = logit_lens(run, primaries)
    return {str(p): {**scan.summary(PRIMARY, p), "dashboard": dashboard_data(scan, PRIMARY, p, run.lm.tokenizer),
                     "logit_lens": lens[p]} for p in primaries}


def format_table(results: dict[str, Any]) -> str:
    lines = [f"What the selected secondary features mean (METHOD §10, part12; {results['windows_used']:,} windows of "
             f"{results['text']}, labels offline)",
             f"  {'feature':>8} {'role':<12}{'label':>12}{'share':>8}{'lift':>9}{'active':>9}  top example"]
    for feature, entry in results["features"].items():
        top = entry["examples"][0]["text"] if entry["examples"] else ""
        lift = entry["label"]["lift"]
        lines.append(f"  {feature:>8} {entry['role']:<12}{entry['label']['token']!r:>12}"
                     f"{100 * entry['label']['share']:>7.0f}%{'-' if lift is None else f'{lift:.1f}x':>9}"
                     f"{100 * entry['active_share']:>8.2f}%  {top!r}")
    lines.append(PAPER)
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main)
