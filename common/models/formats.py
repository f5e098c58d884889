"""TopK SAEs in the directories of SAELens and EleutherAI sparsify (METHOD §12): read one as our ``TopKSAE`` in raw
activation space, or write ours as one, its z-score normalization folded into the weights.

Both formats centre the input on ``b_dec`` before the encoder and add ``b_dec`` to the reconstruction. Ours
z-scores (mean μ, std σ per dimension), runs the SAE, and de-normalizes, so on raw activations x:
``W_enc (x − μ − σ·b)/σ + b_enc`` and ``σ·(codes W_dec + b) + μ``. Hence ``b_dec = μ + σ·b``, the encoder weight is
``W_enc/σ`` per input dimension, the encoder bias stays, and the decoder weight is ``W_dec·σ`` per output dimension
(b, our own decoder bias, is zero except for an SAE that was itself imported).

Layers: our layer L is ``hidden_states[L]``, the output of block L-1: SAELens' ``blocks.L.hook_resid_pre`` (or
``blocks.{L-1}.hook_resid_post``) and sparsify's hookpoint ``layers.{L-1}``, the name of its folder.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from common.errors import UserError
from common.models.sae import TopKSAE
from common.store.reads import load_json, load_tensors
from common.store.savers import atomic_save_json, atomic_save_safetensors
from common.store.stage_files import weights_sha256

SAELENS, SPARSIFY = "saelens", "sparsify"
FORMATS = (SAELENS, SPARSIFY)
CFG_FILE = "cfg.json"
WEIGHTS_FILES = {SAELENS: "sae_weights.safetensors", SPARSIFY: "sae.safetensors"}
# Written beside the format's own files by our export: what neither format can hold, so that a round trip keeps it.
SIDECAR_FILE = "feature_integration.json"
SUPPORTED = ("only TopK SAEs are supported: SAELens architecture 'topk' (no activation normalization or reshaping) and "
             "sparsify activation 'topk' (no skip connection, no transcoder)")
SAELENS_FORMAT_VERSION = "6.0.0"
_RESID_PRE = re.compile(r"blocks\.(\d+)\.hook_resid_pre")
_RESID_POST = re.compile(r"blocks\.(\d+)\.hook_resid_post")
_SPARSIFY_HOOKPOINT = re.compile(r"layers\.(\d+)")


@dataclass
class ImportedSAE:
    sae: TopKSAE  # fp32, CPU, with a decoder bias; reads raw activations
    folder: Path
    format: str  # SAELENS or SPARSIFY
    weights_file: str
    config: dict[str, Any]  # as a stage-1 config.json: provenance (what the directory names; None elsewhere), shape


def foreign_format(path: str | Path) -> str | None:
    """SAELENS or SPARSIFY when ``path`` is (or is a file in) such a directory; None for anything else."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent if path.is_file() else None
    for fmt in FORMATS if folder is not None else ():
        if (folder / CFG_FILE).is_file() and (folder / WEIGHTS_FILES[fmt]).is_file():
            return fmt
    return None


def same_model(named: str, model_id: Any) -> bool:
    """A format's model name against our model id: equal, or equal to the id's last part (SAELens often writes
    ``pythia-70m-deduped`` for ``EleutherAI/pythia-70m-deduped``), case aside."""
    if not isinstance(model_id, str):
        return False
    a, b = named.lower(), model_id.lower()
    return a == b or a.rsplit("/", 1)[-1] == b.rsplit("/", 1)[-1]


# ---- import ------------------------------------------------------------------------------------------------------


def import_sae(path: str | Path, flag: str) -> ImportedSAE:
    """The TopK SAE of a SAELens or sparsify directory, with what it names of its model and layer."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    fmt = foreign_format(folder)
    what = f"{flag} {path}"
    cfg = load_json(folder / CFG_FILE)
    if not isinstance(cfg, dict):
        raise UserError(f"{folder / CFG_FILE} is not a {fmt} config (a JSON object)")
    tensors = load_tensors(folder / WEIGHTS_FILES[fmt])
    reader = _from_saelens if fmt == SAELENS else _from_sparsify
    sae, provenance = reader(cfg, tensors, what, folder)
    provenance = _sidecar_provenance(folder, fmt, what) or provenance
    if provenance["d_model"] != sae.d_model:
        raise UserError(f"{what}: its sidecar records d_model {provenance['d_model']} but the SAE reads {sae.d_model}")
    config = {
        "stage": "sae1",
        "imported_format": fmt,
        **provenance,
        "config": {"features": sae.num_features, "k": sae.k, "tied": False},
        "normalization": "identity (mean 0, std 1): the imported SAE reads raw activations",
        "model": sae.record(),
    }
    return ImportedSAE(sae, folder, fmt, WEIGHTS_FILES[fmt], config)


def _tensor(tensors: dict[str, Tensor], name: str, shape: tuple[int, ...], what: str) -> Tensor:
    found = tensors.get(name)
    if found is None or tuple(found.shape) != shape:
        got = "missing" if found is None else f"of shape {tuple(found.shape)}"
        raise UserError(f"{what}: weight {name!r} is {got}, expected {shape} from its {CFG_FILE}")
    return found.float()


def _positive_int(cfg: dict[str, Any], key: str, what: str) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise UserError(f"{what}: its {CFG_FILE} has no positive integer {key!r} (got {value!r})")
    return int(value)


def _build(d_model: int, num_features: int, k: int, weights: dict[str, Tensor], what: str) -> TopKSAE:
    if not 1 <= k <= num_features:
        raise UserError(f"{what}: K={k} must be between 1 and the number of features {num_features}")
    sae = TopKSAE(d_model, num_features, k, tied=False, decoder_bias=True)
    sae.load_state_dict(weights, strict=True)
    return sae.eval()


def _from_saelens(cfg: dict[str, Any], tensors: dict[str, Tensor], what: str,
                  folder: Path) -> tuple[TopKSAE, dict[str, Any]]:
    # SAELens 6 nests the model and hook under "metadata"; before 6 they sat at the top, a TopK SAE was an activation
    # ("activation_fn_str": "topk", its K under "activation_fn_kwargs") and the hook was once "hook_point".
    metadata = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else cfg
    old_k = (cfg.get("activation_fn_kwargs") or {}).get("k")
    old_topk = cfg.get("activation_fn", cfg.get("activation_fn_str")) == "topk" and old_k is not None
    architecture = "topk" if old_topk else cfg.get("architecture", "standard")
    if architecture != "topk":
        raise UserError(f"{what}: a SAELens {architecture!r} SAE; {SUPPORTED}")
    for key in ("normalize_activations", "reshape_activations"):
        if cfg.get(key) not in (None, False, "none"):
            raise UserError(f"{what}: SAELens {key} {cfg[key]!r}; {SUPPORTED}")
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise UserError(f"{what}: SAELens rescale_acts_by_decoder_norm is set; {SUPPORTED}")
    d, num_features = _positive_int(cfg, "d_in", what), _positive_int(cfg, "d_sae", what)
    k = _positive_int({"k": old_k} if old_topk else cfg, "k", what)
    W_enc = _tensor(tensors, "W_enc", (d, num_features), what).t().contiguous()
    b_enc = _tensor(tensors, "b_enc", (num_features,), what)
    b_dec = _tensor(tensors, "b_dec", (d,), what)
    if cfg.get("apply_b_dec_to_input") is False:  # W x + b = W (x − b_dec) + (b + W b_dec): centred like the rest
        b_enc = b_enc + W_enc @ b_dec
    weights = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": _tensor(tensors, "W_dec", (num_features, d), what),
               "b_dec": b_dec}
    if metadata.get("hook_head_index") is not None:
        raise UserError(f"{what}: an SAE of one attention head (hook_head_index {metadata['hook_head_index']}); "
                        "only residual-stream SAEs are supported")
    hook = metadata.get("hook_name", metadata.get("hook_point"))
    provenance = {"model_id": metadata.get("model_name"), "model_fingerprint": None,
                  "layer": _saelens_layer(hook, what), "d_model": d}
    return _build(d, num_features, k, weights, what), provenance


def _saelens_layer(hook_name: Any, what: str) -> int | None:
    if hook_name is None:
        return None
    if match := _RESID_PRE.fullmatch(str(hook_name)):
        return int(match.group(1))
    if match := _RESID_POST.fullmatch(str(hook_name)):
        return int(match.group(1)) + 1
    raise UserError(f"{what}: hook {hook_name!r} is not the residual stream (blocks.L.hook_resid_pre or "
                    "blocks.L.hook_resid_post); only residual-stream SAEs are supported")


def _from_sparsify(cfg: dict[str, Any], tensors: dict[str, Tensor], what: str,
                   folder: Path) -> tuple[TopKSAE, dict[str, Any]]:
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise UserError(f"{what}: a sparsify {activation!r} SAE; {SUPPORTED}")
    for key in ("skip_connection", "transcode"):
        if cfg.get(key):
            raise UserError(f"{what}: sparsify {key} is set; {SUPPORTED}")
    d, k = _positive_int(cfg, "d_in", what), _positive_int(cfg, "k", what)
    num_features = int(cfg.get("num_latents") or d * cfg.get("expansion_factor", 32))  # sparsify's own rule
    weights = {"W_enc": _tensor(tensors, "encoder.weight", (num_features, d), what),
               "b_enc": _tensor(tensors, "encoder.bias", (num_features,), what),
               "W_dec": _tensor(tensors, "W_dec", (num_features, d), what),
               "b_dec": _tensor(tensors, "b_dec", (d,), what)}
    # sparsify saves each hookpoint in a folder named by it; ``layers.i`` is the output of block i.
    hookpoint = _SPARSIFY_HOOKPOINT.fullmatch(folder.resolve().name)
    provenance = {"model_id": None, "model_fingerprint": None,
                  "layer": int(hookpoint.group(1)) + 1 if hookpoint else None, "d_model": d}
    return _build(d, num_features, k, weights, what), provenance


def _sidecar_provenance(folder: Path, fmt: str, what: str) -> dict[str, Any] | None:
    """The model id, fingerprint, layer and width our export recorded, when its sidecar describes these weights."""
    path = folder / SIDECAR_FILE
    if not path.is_file():
        return None
    sidecar = load_json(path)
    if sidecar.get("weights_sha256") != weights_sha256(folder, WEIGHTS_FILES[fmt]):
        raise UserError(f"{what}: {SIDECAR_FILE} describes other weights than {WEIGHTS_FILES[fmt]} (they changed "
                        f"after the export): export again, or delete {path} to import the weights alone")
    return {key: sidecar.get(key) for key in ("model_id", "model_fingerprint", "layer", "d_model")}


# ---- export ------------------------------------------------------------------------------------------------------


def raw_space_weights(sae: TopKSAE, mean: Tensor, std: Tensor) -> dict[str, Tensor]:
    """Our SAE with its z-scoring folded in: (F, d) ``W_enc`` and ``W_dec``, ``b_enc`` (F), ``b_dec`` (d), fp32."""
    mean, std = mean.float(), std.float()
    own_bias = torch.zeros_like(mean) if sae.b_dec is None else sae.b_dec.detach().float()
    return {"W_enc": sae.encoder_weight.detach().float() / std, "b_enc": sae.b_enc.detach().float().clone(),
            "W_dec": sae.W_dec.detach().float() * std, "b_dec": mean + std * own_bias}


def export_sae(sae: TopKSAE, mean: Tensor, std: Tensor, provenance: dict[str, Any], fmt: str, out: Path) -> Path:
    """Write ``sae`` (with its normalization stats) into ``out`` as a ``fmt`` directory plus our sidecar.

    ``provenance``: ``model_id``, ``model_fingerprint``, ``layer``, ``d_model``, and what the sidecar records of
    where the SAE came from (``source``, ``normalization``; ``window`` and ``bos`` when known).
    """
    weights = raw_space_weights(sae, mean, std)
    layer = provenance["layer"]
    if fmt == SAELENS:
        tensors = {"W_enc": weights["W_enc"].t(), "b_enc": weights["b_enc"], "W_dec": weights["W_dec"],
                   "b_dec": weights["b_dec"]}
        cfg: dict[str, Any] = {
            "architecture": "topk", "d_in": sae.d_model, "d_sae": sae.num_features, "k": sae.k, "dtype": "float32",
            "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
            "reshape_activations": "none", "rescale_acts_by_decoder_norm": False,
            # The version of the format written: SAELens reads a config without one as its pre-6 layout.
            "metadata": {"sae_lens_version": SAELENS_FORMAT_VERSION, "model_name": provenance["model_id"],
                         "hook_name": f"blocks.{layer}.hook_resid_pre", "hook_head_index": None,
                         "context_size": provenance.get("window"), "prepend_bos": provenance.get("bos")},
        }
        hookpoint = cfg["metadata"]["hook_name"]
    else:
        tensors = {"encoder.weight": weights["W_enc"], "encoder.bias": weights["b_enc"], "W_dec": weights["W_dec"],
                   "b_dec": weights["b_dec"]}
        # Our decoder rows are not unit norm, so sparsify must not renormalize them.
        cfg = {"activation": "topk", "expansion_factor": max(1, sae.num_features // sae.d_model),
               "normalize_decoder": False, "num_latents": sae.num_features, "k": sae.k, "multi_topk": False,
               "skip_connection": False, "transcode": False, "d_in": sae.d_model}
        hookpoint = f"layers.{layer - 1}"
    weights_path = out / WEIGHTS_FILES[fmt]
    atomic_save_safetensors(tensors, weights_path)
    atomic_save_json(cfg, out / CFG_FILE)
    atomic_save_json({
        "written_by": "feature-integration export_sae.py",
        "format": fmt,
        "weights_file": WEIGHTS_FILES[fmt],
        "weights_sha256": weights_sha256(out, WEIGHTS_FILES[fmt]),
        "model_id": provenance["model_id"],
        "model_fingerprint": provenance["model_fingerprint"],
        "layer": layer,
        "d_model": sae.d_model,
        "hookpoint": hookpoint,
        "residual": f"hidden_states[{layer}], the output of block {layer - 1}",
        "normalization": provenance.get("normalization"),
        "source": provenance.get("source"),
    }, out / SIDECAR_FILE)
    return out
