"""The study's plan (METHOD §11): what each question runs, one run per variant when questions share one, the stages
read from the main run, and the regime rule written before the runs."""
import pytest

from common.reporting.study_plan import (
    FLUSH_FLAG,
    FP16,
    MAIN,
    REGIME_STAGES,
    SEED_STAGES,
    Run,
    main_stages,
    merge_runs,
    regime_runs,
    regime_variant,
)
from common.reporting.study_questions import QUESTIONS, question_runs
from common.reporting.study_regime import _follows


def test_the_regime_runs_three_regimes_at_every_seed():
    runs = {run.variant: run for run in regime_runs("tiny", (1, 2))}
    assert set(runs) == {MAIN, "seed1", "seed2", "fp16", "fp16_seed1", "fp16_seed2", "flush", "flush_seed1",
                         "flush_seed2"}
    assert runs["fp16_seed2"] == Run("fp16_seed2", REGIME_STAGES, seed=2, precision=FP16)
    assert runs["flush"].precision is None and runs["flush"].seed is None
    assert runs["flush_seed1"].flags == {stage: (FLUSH_FLAG,) for stage in ("sae1", "nfm", "joint")}
    assert [regime_variant(r, 0) for r in ("fp32", "fp16", "flush")] == [MAIN, "fp16", "flush"]


def test_questions_sharing_a_variant_run_its_stages_once_main_first():
    runs = merge_runs([run for name in QUESTIONS for run in question_runs(name, "tiny", (1,))])
    variants = [run.variant for run in runs]
    assert variants[0] == MAIN and len(variants) == len(set(variants))
    seed1 = next(run for run in runs if run.variant == "seed1")
    assert seed1.stages == SEED_STAGES and seed1.seed == 1  # the regime's stages are a part of the seeds question's
    assert main_stages(runs) == ("sae1", "nfm", "sae2", "joint", "kl14", "kl14_original", "ortho", "bimodal", "kl18",
                                 "kl18_original")
    pathology = merge_runs(question_runs("pathology", "tiny"))
    assert main_stages(pathology) == ("sae1", "nfm", "kl14", "kl14_original")
    with pytest.raises(ValueError, match="seed1"):
        merge_runs([Run("seed1", ("sae1",), seed=1), Run("seed1", ("sae1",), seed=2)])


def _summary(fp32: tuple[int, int], fp16: tuple[int, int], flush: tuple[int, int]) -> dict:
    return {"rows": [{"joint": counts} for counts in (fp32, fp16, flush)]}


def test_the_regime_rule():
    assert _follows(_summary((0, 3), (3, 3), (3, 3))).startswith("follows the optimizer")
    assert _follows(_summary((0, 3), (3, 3), (0, 3))).startswith("follows the regime")
    assert _follows(_summary((0, 3), (3, 3), (1, 3))).startswith("follows neither")
    assert _follows(_summary((1, 3), (3, 3), (3, 3))).startswith("follows neither")  # fp32 bimodal too
    assert _follows(_summary((0, 3), (2, 3), (0, 3))).startswith("follows neither")  # fp16 not on every seed
    assert _follows(_summary((0, 3), (0, 0), (0, 3))).startswith("cannot be told")
