"""common/config: presets are checked when the module is imported, every flag has help, old flag names still work, a
mode outside its Literal is refused."""
import dataclasses

import pytest

from common.config.parse import parse_config
from common.config.presets import PRESETS, check_presets
from common.config.stages import STAGE_CONFIGS


def test_a_misspelled_preset_key_or_stage_is_refused():
    with pytest.raises(ValueError, match="unknown settings kk"):
        check_presets({"cpu": {"sae1": {"kk": 3}}}, STAGE_CONFIGS)
    with pytest.raises(ValueError, match="unknown stage 'sae3'"):
        check_presets({"cpu": {"sae3": {"k": 3}}}, STAGE_CONFIGS)
    with pytest.raises(ValueError, match="unknown settings no_such_setting"):
        check_presets({"tiny": {"common": {"no_such_setting": 1}}}, STAGE_CONFIGS)
    with pytest.raises(ValueError, match="unknown settings sae_k"):  # a real field, but not of that stage
        check_presets({"tiny": {"sae1": {"sae_k": 5}}}, STAGE_CONFIGS)
    check_presets(PRESETS, STAGE_CONFIGS)  # what the module already did on import


def test_every_flag_has_help_and_the_paper_default():
    for stage, cls in STAGE_CONFIGS.items():
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{stage}: --{f.name} has no help text"


def test_training_flags_show_their_help(capsys):
    with pytest.raises(SystemExit):
        parse_config(STAGE_CONFIGS["sae1"], "stage 1", ["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--lr LR Adam learning rate (paper: 0.0001)" in text
    assert ("--stop_at_step STOP_AT_STEP stop here (the paper's run stopped at about 200k of 500k planned) "
            "(paper: 200000)") in text


def test_renamed_flags_keep_their_old_spelling():
    assert parse_config(STAGE_CONFIGS["nfm"], "", ["--nfm_k", "7"]).nfm_embed_dim == 7
    assert parse_config(STAGE_CONFIGS["joint"], "", ["--compare_sequential", "runs/nfm"]).nfm_model_path == "runs/nfm"
    kl14 = parse_config(STAGE_CONFIGS["kl14"], "", ["--primary_sae_path", "a", "--nfm_path", "b"])
    assert kl14.sae1_model_path == "a"


def test_values_come_from_flag_then_stage_then_common_then_paper():
    cfg = parse_config(STAGE_CONFIGS["sae1"], "", ["--preset", "cpu", "--val_every", "7"])
    assert (cfg.val_every, cfg.checkpoint_every, cfg.k, cfg.norm_rows) == (7, 200, 184, 10_000)
    paper = parse_config(STAGE_CONFIGS["joint"], "", [])
    assert ((paper.k, paper.features, paper.nfm_embed_dim, paper.batch_size, paper.top_n_features)
            == (1024, 50_000, 300, 64, 512))
