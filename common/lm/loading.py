"""Load a causal LM and its tokenizer by name: the tiny random Llama, the GGUF SmolLM2, or any HF id / local folder."""
from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from common.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

from common.lm.gguf import SMOLLM2_ID, load_gguf, smollm2_path
from common.lm.model import LoadedLM, first_line, loaded_lm, weights_file_sha256
from common.lm.tiny import load_tiny
from common.registry import SMOLLM2_GGUF, TINY_MODEL

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def load_lm(name: str, device: torch.device, dtype: torch.dtype | None = None, trust_remote_code: bool = False,
            cache_dir: str | Path | None = None) -> LoadedLM:
    """``name`` (``TINY_MODEL``, ``SMOLLM2_GGUF``, a ``.gguf`` path, a hub id or a local folder) ready for inference.

    The tokenizer and the shape are read at once; the weights when first used. A GGUF file is de-quantized once: with
    ``cache_dir`` its fp32 weights are kept there as safetensors, keyed by the file's sha256, so a later process loads
    them in a fraction of a second instead of de-quantizing again (the fingerprint stays the GGUF file's).
    """
    if name == TINY_MODEL:
        return load_tiny(device, dtype)
    if name == SMOLLM2_GGUF or name.endswith(".gguf"):
        path = smollm2_path() if name == SMOLLM2_GGUF else Path(name).expanduser()
        if not path.is_file():
            raise UserError(f"cannot load model {name!r}: no such GGUF file")
        model_id = SMOLLM2_ID if name == SMOLLM2_GGUF else path.name
        return load_gguf(path, model_id, device, dtype, None if cache_dir is None else Path(cache_dir))
    return _pretrained(name, device, dtype, trust_remote_code)


def _pretrained(name: str, device: torch.device, dtype: torch.dtype | None, trust_remote_code: bool) -> LoadedLM:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(name).expanduser()
    is_local = folder.is_dir()
    if not is_local and (not _HUB_ID.fullmatch(name) or ".." in name or folder.exists()):
        raise UserError(f"cannot load model {name!r}: no such model folder, and not a Hugging Face hub id (org/name)")
    # OpenLLaMA's authors advise the slow sentencepiece tokenizer (transformers 5 ignores the flag: it has only one
    # kind).
    tokenizer_kwargs = {"use_fast": False} if "open_llama" in name.lower() else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code, **tokenizer_kwargs)
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise _load_error(name, is_local, err) from err
    # On CUDA keep the LM in its own dtype (fp16 for OpenLLaMA, as the original); half precision is slow on the CPU.
    if dtype is None and device.type == "cuda":
        own = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
        dtype = own if isinstance(own, torch.dtype) else getattr(torch, str(own).removeprefix("torch."))
    dtype = dtype or torch.float32

    def weights() -> PreTrainedModel:
        try:
            try:
                return AutoModelForCausalLM.from_pretrained(name, dtype=dtype, attn_implementation="sdpa",
                                                            trust_remote_code=trust_remote_code)
            except ValueError as err:  # a family without an SDPA kernel (Gemma-2's soft-capping) gets its default
                if "scaled_dot_product_attention" not in str(err):
                    raise
                log.info("%s has no SDPA attention: loading it with its default attention", name)
                return AutoModelForCausalLM.from_pretrained(name, dtype=dtype, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as err:
            raise _load_error(name, is_local, err) from err

    model_id, fingerprint = (folder.resolve().name, _folder_sha256(folder)) if is_local else (name, _hub_commit(name))
    return loaded_lm(tokenizer, config, model_id, fingerprint, device, dtype, weights)


def _load_error(name: str, is_local: bool, err: BaseException) -> UserError:
    if not is_local and _is_unreachable(err):
        return UserError(
            f"cannot load model {name!r}: not in the local Hugging Face cache and the hub is unreachable (offline). "
            f"Download it first (setup-windows/download_model.ps1 or `hf download {name}`) "
            "or run the offline CPU preset: --preset cpu"
        )
    return UserError(f"cannot load model {name!r}: {first_line(err)}")


def _is_unreachable(err: BaseException) -> bool:
    """True when the hub could not be asked (offline mode, no network), as opposed to a wrong id or a broken folder."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError)):
            return True
        if "couldn't connect" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _hub_commit(name: str) -> str:
    """The cached snapshot's commit: the folder that ``config.json`` was read from is named by it."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        return f"commit:{Path(cached).parent.name}"
    return f"hub:{name}"


def _folder_sha256(folder: Path) -> str:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(weights_file_sha256(path).encode())
    return f"sha256:{digest.hexdigest()}"


