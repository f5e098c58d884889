"""Every setting that takes one of a few named values, as a ``Literal``: the allowed values live here only. argparse
offers them as choices and ``common.config.fields.Checked`` refuses any other value when a config is built."""
from __future__ import annotations

from typing import Literal

Preset = Literal["paper", "cpu", "tiny"]
Precision = Literal["auto", "fp32", "bf16", "faithful-fp16"]
"""auto: bf16 autocast over fp32 weights on CUDA, fp32 on the CPU; faithful-fp16: the original's pure fp16."""
Decode = Literal["auto", "dense", "sparse"]
"""auto: the sparse gather on the CPU, the dense matmul on CUDA."""
Schedule = Literal["paper", "original"]
StimulusSplit = Literal["even_odd", "none"]
Patch = Literal["delta", "replace"]
ClampMode = Literal["multiply", "set"]
RankBy = Literal["interaction", "omnibus"]
Pathway = Literal["secondary", "linear", "none"]
WordList = Literal["design", "tiny"]
Interpreter = Literal["none"]
ExportFormat = Literal["saelens", "sparsify"]
NFMTarget = Literal["residual", "beyond_ridge", "shuffled"]
"""What a control NFM (METHOD §14) predicts: the SAE's residual, what a ridge map of x leaves, or another row's."""
NFMPathways = Literal["both", "linear"]
"""both: the NFM as the paper has it; linear: its interaction pathway removed (its output layer zero and frozen)."""
