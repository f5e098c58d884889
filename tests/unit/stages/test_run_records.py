"""common/stages/run_records.py: a run is identified by what it is (its command line with the run folder as {DIR},
each text by its content, each input stage by its output's sha256), so a moved folder continues and a changed input
does not; its record is written and compared."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from common.stages.run_records import RUN_RECORDS, RunRecord, output_fingerprint, stage_identity


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_a_stages_output_fingerprint_is_its_weights_else_its_results(tmp_path: Path):
    assert output_fingerprint(tmp_path) is None
    (tmp_path / "results.json").write_bytes(b'{"a": 1}\n')
    assert output_fingerprint(tmp_path) == sha(b'{"a": 1}\n')
    (tmp_path / "best_model.safetensors").write_bytes(b"weights bytes")
    assert output_fingerprint(tmp_path) == sha(b"weights bytes")


def test_the_identity_writes_the_run_folder_as_dir_and_texts_by_content(tmp_path: Path):
    out = tmp_path / "run"
    text = tmp_path / "wiki.txt"
    text.write_bytes(b"one line\n")
    (out / "sae1").mkdir(parents=True)
    (out / "sae1" / "best_model.safetensors").write_bytes(b"W")
    argv = ["--preset", "cpu", "--checkpoint_dir", f"{out}/nfm", "--sae1_model_path", f"{out}/sae1",
            "--cache_dir", str(out), "--other", f"{out}2/sae1", "--text_files", str(text)]
    identity = stage_identity(argv, out, [str(text)], [out / "sae1"])
    text_hash = sha(b"1" + b"one line\n" + b"\0")  # files_sha256: the count, then each file and a separator
    assert identity == {
        "settings": ["--preset", "cpu", "--checkpoint_dir", "{DIR}/nfm", "--sae1_model_path", "{DIR}/sae1",
                     "--cache_dir", "{DIR}", "--other", f"{out}2/sae1", "--text_files", text_hash],
        "inputs": {"sae1": sha(b"W")},
    }


def test_a_moved_run_has_the_same_identity_and_a_retrained_input_another(tmp_path: Path):
    def identity(out: Path) -> dict:
        return stage_identity(["--sae1_model_path", str(out / "sae1")], out, [], [out / "sae1"])

    for folder in ("a", "b"):
        (tmp_path / folder / "sae1").mkdir(parents=True)
        (tmp_path / folder / "sae1" / "best_model.safetensors").write_bytes(b"W")
    assert identity(tmp_path / "a") == identity(tmp_path / "b")
    (tmp_path / "b" / "sae1" / "best_model.safetensors").write_bytes(b"W2")
    assert identity(tmp_path / "a") != identity(tmp_path / "b")


def test_a_record_is_written_and_recognized(tmp_path: Path):
    identity = {"settings": ["--preset", "tiny"], "inputs": {}}
    first = RunRecord(tmp_path, "nfm", identity, ["--preset", "tiny"])
    assert first.previous is None and not first.same_run
    written = first.write("part2d_residual_NFM_streaming.py", 12.5)
    path = tmp_path / RUN_RECORDS / "nfm.json"
    assert first.path == path
    assert json.loads(path.read_text()) == written == {"identity": identity, "argv": ["--preset", "tiny"],
                                                       "script": "part2d_residual_NFM_streaming.py", "seconds": 12.5}
    assert RunRecord(tmp_path, "nfm", identity, ["--preset", "tiny"]).same_run
    other = {"settings": ["--preset", "tiny"], "inputs": {"sae1": "sha256:x"}}
    assert not RunRecord(tmp_path, "nfm", other, ["--preset", "tiny"]).same_run
    assert RunRecord(tmp_path, "nfm", identity, ["--preset", "tiny"]).previous["seconds"] == 12.5


def test_a_record_from_before_identities_is_compared_by_its_command_line(tmp_path: Path):
    (tmp_path / RUN_RECORDS).mkdir()
    (tmp_path / RUN_RECORDS / "sae1.json").write_text(json.dumps({"argv": ["--preset", "cpu"], "seconds": 3.0}))
    identity = {"settings": [], "inputs": {}}
    assert RunRecord(tmp_path, "sae1", identity, ["--preset", "cpu"]).same_run
    assert not RunRecord(tmp_path, "sae1", identity, ["--preset", "tiny"]).same_run
