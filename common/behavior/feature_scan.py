"""What a feature's dashboard shows from held-out text (METHOD §15): one scan of the windows, for primary and
secondary features together, keeping per feature its top-activating tokens with their neighbours' codes (so the
page can shade them), its activation density and the histogram of its non-zero codes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from common.behavior.run import BehaviorRun
from common.data.activations import ActivationStream

LEFT, RIGHT = 9, 3  # tokens shown before and after the max-activating one
HISTOGRAM_BINS = 24
PRIMARY, SECONDARY = "primary", "secondary"


@dataclass
class Example:
    code: float
    window: int
    position: int
    token_ids: list[int]  # the window's tokens from ``position - LEFT`` to ``position + RIGHT``
    codes: list[float]  # the feature's code at each of them
    peak: int  # the max-activating token's index in ``token_ids``


@dataclass
class FeatureRecord:
    examples: list[Example] = field(default_factory=list)
    code_sum: float = 0.0
    nonzero: list[Tensor] = field(default_factory=list)


@dataclass
class ScanResult:
    records: dict[tuple[str, int], FeatureRecord]  # (kind, feature) -> what the scan kept
    token_counts: Tensor  # (vocabulary,) the scanned real positions' tokens (a label's lift over corpus frequency)
    positions: int  # real positions scanned (BOS excluded)

    def best(self, kind: str, feature: int) -> list[tuple[float, int, int]]:
        """The top examples as (code, window, position), largest first."""
        return [(e.code, e.window, e.position) for e in self.records[kind, feature].examples]

    def summary(self, kind: str, feature: int) -> dict[str, float]:
        record = self.records[kind, feature]
        active = sum(int(values.numel()) for values in record.nonzero)
        return {"mean_code": record.code_sum / self.positions, "active_share": active / self.positions}


def codes_of(acts: Tensor, indices: Tensor, wanted: list[int]) -> Tensor:
    """(N, K) sparse codes -> (N, len(wanted)) dense codes of the wanted features."""
    if not wanted:
        return acts.new_zeros(acts.shape[0], 0)
    hits = indices.unsqueeze(-1) == torch.tensor(wanted, device=indices.device)
    return (acts.float().unsqueeze(-1) * hits).sum(1)


def _keep_top(record: FeatureRecord, codes: Tensor, ids: Tensor, chunk: list[int], examples: int) -> None:
    """Merge this batch's largest codes (B, T) of one feature into its top list, with their neighbourhoods."""
    width = codes.shape[1]
    values, flat = codes.flatten().topk(min(examples, codes.numel()))
    for value, place in zip(values.tolist(), flat.tolist()):
        if value <= 0:
            break
        row, position = divmod(place, width)
        start, stop = max(0, position - LEFT), min(width, position + RIGHT + 1)
        record.examples.append(Example(value, chunk[row], position, ids[row, start:stop].tolist(),
                                       codes[row, start:stop].tolist(), position - start))
    record.examples = sorted(record.examples, key=lambda e: -e.code)[:examples]


def scan_features(run: BehaviorRun, stream: ActivationStream, indices: list[int], primary: list[int],
                  secondary: list[int], examples: int, batch_size: int) -> ScanResult:
    """Scan the windows ``indices`` (their activations from ``stream``, so from its cache where it has them) once:
    the codes of the primary features at the pipeline's inference K and of the secondary features."""
    keys = [(PRIMARY, f) for f in primary] + [(SECONDARY, f) for f in secondary]
    records = {key: FeatureRecord() for key in keys}
    vocab = len(run.lm.tokenizer)
    counts = torch.zeros(vocab, dtype=torch.float64)
    for start in tqdm(range(0, len(indices), batch_size), desc="scan", unit="batch", leave=False):
        chunk = indices[start : start + batch_size]
        ids = torch.stack([stream.text.get(i) for i in chunk])
        residual = stream.windows(chunk).to(run.rt.device)
        out = run.pipeline.run(residual.reshape(-1, residual.shape[-1]).float())
        codes = torch.cat([codes_of(out.top_acts, out.top_indices, primary),
                           codes_of(out.secondary_acts, out.secondary_indices, secondary)], dim=1)
        codes = codes.reshape(len(chunk), ids.shape[1], len(keys)).cpu()
        codes[:, : run.first_position] = 0  # BOS is no example
        counts += torch.bincount(ids[:, run.first_position:].flatten(), minlength=vocab).double()
        for j, key in enumerate(keys):
            feature_codes = codes[..., j]
            records[key].code_sum += float(feature_codes.sum())
            records[key].nonzero.append(feature_codes[feature_codes > 0])
            _keep_top(records[key], feature_codes, ids, chunk, examples)
    return ScanResult(records, counts, int(counts.sum()))


def token_text(tokenizer: Any, token_id: int) -> str:
    """A token as a reader should see it: its leading space kept (SentencePiece's ▁, byte-level BPE's Ġ), a newline
    as ↵."""
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    if piece is None:
        return tokenizer.decode([int(token_id)])
    return (piece.replace("▁", " ").replace("Ġ", " ").replace("Ċ", "↵").replace("<0x0A>", "↵")
            .replace("\n", "↵"))


def dashboard_data(scan: ScanResult, kind: str, feature: int, tokenizer: Any) -> dict[str, Any]:
    """One feature's scan as its dashboard reads it: density, histogram of its non-zero codes, examples by token."""
    record = scan.records[kind, feature]
    nonzero = torch.cat(record.nonzero).double().numpy() if record.nonzero else np.zeros(0)
    counts, edges = (np.histogram(nonzero, bins=HISTOGRAM_BINS, range=(0.0, float(nonzero.max())))
                     if nonzero.size else (np.zeros(0, dtype=np.int64), np.zeros(0)))
    return {
        "positions": scan.positions, "active_positions": int(nonzero.size),
        "density": nonzero.size / scan.positions if scan.positions else 0.0,
        "max_code": float(nonzero.max()) if nonzero.size else 0.0,
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        "examples": [{"code": e.code, "window": e.window, "position": e.position, "peak": e.peak,
                      "tokens": [token_text(tokenizer, t) for t in e.token_ids], "codes": e.codes}
                     for e in record.examples],
    }
