"""common/stages/finish.py: the file a stage writes last holds its figures, then what the stage cost
(``resources``), and, for results, how many processes ran it (1 outside torchrun)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.stages.finish import write_metrics, write_results


@pytest.fixture(autouse=True)
def outside_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def check_resources(resources: dict) -> None:
    assert resources["wall_seconds"] > 0
    assert resources["peak_rss_bytes"] > 10 * 2**20  # this process has imported torch


def test_metrics_json_holds_the_figures_then_resources(tmp_path: Path):
    write_metrics(tmp_path, {"variance_explained": 0.864, "steps": 7})
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert list(written) == ["variance_explained", "steps", "resources"]
    assert (written["variance_explained"], written["steps"]) == (0.864, 7)
    check_resources(written["resources"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # through the atomic write: no temp left


def test_results_json_holds_the_world_size_the_figures_then_resources(tmp_path: Path):
    path = write_results(tmp_path / "kl", {"conditions": {"sae": {"kl": 0.5}}})
    assert path == tmp_path / "kl" / "results.json"
    written = json.loads(path.read_text())
    assert list(written) == ["world_size", "conditions", "resources"]
    assert written["world_size"] == 1 and written["conditions"] == {"sae": {"kl": 0.5}}
    check_resources(written["resources"])


def test_under_torchrun_results_record_the_world_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    path = write_results(tmp_path, {"conditions": {}})
    assert json.loads(path.read_text())["world_size"] == 4


def test_a_stages_own_resources_key_cannot_hide_the_measured_one(tmp_path: Path):
    write_metrics(tmp_path, {"resources": "claimed"})
    check_resources(json.loads((tmp_path / "metrics.json").read_text())["resources"])
