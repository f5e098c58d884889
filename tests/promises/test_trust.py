"""No silent wrong result: damaged inputs are refused in one line, outputs never overwrite inputs, one writer per
directory, a cache keyed by content, runs resumed by content, and the guards a planted defect would slip past."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import part1c_sae_topK_implementation as part1c
import part2d_residual_NFM_streaming as part2d
import part14_kl_tests as part14
from common.config.concepts import TrainConfig
from common.data.activations import NormStats, open_stream
from common.errors import UserError
from common.lm.hooks import capture_layer, patch_layer, run_from_layer
from common.models.loading import load_sae
from common.models.nfm import NFM
from common.models.sae import TopKSAE
from common.paths import shared_wikitext_dir
from common.stages.cli import run_cli
from common.store.formats import upgrade_config
from common.store.lock import LOCK_FILE, OutputDir
from common.store.model_files import load_weights
from common.store.reads import load_json
from common.store.stage_files import CONFIG_FILE, RESUME_FILE, WEIGHTS_FILE, load_resume_state
from common.training.trainer import Trainer

CPU = torch.device("cpu")
TINY = ["--preset", "tiny"]


def refused(main, argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run a script's CLI in-process: it must exit 2 with exactly one ``error:`` line; returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- damaged inputs ------------------------------------------------------------------------------------------------


def test_damaged_files_are_refused_naming_the_file(tiny_stage1_dir: Path, tmp_path: Path, capsys):
    truncated = shutil.copytree(tiny_stage1_dir, tmp_path / "truncated")
    data = (truncated / WEIGHTS_FILE).read_bytes()
    (truncated / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    line = refused(part2d.main, [*TINY, "--sae1_model_path", str(truncated), "--checkpoint_dir", str(tmp_path / "o")],
                   capsys)
    assert str(truncated / WEIGHTS_FILE) in line and "truncated or corrupt" in line
    assert not (tmp_path / "o").exists()

    broken_config = shutil.copytree(tiny_stage1_dir, tmp_path / "config")
    (broken_config / CONFIG_FILE).write_text('{"stage": "sae1", ')
    with pytest.raises(UserError, match="config.json is truncated or corrupt"):
        load_sae(broken_config)
    bad_stats = shutil.copytree(tiny_stage1_dir, tmp_path / "stats")
    torch.manual_seed(0)
    from safetensors.torch import save_file

    save_file({"mean": torch.zeros(3)}, str(bad_stats / "norm_stats.safetensors"))
    with pytest.raises(UserError, match="does not hold normalization stats"):
        load_sae(bad_stats)


def test_a_corrupt_or_foreign_resume_state_is_refused(tiny_stage1_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "nfm"
    argv = [*TINY, "--sae1_model_path", str(tiny_stage1_dir), "--checkpoint_dir", str(out)]
    part2d.main([*argv, "--stop_at_step", "20"])
    good = (out / RESUME_FILE).read_bytes()
    (out / RESUME_FILE).write_bytes(good[:1000])
    assert "resume.pt is truncated or corrupt" in refused(part2d.main, [*argv, "--resume"], capsys)
    # A resume state of another model shape (as after copying a resume.pt between runs).
    state = torch.load(_write(out / RESUME_FILE, good), weights_only=True)
    state["model"] = NFM(500, 64, 6).state_dict()
    torch.save(state, out / RESUME_FILE)
    assert "written by a run of another configuration" in refused(part2d.main, [*argv, "--resume"], capsys)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---- outputs kept apart from inputs; one writer at a time ------------------------------------------------------------


def test_an_output_directory_that_is_inside_or_contains_an_input_is_refused(tiny_stage1_dir: Path, tmp_path: Path,
                                                                            capsys):
    stage1 = shutil.copytree(tiny_stage1_dir, tmp_path / "runs" / "sae1")
    before = snapshot(stage1)
    for out, relation in ((stage1, "is the input"), (stage1 / "nfm", "is inside the input"),
                          (tmp_path / "runs", "contains the input")):
        line = refused(part2d.main, [*TINY, "--sae1_model_path", str(stage1), "--checkpoint_dir", str(out),
                                     "--overwrite"], capsys)
        assert relation in line and "--sae1_model_path" in line
    text = tmp_path / "texts" / "t.txt"
    text.parent.mkdir()
    text.write_text("x")
    assert "contains the input --text_files" in refused(
        part1c.main, [*TINY, "--text_files", str(text), "--checkpoint_dir", str(tmp_path), "--overwrite"], capsys)
    assert snapshot(stage1) == before and text.read_text() == "x"


def test_a_second_writer_is_refused_and_a_stale_lock_is_taken_over(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename, "since": "now"}))
    with pytest.raises(UserError, match=f"being written by another process \\(pid {os.getppid()}"):
        OutputDir(out, resume=True)
    dead = _dead_pid()
    (out / LOCK_FILE).write_text(json.dumps({"pid": dead, "host": os.uname().nodename, "since": "then"}))
    with OutputDir(out, resume=True).writing():
        assert load_json(out / LOCK_FILE)["pid"] == os.getpid()  # taken over
    assert not (out / LOCK_FILE).exists()  # and released


def _dead_pid() -> int:
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    return child


# ---- the activation cache is keyed by what the activations are ------------------------------------------------------


def test_cached_activations_equal_uncached_and_another_text_of_the_same_name_misses(tiny_lm, tmp_path: Path):
    rows = (shared_wikitext_dir() / "wiki.valid.raw").read_text(encoding="utf-8").splitlines(keepends=True)
    first, second = tmp_path / "a" / "t.txt", tmp_path / "b" / "t.txt"
    for path, chunk in ((first, rows[:400]), (second, rows[400:800])):
        path.parent.mkdir()
        path.write_text("".join(chunk), encoding="utf-8")

    def stream(text: Path, cache: Path | None):
        cfg = type("Cfg", (), dict(text_files=[str(text)], preset="tiny", window=128, harvest_batch_size=16,
                                   exclude_first_position=False, layer=2, cache_dir=cache))
        return open_stream(cfg, tiny_lm)

    cache = tmp_path / "cache"
    uncached = stream(first, None).train_rows(0, 20)
    cached_once, cached_again = stream(first, cache).train_rows(0, 20), stream(first, cache).train_rows(0, 20)
    assert torch.equal(uncached, cached_once) and torch.equal(uncached, cached_again)
    other = stream(second, cache)
    assert not torch.equal(other.train_rows(0, 20), uncached)  # same file name, other text: not the first's rows
    assert len(list(cache.iterdir())) == 2 and other.describe()["text_identity"].startswith("sha256:")
    # A shard written under another key is refused, never read as this text's activations.
    shard = next((cache / f"acts-{other.key()[:16]}").glob("shard_*.safetensors"))
    mine = next((cache / f"acts-{stream(first, cache).key()[:16]}").glob("shard_*.safetensors"))
    shutil.copy(shard, mine)
    with pytest.raises(UserError, match="written for other settings or another text"):
        stream(first, cache).train_rows(0, 20)


# ---- resumed by content, not by path ------------------------------------------------------------------------------


def test_a_moved_run_resumes_and_another_sae_or_text_is_refused(tiny_stage1_dir: Path, tiny_nfm_dir: Path,
                                                                tmp_path: Path, capsys):
    started = tmp_path / "started"
    part2d.main([*TINY, "--sae1_model_path", str(tiny_stage1_dir), "--checkpoint_dir", str(started),
                 "--stop_at_step", "60"])
    moved_sae = shutil.copytree(tiny_stage1_dir, tmp_path / "elsewhere" / "sae1")
    moved = shutil.move(started, tmp_path / "moved")
    part2d.main([*TINY, "--sae1_model_path", str(moved_sae), "--checkpoint_dir", str(moved), "--resume"])
    assert all(torch.equal(load_weights(moved)[name], t) for name, t in load_weights(tiny_nfm_dir).items())

    other_sae = shutil.copytree(tiny_stage1_dir, tmp_path / "other_sae")
    sae = TopKSAE.load(other_sae)
    with torch.no_grad():
        sae.b_enc.add_(1e-3)
    sae.save(other_sae)
    line = refused(part2d.main, [*TINY, "--sae1_model_path", str(other_sae), "--checkpoint_dir", str(moved),
                                 "--resume"], capsys)
    assert "the input sae1" in line
    text = tmp_path / "wiki.valid.raw"  # the preset's file name, other content
    text.write_text((shared_wikitext_dir() / "wiki.test.raw").read_text(encoding="utf-8"), encoding="utf-8")
    line = refused(part2d.main, [*TINY, "--sae1_model_path", str(moved_sae), "--checkpoint_dir", str(moved),
                                 "--resume", "--text_files", str(text)], capsys)
    assert "the text" in line


# ---- defects that used to pass the suite ----------------------------------------------------------------------------


def test_norm_stats_follow_the_z_score_formula():
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(300, 6, generator=generator) * torch.tensor([1, 2, 3, 4, 5, 0]) + torch.arange(6.0) * 10
    stats = NormStats.compute(rows, num_rows=10_000)  # more than the rows: the subset is every row
    array = rows.double().numpy()
    mean, std = array.mean(0), np.maximum(array.std(0, ddof=1), 1e-8)  # the constant column is clamped
    np.testing.assert_allclose(stats.mean.numpy(), mean, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(stats.std.numpy(), std, rtol=1e-5)
    x = torch.randn(4, 6, generator=generator)
    np.testing.assert_allclose(stats.normalize(x).numpy(), (x.double().numpy() - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.denormalize(x).numpy(), x.double().numpy() * std + mean, rtol=1e-5, atol=1e-4)


class _ScriptedRun:
    """A small NFM (it has dropout) trained on fixed random data, with a validation loss scripted as a function of the
    step: it falls until ``best_step`` and rises after, so the best model is not the last one."""

    def __init__(self, out: Path, best_step: int = 20, steps: int = 50, stop_at: int | None = None) -> None:
        torch.manual_seed(0)
        self.model = NFM(40, 8, 4, dropout=0.3)
        generator = torch.Generator().manual_seed(1)
        acts = torch.rand(256, 5, generator=generator)
        indices = torch.stack([torch.randperm(40, generator=generator)[:5] for _ in range(256)])
        target = torch.randn(256, 8, generator=generator)
        self.best_step, self.snapshots = best_step, {}
        cfg = TrainConfig(train_steps=steps, stop_at_step=stop_at, val_every=10, checkpoint_every=10, log_every=5,
                          lr=1e-3)  # small enough to keep the ReLUs alive, so dropout matters to the end
        from common.data.batches import RowBatches

        batches = RowBatches((acts, indices, target), 32, seed=3, device=CPU)
        self.trainer = Trainer(self.model, cfg, out, CPU, "fp32", self.loss, batches, self.validate, seed=5)

    def loss(self, model: NFM, batch: tuple) -> tuple:
        acts, indices, target = batch
        return F.mse_loss(model(acts, indices).total, target), {}

    def validate(self, model: NFM) -> dict[str, float]:
        step = self.trainer.step
        self.snapshots[step] = {name: t.detach().clone() for name, t in model.state_dict().items()}
        return {"loss": 1.0 + abs(step - self.best_step)}


def test_the_saved_best_weights_are_the_in_memory_model_at_its_best_step(tmp_path: Path):
    run = _ScriptedRun(tmp_path)
    run.trainer.fit()
    saved, best = load_weights(tmp_path), run.snapshots[run.best_step]
    assert saved.keys() == best.keys() and all(torch.equal(saved[name], best[name]) for name in best)
    assert not torch.equal(saved["linear_weight"], run.model.state_dict()["linear_weight"])  # the last is not the best


def test_a_resume_after_the_best_step_restores_the_best_and_the_dropout_stream(tmp_path: Path):
    full = _ScriptedRun(tmp_path / "full")
    full.trainer.fit()
    _ScriptedRun(tmp_path / "split", stop_at=30).trainer.fit()  # stops after its best (step 20)
    resumed = _ScriptedRun(tmp_path / "split")
    resumed.trainer.fit(resume=True)
    for name, tensor in full.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), f"final {name}"  # dropout draws restored
    saved_full, saved_split = load_weights(tmp_path / "full"), load_weights(tmp_path / "split")
    assert all(torch.equal(saved_full[name], saved_split[name]) for name in saved_full)  # best_val restored
    assert load_resume_state(tmp_path / "split")["best_val"] == 1.0


def test_stage1_reaches_a_minimum_quality_on_tiny(tiny_stage1_dir: Path):
    """Measured 0.726 variance explained (seed 0); trained on un-normalized activations it falls far below."""
    metrics = load_json(tiny_stage1_dir / "metrics.json")
    assert metrics["variance_explained"] > 0.65 and metrics["dead_fraction"] < 0.05


def test_stage_metrics_come_from_the_best_model_not_the_last(tiny_stage1_dir: Path, tmp_path: Path):
    """A small text and many epochs over-fit: the validation loss rises after its best, and the figures are the
    best model's."""
    metrics = part2d.main([*TINY, "--sae1_model_path", str(tiny_stage1_dir), "--checkpoint_dir", str(tmp_path / "n"),
                           "--lr", "0.01", "--num_tokens", "2048", "--chunk_tokens", "2048", "--epochs_per_chunk", "15",
                           "--val_every", "25"])
    validations = metrics["history"]["val"]
    best = min(validations, key=lambda entry: entry["loss"])
    assert best is not validations[-1]
    assert metrics["error_reduction_val"] == pytest.approx(best["error_reduction"], rel=1e-9)


def test_a_patch_that_replaces_the_residual_changes_the_logits_as_the_later_blocks_compute_them(tiny_lm):
    input_ids = torch.tensor([tiny_lm.tokenizer("The lobster grows to sixty centimetres in the sea")["input_ids"]])
    model, layer = tiny_lm.model, 2
    residual = capture_layer(model, input_ids, layer)
    shifted = residual + torch.linspace(-1, 1, residual.shape[-1])
    with torch.no_grad():
        clean = model(input_ids).logits
        with patch_layer(model, layer, lambda hidden: hidden + torch.linspace(-1, 1, hidden.shape[-1])):
            patched = model(input_ids).logits
    assert (patched - clean).abs().max() > 1e-3
    torch.testing.assert_close(patched, run_from_layer(model, shifted, layer), rtol=1e-5, atol=1e-5)


# ---- guards with no test before ------------------------------------------------------------------------------------


def test_nan_activations_stop_the_stage_in_one_line_before_any_checkpoint(tiny_lm, tmp_path: Path, capsys):
    folder = tmp_path / "nan-model"
    tiny_lm.model.save_pretrained(folder)
    tiny_lm.tokenizer.save_pretrained(folder)
    weights = load_weights_file(folder)
    weights["model.layers.0.mlp.down_proj.weight"][0, 0] = float("nan")
    from safetensors.torch import save_file

    save_file(weights, str(folder / "model.safetensors"))
    out = tmp_path / "sae1"
    line = refused(part1c.main, [*TINY, "--model", str(folder), "--checkpoint_dir", str(out)], capsys)
    assert line.startswith("error: stage sae1: non-finite activations at layer 2") and not out.exists()


def load_weights_file(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_a_diverging_run_stops_in_one_line(tmp_path: Path, capsys):
    out = tmp_path / "sae1"
    line = refused(part1c.main, [*TINY, "--checkpoint_dir", str(out), "--lr", "1e12", "--log_every", "2"], capsys)
    assert "training diverged at step 2" in line and not (out / WEIGHTS_FILE).exists()


def test_exclude_first_position_runs_end_to_end(tmp_path: Path):
    flag = ["--exclude_first_position"]
    sae1, nfm, kl = tmp_path / "sae1", tmp_path / "nfm", tmp_path / "kl"
    part1c.main([*TINY, *flag, "--checkpoint_dir", str(sae1), "--train_steps", "20"])
    config = load_json(sae1 / CONFIG_FILE)
    assert config["data"]["train_rows"] % 127 == 0 and config["data"]["val_rows"] % 127 == 0  # BOS + 127 → 127 rows
    part2d.main([*TINY, *flag, "--sae1_model_path", str(sae1), "--checkpoint_dir", str(nfm), "--num_tokens", "2048",
                 "--chunk_tokens", "1024", "--epochs_per_chunk", "1"])
    results = part14.main([*TINY, *flag, "--sae1_model_path", str(sae1), "--nfm_model_path", str(nfm),
                           "--output_dir", str(kl), "--num_wiki_samples", "4"])
    with np.load(kl / "per_position.npz") as data:
        assert data["position"].min() == 1 and data["position"].max() == 126
        assert (data["sae.error_norm"] > 0).all()  # position 0 is neither patched nor measured
    assert results["positions"] == 4 * 126 and results["evaluation"]["first_position"] == 1
    assert upgrade_config(load_json(kl / CONFIG_FILE))["config"]["exclude_first_position"] is True
