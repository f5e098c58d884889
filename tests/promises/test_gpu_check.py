"""The GPU check's smoke run (tiny shapes, CPU): it must finish and its parity checks must hold, so the one command a
lent GPU gets cannot rot between sessions. Timings are printed by the script, never asserted."""
from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks import gpu_check


def test_smoke_run_completes_with_parity(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    results = gpu_check.main(["--smoke", "--out", str(out)])

    assert results["parity_failures"] == []
    # the fp32 paths agree with the dense reference to float rounding; bf16 only to its own precision
    fp32 = {name: value for name, value in results["parity"].items() if "bf16" not in name}
    assert len(fp32) == 6 and max(fp32.values()) < 1e-4
    assert all(value < 2e-2 for name, value in results["parity"].items() if "bf16" in name)
    # the dense decode's product really ran in bf16 (the sparse one's embedding-bag runs in fp32 under autocast)
    assert results["parity"]["sae dense bf16 (relative)"] > 1e-4
    assert set(results["tiny_stages_seconds"]) == {"part1c", "part2d", "part10", "part15", "part14", "part16",
                                                   "part17", "part18"}
    for step in ("sae_step", "joint_step"):
        assert all(results[step][side]["seconds_per_step"] > 0 for side in ("ours", "original"))
    assert all(math.isfinite(value) and value > 0 for value in results["lm"]["harvest_tokens_per_second"].values())
    assert json.loads(out.read_text(encoding="utf-8"))["parity"] == results["parity"]
