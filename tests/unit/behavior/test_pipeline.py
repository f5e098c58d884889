"""common/behavior/pipeline.py: the behavioral pipeline is what part14 patches, the clamp changes one feature and
nothing else, and a random direction adds exactly itself (METHOD §10 decisions 3, 4 and 8)."""
from pathlib import Path

import pytest
import torch

from common.behavior.logit_test import mean_residual_change, random_directions, reference_clamp
from common.behavior.pipeline import Clamp
from common.behavior.run import BehaviorRun, last_position_logits, token_ids
from common.config.presets import build_config
from common.kl.conditions import sequential_conditions
from common.lm.hooks import capture_layer, last_positions, patch_layer, run_from_layer
from common.stages.behavior import open_run


@pytest.fixture(scope="module", params=[False, True], ids=["as_trained", "original_eval"])
def run(request, tiny_stage1_dir: Path, tiny_nfm_dir: Path, tiny_sae2_dir: Path, tmp_path_factory) -> BehaviorRun:
    cfg = build_config("clamp", {"preset": "tiny", "sae1_model_path": str(tiny_stage1_dir),
                                 "nfm_model_path": str(tiny_nfm_dir), "interaction_sae_path": str(tiny_sae2_dir),
                                 "output_dir": str(tmp_path_factory.mktemp("out") / "x"),
                                 "original_eval": request.param})
    return open_run(cfg, lm_dtype=torch.float32)


PROMPT = "The lobster grows in the cold sea near the coast"


def residual(run: BehaviorRun) -> torch.Tensor:
    return capture_layer(run.lm.model, token_ids(run, PROMPT), run.layer)


def test_the_pipeline_reconstructs_what_part14_patches(run: BehaviorRun):
    pipe = run.pipeline
    rows = residual(run)[0].float()
    expected = sequential_conditions(pipe.sae, pipe.nfm, pipe.norm, pipe.settings, pipe.decode)(rows)["sae_nfm"]
    assert torch.equal(pipe.run(rows).reconstruction, expected)
    assert run.layer == 2 + pipe.settings.layer_offset
    assert run.patch == ("replace" if run.cfg.original_eval else "delta")


def _clean_and(run: BehaviorRun, clamps: list[Clamp]) -> tuple[torch.Tensor, torch.Tensor]:
    logits = last_position_logits(run, PROMPT, clamps)
    return logits.clean, logits.patched


def test_a_multiplier_of_one_and_no_clamp_leave_the_clean_model_bit_for_bit(run: BehaviorRun):
    if run.patch != "delta":
        pytest.skip("the promise is delta's; replace swaps in the pipeline's reconstruction")
    out = run.pipeline.run(residual(run)[0].float())
    active = int(out.secondary_indices[0, 0])
    clamps = [Clamp("secondary", active, 1.0), Clamp("linear", int(out.nfm_indices[-1, 0]), 1.0), Clamp("none", 0, 0)]
    clean, patched = _clean_and(run, clamps)
    assert all(torch.equal(row, clean) for row in patched)
    ids = token_ids(run, PROMPT)  # through the layer hook too, as generate runs it
    with torch.no_grad():
        plain = run.lm.model(ids).logits
        with patch_layer(run.lm.model, run.layer, lambda h: run.pipeline.patched(h, clamps[0], "delta", 1)):
            hooked = run.lm.model(ids).logits
    assert torch.equal(plain, hooked)


def test_clamping_a_feature_that_never_fires_changes_nothing_and_setting_an_active_one_does(run: BehaviorRun):
    out = run.pipeline.run(residual(run)[0].float())
    silent = sorted(set(range(run.pipeline.secondary.num_features)) - set(out.secondary_indices.flatten().tolist()))[0]
    active = int(out.secondary_indices[-1, 0])
    biggest = float(out.secondary_acts.max())
    clean, patched = _clean_and(run, [Clamp("secondary", silent, 4.0), Clamp("secondary", active, 10 * biggest, "set"),
                                      Clamp("secondary", silent, 1.0)])
    if run.patch == "delta":
        assert torch.equal(patched[0], clean)
    else:  # replace: the silent clamp is the unclamped pipeline, bit for bit
        assert torch.equal(patched[0], patched[2])
    assert (patched[1] - patched[2]).abs().max() > 1e-6  # small on the tiny model, but far above no change at all


def test_the_linear_delta_is_the_change_of_one_term_of_the_linear_layer(run: BehaviorRun):
    pipe = run.pipeline
    rows = residual(run)[0].float()
    out = pipe.run(rows)
    feature, m = int(out.nfm_indices[-1, 0]), -4.0
    change = pipe.patched(rows[None], Clamp("linear", feature, m), "delta")[0] - rows
    f_i = (out.nfm_acts * (out.nfm_indices == feature)).sum(-1, keepdim=True)
    scale = pipe.norm.std if pipe.settings.normalize else torch.ones_like(pipe.norm.std)
    expected = ((m - 1) * f_i) * pipe.nfm.linear_weight[feature] * scale
    torch.testing.assert_close(change, expected, rtol=0, atol=1e-6)  # rows + delta − rows: one rounding of rows


def test_a_secondary_clamp_moves_the_hidden_vector_as_the_secondary_decode_of_the_changed_codes(run: BehaviorRun):
    pipe = run.pipeline
    out = pipe.run(residual(run)[0].float())
    feature, m = int(out.secondary_indices[-1, 0]), 4.0
    scaled = torch.where(out.secondary_indices == feature, m * out.secondary_acts, out.secondary_acts)
    decode = pipe.secondary.decode  # the secondary SAE's own decode of the changed codes, un-z-scored
    shift = pipe.secondary_norm.std * (decode(scaled, out.secondary_indices, "dense")
                                       - decode(out.secondary_acts, out.secondary_indices, "dense"))
    got = pipe.output_change(out, Clamp("secondary", feature, m), "delta")
    expected = pipe.nfm.readout(out.hidden + shift) - out.interaction
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert got[-1].abs().max() > 0


def test_a_random_direction_adds_its_vector_times_its_size_at_every_patched_position(run: BehaviorRun):
    pipe = run.pipeline
    raw = residual(run)
    vector = random_directions(1, raw.shape[-1], seed=0)[0]
    direction = Clamp("direction", 0, 0.5, vector=vector)
    moved = pipe.patched(raw, direction, run.patch, 1)
    reference = pipe.patched(raw, reference_clamp("secondary"), run.patch, 1)
    # (x + s·u) − x: one rounding at the size of x (of σ·recon + μ under --patch replace, of the raw residual under
    # --original_eval), two float32 ulps of the largest |x|.
    ulps = 2 * torch.finfo(torch.float32).eps * float(reference.abs().max())
    torch.testing.assert_close(moved[0, 1:] - reference[0, 1:], (0.5 * vector).expand(raw.shape[1] - 1, -1),
                               rtol=0, atol=ulps)
    assert torch.equal(moved[0, 0], raw[0, 0].float())  # BOS stays
    assert float(vector.norm()) == pytest.approx(1.0, rel=1e-6)


def test_the_mean_residual_change_is_the_mean_norm_over_patched_positions(run: BehaviorRun):
    pipe = run.pipeline
    out = pipe.run(residual(run)[0].float())
    clamp = Clamp("secondary", int(out.secondary_indices[-1, 0]), -4.0)
    reference = reference_clamp("secondary")
    raw = residual(run)
    by_hand = (pipe.patched(raw, clamp, run.patch, run.first_position)
               - pipe.patched(raw, reference, run.patch, run.first_position))[0, run.first_position:].norm(dim=-1)
    assert mean_residual_change(run, [PROMPT], clamp, reference) == pytest.approx(float(by_hand.mean()), rel=1e-6)
    assert float(by_hand.mean()) > 0


def test_the_last_position_alone_is_the_full_passs_last_position(run: BehaviorRun):
    raw = residual(run).expand(3, -1, -1)
    full = run_from_layer(run.lm.model, raw, run.layer, token_ids(run, PROMPT))[:, -1:]
    alone = run_from_layer(run.lm.model, raw, run.layer, token_ids(run, PROMPT), positions=last_positions(raw))
    assert alone.shape == full.shape
    torch.testing.assert_close(alone, full, rtol=1e-5, atol=1e-6)  # the LM head on fewer rows: rounding only


def test_the_noise_floor_is_the_reference_batched_minus_alone(run: BehaviorRun):
    out = run.pipeline.run(residual(run)[0].float())
    reference, other = reference_clamp("secondary"), Clamp("secondary", int(out.secondary_indices[-1, 0]), -4.0)
    logits = last_position_logits(run, PROMPT, [reference, other])
    ids, raw = token_ids(run, PROMPT), residual(run)
    patched = run.pipeline.patched(raw, reference, run.patch, 1)
    alone = run_from_layer(run.lm.model, patched, run.layer, ids, positions=last_positions(patched))[0, -1]
    batch = run.pipeline.patched(raw.expand(2, -1, -1), [reference, other], run.patch, 1)
    batched = run_from_layer(run.lm.model, batch, run.layer, ids, positions=last_positions(batch))[0, -1]
    assert torch.equal(logits.noise, batched.float() - alone.float())
