"""common/kl/evaluator.py, kl_conditions.py and kl_report.py: the KL/CE math, the shared prefix against whole forwards,
the ε-random norms, the original's evaluation inputs, and the figures of results.json against a hand computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import common.kl.evaluator as evaluator_module
from common.data.activations import NormStats
from common.kl.conditions import JOINT_CONDITIONS, SEQUENTIAL_CONDITIONS, joint_conditions, sequential_conditions
from common.kl.evaluator import (
    EPS_RANDOM,
    PatchingEvaluator,
    epsilon_perturb,
    measured_positions,
    next_token_metrics,
    random_unit_vectors,
)
from common.kl.summary import merge_parts, summarize
from common.lm.hooks import capture_layer, patch_layer
from common.lm.model import LoadedLM
from common.models.codes import scatter_codes, select_top_n
from common.models.joint import JointSAENFM
from common.models.nfm import NFM, nfm_reference
from common.models.sae import TopKSAE, sae_reference
from common.models.settings import original_settings, trained_settings
from common.store.savers import atomic_save_npz

LAYER = 2


def random_ids(lm: LoadedLM, batch: int = 3, length: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, lm.model.config.vocab_size, (batch, length), generator=generator)


def scaled(raw: torch.Tensor) -> dict[str, torch.Tensor]:
    """Two toy conditions: the identity and a rescale of every residual."""
    return {"same": raw.clone(), "scaled": 3.0 * raw}


def test_kl_of_identical_logits_is_zero() -> None:
    logits = torch.randn(2, 5, 50, generator=torch.Generator().manual_seed(0)) * 4
    logprobs = torch.log_softmax(logits, -1)
    targets = torch.randint(0, 50, (2, 5))
    out = next_token_metrics(logprobs, logits, targets, logprobs.argmax(-1))
    assert torch.equal(out["kl"], torch.zeros(2, 5))
    assert torch.equal(out["ce_next"], -logprobs.gather(-1, targets[..., None])[..., 0])
    assert torch.equal(out["ce_argmax"], -logprobs.amax(-1))


@pytest.mark.parametrize("rows_per_chunk", [1, 4, 1024])  # the CPU's chunks of vocabulary-wide work, a GPU's one
def test_kl_and_ce_match_scipy(rows_per_chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(evaluator_module.ROWS_PER_CHUNK, "cpu", rows_per_chunk)
    generator = torch.Generator().manual_seed(1)
    clean, patched = torch.randn(3, 5, 40, generator=generator), torch.randn(3, 5, 40, generator=generator) * 2
    targets = torch.randint(0, 40, (3, 5), generator=generator)
    argmax = clean.argmax(-1)
    out = next_token_metrics(torch.log_softmax(clean, -1), patched, targets, argmax)
    p, q = (torch.softmax(x.double(), -1).numpy() for x in (clean, patched))
    np.testing.assert_allclose(out["kl"].numpy(), stats.entropy(p, q, axis=-1), rtol=1e-5)
    picked = lambda idx: np.take_along_axis(q, idx.numpy()[..., None], -1)[..., 0]  # noqa: E731
    np.testing.assert_allclose(out["ce_next"].numpy(), -np.log(picked(targets)), rtol=1e-5)
    np.testing.assert_allclose(out["ce_argmax"].numpy(), -np.log(picked(argmax)), rtol=1e-5)


def test_identity_patch_gives_zero_kl_and_unchanged_ce(tiny_lm: LoadedLM) -> None:
    evaluator = PatchingEvaluator(tiny_lm.model, LAYER, scaled, reference="same", num_epsilon_samples=2)
    out = evaluator.evaluate(random_ids(tiny_lm), [0, 1, 2])
    assert np.array_equal(out["same.kl"], np.zeros_like(out["same.kl"]))
    assert np.array_equal(out["same.ce_next"], out["clean.ce_next"])
    assert np.array_equal(out["same.ce_argmax"], out["clean.ce_argmax"])
    assert np.array_equal(out["same.error_norm"], np.zeros_like(out["same.error_norm"]))
    # a zero error norm makes every ε-random draw of the identity's baseline the identity too
    assert np.array_equal(out[f"{EPS_RANDOM}.kl"], np.zeros((3 * 15, 2), dtype=np.float32))
    assert out["scaled.kl"].min() > 0 and out["eps_own.scaled.kl"].min() > 0
    assert list(out["window"][:16]) == [0] * 15 + [1] and list(out["position"][:16]) == list(range(15)) + [0]


def test_shared_prefix_equals_full_forward_with_a_patch_hook(tiny_lm: LoadedLM) -> None:
    ids = random_ids(tiny_lm, seed=3)
    shared = PatchingEvaluator(tiny_lm.model, LAYER, scaled, "same", 2, seed=5).evaluate(ids, [4, 5, 6])
    whole = PatchingEvaluator(tiny_lm.model, LAYER, scaled, "same", 2, seed=5,
                              shared_prefix=False).evaluate(ids, [4, 5, 6])
    assert shared.keys() == whole.keys()
    for name in shared:
        np.testing.assert_allclose(shared[name], whole[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # and against metrics written out by hand from two plain forwards, one with a hook rescaling the residual
    with torch.no_grad():
        clean = tiny_lm.model(input_ids=ids).logits.double()
        with patch_layer(tiny_lm.model, LAYER, lambda hidden: 3.0 * hidden):
            patched = tiny_lm.model(input_ids=ids).logits.double()
    log_p, log_q = torch.log_softmax(clean[:, :-1], -1), torch.log_softmax(patched[:, :-1], -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    ce_next = -log_q.gather(-1, ids[:, 1:, None])[..., 0]
    # fp32 log-softmax against fp64 from the same logits: rounding of ~1e-7 per log-probability
    np.testing.assert_allclose(shared["scaled.kl"], kl.reshape(-1).numpy(), rtol=1e-3, atol=2e-6)
    np.testing.assert_allclose(shared["scaled.ce_next"], ce_next.reshape(-1).numpy(), rtol=1e-5)


def test_epsilon_perturbations_have_exactly_the_intended_norm(tiny_lm: LoadedLM) -> None:
    generator = torch.Generator().manual_seed(0)
    raw64 = torch.randn(4, 6, 64, generator=generator, dtype=torch.float64) * 30
    norm64 = torch.rand(4, 6, generator=generator, dtype=torch.float64) * 5
    unit = random_unit_vectors(raw64.shape, generator).double()
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(4, 6, dtype=torch.float64), rtol=1e-6, atol=0)
    torch.testing.assert_close((epsilon_perturb(raw64, norm64, unit) - raw64).norm(dim=-1), norm64 * unit.norm(dim=-1),
                               rtol=1e-12, atol=0)

    evaluator = PatchingEvaluator(tiny_lm.model, LAYER, scaled, "scaled", num_epsilon_samples=3, seed=1)
    raw = capture_layer(tiny_lm.model, random_ids(tiny_lm), LAYER).float()
    patched, norms = evaluator.reconstructions(raw)
    torch.testing.assert_close(norms["scaled"], 2.0 * raw.norm(dim=-1), rtol=1e-5, atol=0)
    draws = list(evaluator.patches(raw, norms, window_indices=[0, 1, 2]))
    assert [series for series, _ in draws] == ["eps_own.same", EPS_RANDOM] * 3
    directions = []
    for series, perturbed in draws:
        error = (perturbed.double() - raw.double()).norm(dim=-1)
        if series == EPS_RANDOM:
            torch.testing.assert_close(error, norms["scaled"].double(), rtol=1e-5, atol=1e-6)
            directions.append((perturbed - raw) / norms["scaled"].unsqueeze(-1))
        else:
            assert torch.equal(perturbed, raw)  # the identity's own norm is 0
    # a fresh direction per token and per draw; a window's draws depend on its index alone (batch size, resume)
    flat = directions[0].reshape(-1, 64)
    assert (flat @ flat.T - torch.eye(flat.shape[0])).abs().max() < 0.9
    assert not torch.allclose(directions[0], directions[1])
    again = [p for s, p in evaluator.patches(raw[1:], {k: v[1:] for k, v in norms.items()}, [1, 2]) if s == EPS_RANDOM]
    other = [p for s, p in evaluator.patches(raw, norms, [5, 6, 7]) if s == EPS_RANDOM]
    assert torch.equal(again[0], draws[1][1][1:]) and not torch.equal(other[0], draws[1][1])


def test_fewer_own_norm_draws_take_the_first_draws_of_the_same_directions(tiny_lm: LoadedLM) -> None:
    three = PatchingEvaluator(tiny_lm.model, LAYER, scaled, "same", num_epsilon_samples=3, seed=4)
    one = PatchingEvaluator(tiny_lm.model, LAYER, scaled, "same", num_epsilon_samples=3, seed=4, own_norm_draws=1)
    raw = capture_layer(tiny_lm.model, random_ids(tiny_lm), LAYER).float()
    _, norms = three.reconstructions(raw)
    every, fewer = list(three.patches(raw, norms, [0, 1, 2])), list(one.patches(raw, norms, [0, 1, 2]))
    assert [series for series, _ in fewer] == [EPS_RANDOM, "eps_own.scaled", EPS_RANDOM, EPS_RANDOM]
    main = [patch for series, patch in every if series == EPS_RANDOM]
    assert all(torch.equal(a, b) for a, b in zip(main, [patch for series, patch in fewer if series == EPS_RANDOM]))
    assert torch.equal(every[1][1], fewer[1][1])  # the own-norm baseline's one draw is the first of three
    out = one.evaluate(random_ids(tiny_lm), [0, 1, 2])
    assert out[f"{EPS_RANDOM}.kl"].shape == (45, 3) and out["eps_own.scaled.kl"].shape == (45, 1)


def test_first_position_is_left_unpatched_and_uncounted(tiny_lm: LoadedLM) -> None:
    evaluator = PatchingEvaluator(tiny_lm.model, LAYER, scaled, "scaled", 1, first_position=1)
    ids = random_ids(tiny_lm)
    raw = capture_layer(tiny_lm.model, ids, LAYER).float()
    patched, norms = evaluator.reconstructions(raw)
    assert torch.equal(patched["scaled"][:, 0], raw[:, 0]) and torch.equal(norms["scaled"][:, 0], torch.zeros(3))
    out = evaluator.evaluate(ids, [0, 1, 2])
    assert out["scaled.kl"].shape == (3 * 14,) and out["position"].min() == 1 and out["position"].max() == 14
    assert out[f"{EPS_RANDOM}.kl"].shape == (3 * 14, 1)


# ---- what each condition feeds the models ------------------------------------------------------


@pytest.fixture(scope="module")
def sequential_models() -> tuple[TopKSAE, NFM, NormStats]:
    torch.manual_seed(0)
    sae, nfm = TopKSAE(64, 1000, 20), NFM(1000, 64, 6).eval()
    with torch.no_grad():  # an NFM whose outputs are not negligible next to the SAE's
        nfm.linear_weight.normal_(0, 0.2)
        nfm.embeddings.normal_(0, 0.5)
        for layer in (nfm.mlp[1], nfm.mlp[3]):
            layer.weight.normal_(0, 0.5)
    norm = NormStats(torch.randn(64) * 0.3, torch.rand(64) + 0.5)
    return sae, nfm, norm


def spy(monkeypatch: pytest.MonkeyPatch, module: torch.nn.Module, method: str) -> list[tuple]:
    """Record every call's arguments of ``module.method`` while still running it."""
    calls: list[tuple] = []
    original = getattr(module, method)

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, method, recording)
    return calls


def test_trained_settings_normalize_and_use_the_recorded_k_and_top_n(sequential_models, monkeypatch) -> None:
    sae, nfm, norm = sequential_models
    raw = torch.randn(10, 64) * 2
    encodes, nfm_calls = spy(monkeypatch, sae, "encode"), spy(monkeypatch, nfm, "forward")
    out = sequential_conditions(sae, nfm, norm, trained_settings(k=8, top_n=5), "sparse")(raw)
    assert list(out) == list(SEQUENTIAL_CONDITIONS)
    (args, _), = encodes
    torch.testing.assert_close(args[0], norm.normalize(raw))
    assert args[1] == 8
    (args, _), = nfm_calls
    assert args[0].shape == (10, 5) and args[3] == "bi"

    x = norm.normalize(raw)
    torch.testing.assert_close(out["sae"], norm.denormalize(sae_reference(sae, x, 8)), rtol=1e-5, atol=1e-5)
    acts, idx = select_top_n(*sae.encode(x, 8), 5)
    reference = nfm_reference(nfm, scatter_codes(acts, idx, 1000))
    sae_recon = sae_reference(sae, x, 8)
    torch.testing.assert_close(out["sae_nfm"], norm.denormalize(sae_recon + reference.total), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["sae_linear"], norm.denormalize(sae_recon + reference.linear), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["sae_interaction"], norm.denormalize(sae_recon + reference.interaction),
                               rtol=1e-5, atol=1e-5)


def test_original_eval_feeds_raw_activations_all_codes_and_the_plain_sum(sequential_models, monkeypatch) -> None:
    sae, nfm, norm = sequential_models
    raw = torch.randn(10, 64) * 2
    encodes, nfm_calls = spy(monkeypatch, sae, "encode"), spy(monkeypatch, nfm, "forward")
    settings = original_settings(sae.k, pooling="sum")
    assert settings.layer_offset == 1 and settings.top_n is None and not settings.normalize
    out = sequential_conditions(sae, nfm, norm, settings, "sparse")(raw)
    (args, _), = encodes
    assert torch.equal(args[0], raw) and args[1] == sae.k == 20
    (args, _), = nfm_calls
    assert args[0].shape == (10, 20) and args[3] == "sum"
    # no de-normalization either: the SAE's output is the patch as it stands
    torch.testing.assert_close(out["sae"], sae_reference(sae, raw, 20), rtol=1e-5, atol=1e-5)
    reference = nfm_reference(nfm, scatter_codes(*sae.encode(raw, 20), 1000), pooling="sum")
    torch.testing.assert_close(out["sae_nfm"], sae_reference(sae, raw, 20) + reference.total, rtol=1e-5, atol=1e-5)


def test_joint_conditions_trained_and_original(monkeypatch) -> None:
    torch.manual_seed(0)
    joint = JointSAENFM(64, 1000, 20, 6, top_n=10).eval()
    norm = NormStats(torch.randn(64) * 0.3, torch.rand(64) + 0.5)
    raw = torch.randn(10, 64)
    calls = spy(monkeypatch, joint, "forward")
    trained = joint_conditions(joint, norm, trained_settings(20, 10), "sparse")(raw)
    joint_conditions(joint, norm, original_settings(20, pooling="bi"), "sparse")(raw)
    assert list(trained) == list(JOINT_CONDITIONS)
    (args_trained, _), (args_original, _) = calls
    torch.testing.assert_close(args_trained[0], norm.normalize(raw))
    assert args_trained[2:] == (20, 10, "bi")
    assert torch.equal(args_original[0], raw) and args_original[2:] == (20, 20, "bi")
    whole = joint(norm.normalize(raw))
    torch.testing.assert_close(trained["joint_full"], norm.denormalize(whole.recon), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(trained["joint_sae"], norm.denormalize(whole.sae_recon), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(trained["joint_linear"], norm.denormalize(whole.sae_recon + whole.linear),
                               rtol=1e-5, atol=1e-5)


# ---- results.json figures on a small fixed example ---------------------------------------------


def fixed_store(tmp_path) -> tuple:
    """Four positions, two conditions, two ε draws: numbers small enough to check by hand."""
    columns = {
        "window": np.array([0, 0, 1, 1], dtype=np.int32),
        "position": np.array([0, 1, 0, 1], dtype=np.int16),
        "clean.ce_next": np.array([1.0, 1.0, 1.0, 1.0]),
        "clean.ce_argmax": np.array([0.5, 0.5, 0.5, 0.5]),
        "sae.kl": np.array([1.0, 2.0, 3.0, 4.0]),
        "sae_nfm.kl": np.array([0.5, 1.0, 2.0, 3.5]),
        "eps_random.kl": np.array([[0.5, 1.5], [1.0, 1.0], [0.5, 0.5], [1.0, 1.0]]),
        "eps_own.sae_nfm.kl": np.array([[0.25, 0.25], [0.5, 0.5], [1.0, 0.5], [0.5, 0.0]]),
    }
    for metric, shift in (("ce_next", 2.0), ("ce_argmax", 1.0)):
        for name in ("sae", "sae_nfm"):
            columns[f"{name}.{metric}"] = columns[f"{name}.kl"] + shift
        columns[f"eps_random.{metric}"] = columns["eps_random.kl"] + shift
        columns[f"eps_own.sae_nfm.{metric}"] = columns["eps_own.sae_nfm.kl"] + shift
    for name in ("sae", "sae_nfm"):
        columns[f"{name}.error_norm"] = np.ones(4)
    half = [{k: v[:2] for k, v in columns.items()}, {k: v[2:] for k, v in columns.items()}]
    parts = [tmp_path / "a.npz", tmp_path / "b.npz"]
    for part, values in zip(parts, half):
        atomic_save_npz(values.items(), part)
    store = tmp_path / "merged.npz"
    merge_parts(parts, store)
    return store, columns


def test_merge_parts_concatenates_every_column(tmp_path) -> None:
    store, columns = fixed_store(tmp_path)
    with np.load(store) as merged:
        assert sorted(merged.files) == sorted(columns)
        for name, values in columns.items():
            assert np.array_equal(merged[name], values) and merged[name].dtype == values.dtype


def test_ratios_reductions_and_tests_match_a_hand_computation(tmp_path) -> None:
    store, columns = fixed_store(tmp_path)
    results = summarize(store, {"sae": "SAE", "sae_nfm": "SAE + NFM"}, reference="sae", num_draws=2)
    sae, nfm = results["conditions"]["sae"], results["conditions"]["sae_nfm"]
    # means: SAE 2.5, SAE+NFM 1.75, ε-random 7/8, ε at SAE+NFM's own norm 3.5/8
    assert sae["kl"]["mean"] == 2.5 and sae["kl"]["median"] == 2.5 and nfm["kl"]["median"] == 1.5
    assert sae["kl_ratio_eps_random"] == pytest.approx(20 / 7, rel=1e-12)
    assert sae["kl_ratio_eps_own_norm"] == pytest.approx(20 / 7, rel=1e-12)
    assert nfm["kl_ratio_eps_random"] == pytest.approx(2.0, rel=1e-12)
    assert nfm["kl_ratio_eps_own_norm"] == pytest.approx(4.0, rel=1e-12)
    assert nfm["kl_reduction"] == pytest.approx(0.3, rel=1e-12) and "kl_reduction" not in sae
    # CE shifted by 2: 4.5 vs 3.75 -> 1 - 3.75/4.5; excess over clean (1.0): 3.5 vs 2.75
    assert nfm["ce_next_reduction"] == pytest.approx(1 - 3.75 / 4.5, rel=1e-12)
    assert nfm["ce_next_excess_reduction"] == pytest.approx(1 - 2.75 / 3.5, rel=1e-12)
    assert nfm["ce_argmax_ratio_eps_random"] == pytest.approx(2.75 / 1.875, rel=1e-12)
    assert results["positions"] == 4 and results["windows"] == 2
    assert results["measurements"] == 4 * (2 + 2) and results["measurements_with_own_norm_baselines"] == 4 * (2 + 4)
    assert results[EPS_RANDOM]["kl"]["mean"] == 0.875

    eps = columns["eps_random.kl"]
    test = sae["tests"]["kl_vs_eps_random"]
    assert test["paired"]["t"] == pytest.approx(stats.ttest_rel(columns["sae.kl"], eps.mean(1)).statistic, rel=1e-12)
    assert test["paired"]["p"] == pytest.approx(stats.ttest_rel(columns["sae.kl"], eps.mean(1)).pvalue, rel=1e-12)
    assert test["independent"]["t"] == pytest.approx(stats.ttest_ind(columns["sae.kl"], eps.ravel()).statistic,
                                                     rel=1e-12)
    versus_sae = nfm["tests"]["kl_reference_minus_condition"]
    assert versus_sae["paired"]["t"] == pytest.approx(
        stats.ttest_rel(columns["sae.kl"], columns["sae_nfm.kl"]).statistic, rel=1e-12)
    assert versus_sae["independent"]["t"] == pytest.approx(
        stats.ttest_ind(columns["sae.kl"], columns["sae_nfm.kl"]).statistic, rel=1e-12)
    assert versus_sae["paired"]["t"] > 0


# ---- measured positions, the zero-ablation, ranks ----------------------------------------------


def test_measured_positions_are_seeded_by_the_window_alone() -> None:
    kept = range(1, 127)
    drawn = measured_positions(7, kept, 16, seed=0)
    assert drawn.shape == (16,) and np.all(np.diff(drawn) > 0) and drawn.min() >= 1 and drawn.max() <= 126
    assert np.array_equal(drawn, measured_positions(7, kept, 16, seed=0))
    assert not np.array_equal(drawn, measured_positions(8, kept, 16, seed=0))
    assert not np.array_equal(drawn, measured_positions(7, kept, 16, seed=1))
    assert np.array_equal(measured_positions(7, kept, None, 0), np.arange(1, 127))
    assert np.array_equal(measured_positions(7, kept, 500, 0), np.arange(1, 127))
    # a window's positions do not depend on the batch it is evaluated in
    evaluator = PatchingEvaluator(None, LAYER, scaled, "same", positions_per_window=5, seed=3)
    assert torch.equal(evaluator.positions([4, 9], 16)[1], evaluator.positions([9, 2, 6], 16)[0])


def _rows(out: dict[str, np.ndarray]) -> dict[tuple[int, int], int]:
    return {(int(w), int(p)): i for i, (w, p) in enumerate(zip(out["window"], out["position"]))}


def test_a_positions_subset_equals_the_full_evaluation_at_those_positions(tiny_lm: LoadedLM) -> None:
    ids = random_ids(tiny_lm, seed=4)
    full = PatchingEvaluator(tiny_lm.model, LAYER, scaled, "same", 2, seed=2).evaluate(ids, [3, 4, 5])
    subset = PatchingEvaluator(tiny_lm.model, LAYER, scaled, "same", 2, seed=2,
                               positions_per_window=4).evaluate(ids, [3, 4, 5])
    original_way = PatchingEvaluator(tiny_lm.model, LAYER, scaled, "same", 2, seed=2, shared_prefix=False,
                                     positions_per_window=4).evaluate(ids, [3, 4, 5])
    assert subset.keys() == full.keys() == original_way.keys()
    assert subset["scaled.kl"].shape == (12,) and subset["eps_own.scaled.kl"].shape == (12, 2)
    for i, window in enumerate([3, 4, 5]):
        assert np.array_equal(subset["position"][4 * i : 4 * (i + 1)], measured_positions(window, range(15), 4, 2))
    where = _rows(full)
    rows = [where[key] for key in zip(subset["window"].tolist(), subset["position"].tolist())]
    for name in subset:
        np.testing.assert_allclose(subset[name], full[name][rows], rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(original_way[name], full[name][rows], rtol=1e-5, atol=1e-6, err_msg=name)


def test_zero_ablation_is_the_model_with_a_zero_residual(tiny_lm: LoadedLM) -> None:
    ids = random_ids(tiny_lm, seed=6)
    out = PatchingEvaluator(tiny_lm.model, LAYER, scaled, "same", 1).evaluate(ids, [0, 1, 2])
    first_kept = PatchingEvaluator(tiny_lm.model, LAYER, scaled, "same", 1, first_position=1).evaluate(ids, [0, 1, 2])
    for first, values in ((0, out), (1, first_kept)):
        with torch.no_grad():
            clean = tiny_lm.model(input_ids=ids).logits.double()[:, first:-1]
            with patch_layer(tiny_lm.model, LAYER, lambda hidden, first=first: torch.cat(
                    [hidden[:, :first], torch.zeros_like(hidden[:, first:])], 1)):
                zeroed = tiny_lm.model(input_ids=ids).logits.double()[:, first:-1]
        log_p, log_q = torch.log_softmax(clean, -1), torch.log_softmax(zeroed, -1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1).reshape(-1).numpy()
        ce_next = -log_q.gather(-1, ids[:, first + 1 :, None])[..., 0].reshape(-1).numpy()
        np.testing.assert_allclose(values["zero_ablation.kl"], kl, rtol=1e-4, atol=2e-6)
        np.testing.assert_allclose(values["zero_ablation.ce_next"], ce_next, rtol=1e-5, atol=1e-6)
    assert out["zero_ablation.kl"].min() > 0


def test_two_ranks_write_the_parts_of_one_process_bit_for_bit(tiny_lm: LoadedLM, tmp_path) -> None:
    from common.data.text import WindowedText, resolve_text
    from common.kl.evaluator import evaluate_windows
    from common.runtime.distributed import World

    text = WindowedText(resolve_text(None, "tiny", "eval"), tiny_lm.tokenizer, 16, None)
    indices = text.available(0, 5)
    evaluator = PatchingEvaluator(tiny_lm.model, LAYER, scaled, "same", 2, seed=1, positions_per_window=3)
    one, _ = evaluate_windows(evaluator, text, indices, 2, tmp_path / "one", torch.device("cpu"))
    for rank in (1, 0):
        two, done = evaluate_windows(evaluator, text, indices, 2, tmp_path / "two", torch.device("cpu"),
                                     World(rank=rank, size=2))
        assert done["batches"] == (2 if rank == 0 else 1)
    assert [path.name for path in one] == [path.name for path in two]
    for mine, theirs in zip(one, two):
        assert mine.read_bytes() == theirs.read_bytes(), mine.name
