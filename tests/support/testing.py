"""Tiny real components for tests and benchmarks: an offline-built tokenizer, a randomly
initialised causal LM saved as a normal Hugging Face folder, and SAEs saved in the
dictionary_learning format that sae_bench's loaders read. Nothing here downloads.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

WORDS = (
    "the cat sat on a mat while dogs ran in the park and birds sang songs about rivers mountains "
    "cities rain sun moon stars coffee tea bread apple orange music piano guitar science physics "
    "chemistry history war peace king queen river ocean ship train car road bridge tower castle"
).split()


def tiny_corpus(n_docs: int = 200, seed: int = 0, words: Sequence[str] = WORDS) -> list[str]:
    """Deterministic pseudo-English documents, 20-80 words each."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        n = rng.randint(20, 80)
        docs.append(" ".join(rng.choice(words) for _ in range(n)) + ".")
    return docs


def build_tokenizer(texts: Sequence[str], vocab_size: int = 400) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` (instant), with <bos>/<eos>/<pad>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        chat_template=(
            "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}"
        ),
    )


def build_tiny_model(
    folder: str | Path,
    *,
    family: str = "llama",
    texts: Sequence[str] | None = None,
    hidden: int = 64,
    layers: int = 2,
    seed: int = 0,
    intermediate: int | None = None,
    heads: int = 4,
) -> Path:
    """Save a randomly initialised causal LM plus its tokenizer to ``folder`` and return it."""
    import transformers as tf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(texts or tiny_corpus())
    torch.manual_seed(seed)
    inter = intermediate or 2 * hidden
    common = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    if family == "llama":
        cfg: Any = tf.LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                                  num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=512, **common)
        model: Any = tf.LlamaForCausalLM(cfg)
    elif family == "gpt_neox":
        cfg = tf.GPTNeoXConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                               num_attention_heads=heads, max_position_embeddings=512, **common)
        model = tf.GPTNeoXForCausalLM(cfg)
    elif family == "gpt2":
        cfg = tf.GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=512, **common)
        model = tf.GPT2LMHeadModel(cfg)
    elif family == "qwen2":
        cfg = tf.Qwen2Config(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                             num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=512, **common)
        model = tf.Qwen2ForCausalLM(cfg)
    elif family == "gemma2":
        cfg = tf.Gemma2Config(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                              num_attention_heads=heads, num_key_value_heads=heads, head_dim=16, max_position_embeddings=512,
                              **common)
        model = tf.Gemma2ForCausalLM(cfg)
    elif family == "mistral":
        cfg = tf.MistralConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                               num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=512, **common)
        model = tf.MistralForCausalLM(cfg)
    elif family == "qwen3":
        cfg = tf.Qwen3Config(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                             num_attention_heads=heads, num_key_value_heads=heads, head_dim=16, max_position_embeddings=512,
                             **common)
        model = tf.Qwen3ForCausalLM(cfg)
    elif family == "gemma":
        cfg = tf.GemmaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                             num_attention_heads=heads, num_key_value_heads=heads, head_dim=16, max_position_embeddings=512,
                             **common)
        model = tf.GemmaForCausalLM(cfg)
    elif family == "gemma3":  # the multimodal checkpoint layout (language model under model.language_model)
        text_cfg = dict(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                        num_attention_heads=heads, num_key_value_heads=heads, head_dim=16, max_position_embeddings=512,
                        **common)
        vision_cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          image_size=28, patch_size=14)
        n = len(tokenizer)  # image tokens: ids the text never uses
        cfg = tf.Gemma3Config(text_config=text_cfg, vision_config=vision_cfg, mm_tokens_per_image=4,
                              boi_token_index=n - 3, eoi_token_index=n - 2, image_token_index=n - 1)
        model = tf.Gemma3ForConditionalGeneration(cfg)
    elif family == "gemma3_text":
        cfg = tf.Gemma3TextConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                                  num_attention_heads=heads, num_key_value_heads=heads, head_dim=16,
                                  max_position_embeddings=512, **common)
        model = tf.Gemma3ForCausalLM(cfg)
    else:
        raise ValueError(f"unknown family {family!r}")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_dictionary_learning_sae(
    folder: str | Path,
    *,
    W_enc: torch.Tensor,  # [d_in, d_sae]
    b_enc: torch.Tensor,
    W_dec: torch.Tensor | None = None,  # [d_sae, d_in]
    b_dec: torch.Tensor | None = None,
    trainer_class: str = "StandardTrainer",
    layer: int = 1,
    lm_name: str = "tiny-llama",
    k: int | None = None,
    threshold: float | torch.Tensor | None = None,
    r_mag: torch.Tensor | None = None,
    b_mag: torch.Tensor | None = None,
    extra_state: dict[str, torch.Tensor] | None = None,
    eval_results: dict[str, Any] | None = None,
) -> Path:
    """Write ``ae.pt`` + ``config.json`` exactly as dictionary_learning / SAEBench do.

    The state-dict layout follows ``trainer_class``, as sae_bench's loaders expect it: ReLU, p-anneal,
    TopK and BatchTopK store ``nn.Linear`` weights (``encoder.weight`` = W_enc.T, ``bias`` = b_dec);
    JumpReLU and Matryoshka store ``W_enc``/``b_enc``/``W_dec``/``b_dec`` as they are; gated stores
    ``gate_bias`` (= ``b_enc`` here), ``r_mag``, ``mag_bias`` and ``decoder_bias`` and no encoder bias.
    ``threshold`` is a scalar for the BatchTopK family and one value per latent for JumpReLU.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    d_in, d_sae = W_enc.shape
    if W_dec is None:
        W_dec = W_enc.T.clone()
    if b_dec is None:
        b_dec = torch.zeros(d_in)
    W_enc, b_enc, W_dec, b_dec = W_enc.float(), b_enc.float(), W_dec.float(), b_dec.float()
    state: dict[str, torch.Tensor]
    if trainer_class == "GatedSAETrainer":
        state = {
            "encoder.weight": W_enc.T.contiguous(),
            "decoder.weight": W_dec.T.contiguous(),
            "decoder_bias": b_dec,
            "gate_bias": b_enc,
            "r_mag": torch.zeros(d_sae) if r_mag is None else r_mag.float(),
            "mag_bias": b_enc.clone() if b_mag is None else b_mag.float(),
        }
    elif trainer_class in ("JumpReluTrainer", "MatryoshkaBatchTopKTrainer"):
        state = {"W_enc": W_enc.contiguous(), "b_enc": b_enc, "W_dec": W_dec.contiguous(), "b_dec": b_dec}
        if trainer_class == "MatryoshkaBatchTopKTrainer":
            state["group_sizes"] = torch.tensor([d_sae // 2, d_sae - d_sae // 2])
    else:
        state = {
            "encoder.weight": W_enc.T.contiguous(),
            "encoder.bias": b_enc,
            "decoder.weight": W_dec.T.contiguous(),
            "bias": b_dec,
        }
    if k is not None:
        state["k"] = torch.tensor(k, dtype=torch.int)
    if threshold is not None:
        state["threshold"] = torch.as_tensor(threshold, dtype=torch.float32)
    state.update(extra_state or {})
    torch.save(state, folder / "ae.pt")
    trainer = {"trainer_class": trainer_class, "layer": layer, "lm_name": lm_name,
               "activation_dim": d_in, "dict_size": d_sae}
    if k is not None:
        trainer["k"] = k
    (folder / "config.json").write_text(json.dumps({"trainer": trainer}, indent=2))
    if eval_results is not None:
        (folder / "eval_results.json").write_text(json.dumps(eval_results, indent=2))
    return folder


def token_detector_sae(
    folder: str | Path,
    model_dir: str | Path,
    token_ids: Sequence[int | Sequence[int]],
    *,
    layer: int = 1,
    n_random: int = 6,
    seed: int = 0,
    texts: Sequence[str] | None = None,
) -> Path:
    """A ReLU SAE whose latent ``i < len(token_ids)`` fires exactly where ``token_ids[i]`` appears (a set
    of ids: where any of them appears).

    Directions and biases are fitted on the tiny model's own hidden states at ``layer`` (the residual
    stream keeps each token's identity linearly readable): for one token the mean difference of its
    states from the rest, for a set the sum of each member's unit mean difference. The bias is set
    halfway between the weakest on-token and strongest off-token projection. Extra random latents make
    it a real SAE.
    """
    from sae_sens.model import load_model

    lm = load_model(str(model_dir), f"blocks.{layer}.hook_resid_post", device="cpu", dtype="float32")
    docs = list(texts or tiny_corpus(100, seed=seed + 1))
    seqs = [ids for ids, _ in lm.encode_texts(docs, 128)]
    ids, mask = lm.pad(seqs)
    h = lm.hidden(ids, mask).float()
    keep = lm.count_mask(ids, mask)
    hs, toks = h[keep], ids[keep]
    g = torch.Generator().manual_seed(seed)
    cols, biases = [], []
    for t in token_ids:
        members = [t] if isinstance(t, int) else list(t)
        on = torch.isin(toks, torch.as_tensor(members))
        if any(not (toks == m).any() for m in members):
            raise ValueError(f"token {t} never appears in the fitting texts")
        w = torch.zeros(hs.shape[1])
        for m in members:
            d = hs[toks == m].mean(0) - hs[~on].mean(0)
            w += d / d.norm()
        w = w / w.norm()
        proj = hs @ w
        lo, hi = proj[on].min(), proj[~on].max()
        if lo <= hi:
            raise ValueError(f"token {t} is not linearly separable at layer {layer}")
        cols.append(w)
        biases.append(-(lo + hi) / 2)
    d_in = hs.shape[1]
    # sae_bench's loaders require d_sae >= d_in
    for _ in range(max(n_random, d_in - len(token_ids))):
        cols.append(torch.randn(d_in, generator=g) / d_in**0.5)
        biases.append(torch.tensor(-0.1))
    W_enc = torch.stack(cols, 1)
    b_enc = torch.stack([torch.as_tensor(b, dtype=torch.float32) for b in biases])
    return save_dictionary_learning_sae(folder, W_enc=W_enc, b_enc=b_enc, layer=layer,
                                        lm_name=Path(model_dir).name)


def put_in_hub_cache(cache: str | Path, repo_id: str, files: dict[str, bytes | Path], commit: str = "0" * 40) -> Path:
    """Lay ``files`` ({path in repo: content or local file}) out exactly as huggingface_hub caches a
    model repo: ``models--{org}--{name}/blobs/<sha256>``, ``snapshots/<commit>/<path>`` linking to the
    blob, and ``refs/main`` naming the commit. Returns the snapshot folder."""
    import hashlib
    import os

    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        data = content.read_bytes() if isinstance(content, Path) else content
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def _exceeded_by(values: torch.Tensor, frac: float) -> torch.Tensor:
    """Per column, a value that a share ``frac`` of the rows exceed, halfway between two rows' values so
    that no row sits on it (rounding must not flip a latent). topk: much faster than quantile."""
    n = min(max(1, round(frac * values.shape[0])), values.shape[0] - 1)
    top = values.T.contiguous().topk(n + 1, dim=1).values
    return (top[:, -2] + top[:, -1]) / 2


# SAEBench architecture code -> dictionary_learning trainer class
ARCH_TRAINER = {
    "relu": "StandardTrainer",
    "pan": "PAnnealTrainer",
    "topk": "TopKTrainer",
    "btopk": "BatchTopKTrainer",
    "matbtopk": "MatryoshkaBatchTopKTrainer",
    "jumprelu": "JumpReluTrainer",
    "gated": "GatedSAETrainer",
}


def random_sae(
    folder: str | Path,
    arch: str,
    *,
    d_in: int,
    d_sae: int,
    acts: torch.Tensor | None = None,
    fire: float = 0.1,
    k: int = 8,
    layer: int = 1,
    lm_name: str = "tiny-llama",
    seed: int = 0,
    eval_results: dict[str, Any] | None = None,
) -> Path:
    """A random SAE of ``arch`` (an SAEBench code, or ``gemmascope`` for a GemmaScope ``params.npz``)
    in its real file format, with unit-norm decoder rows (sae_bench's loaders insist) and biases and
    thresholds set so that about ``fire`` of the latents fire on ``acts`` ([n, d_in]; default
    Gaussian). Returns the folder (dictionary_learning) or the ``params.npz`` file (gemmascope)."""
    g = torch.Generator().manual_seed(seed)
    # identical rows (e.g. every BOS position) would tie at a threshold: keep one of each
    x = acts.float().reshape(-1, d_in).unique(dim=0) if acts is not None else torch.randn(128, d_in, generator=g)
    scale = x.std()
    W_enc = torch.randn(d_in, d_sae, generator=g)
    W_enc = W_enc / W_enc.norm(dim=0, keepdim=True)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    b_dec = 0.1 * scale * torch.randn(d_in, generator=g)
    if arch in ("jumprelu", "gemmascope"):  # these read x, not x - b_dec
        b_enc = 0.1 * scale * torch.randn(d_sae, generator=g)
        pre = x @ W_enc + b_enc
        threshold = _exceeded_by(pre, fire).clamp(min=0.0)
        if arch == "gemmascope":
            import numpy as np

            folder = Path(folder)
            folder.mkdir(parents=True, exist_ok=True)
            arrays = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec, "threshold": threshold}
            np.savez(folder / "params.npz", **{n: t.numpy().astype(np.float32) for n, t in arrays.items()})
            return folder / "params.npz"
        return save_dictionary_learning_sae(folder, W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec,
                                            trainer_class=ARCH_TRAINER[arch], layer=layer, lm_name=lm_name,
                                            threshold=threshold, eval_results=eval_results)
    pre = (x - b_dec) @ W_enc
    b_enc = -_exceeded_by(pre, 0.5 if arch == "topk" else fire)
    extra: dict[str, Any] = {}
    if arch in ("topk", "btopk", "matbtopk"):
        extra["k"] = k
    if arch in ("btopk", "matbtopk"):
        post = torch.relu(pre + b_enc)
        extra["threshold"] = float(_exceeded_by(post[post > 0].reshape(-1, 1), 0.5))  # one global threshold
    if arch == "gated":
        extra["r_mag"] = 0.1 * torch.randn(d_sae, generator=g)
        extra["b_mag"] = 0.1 * scale * torch.randn(d_sae, generator=g)
    return save_dictionary_learning_sae(folder, W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec,
                                        trainer_class=ARCH_TRAINER[arch], layer=layer, lm_name=lm_name,
                                        eval_results=eval_results, **extra)


@dataclass(frozen=True)
class TinyWorld:
    """A tiny real model, a token-detector SAE on it and the corpus both were built from.

    The SAE's latents 0, 1, 2 fire exactly on the one-token words ``targets`` (with their leading
    space); ``others`` are the other one-token words, which fire none of them."""

    root: Path
    model: Path
    sae: Path
    corpus: Path  # JSONL, one {"text": ...} per document of ``docs``
    docs: list[str]
    targets: list[str]
    others: list[str]
    tokenizer: Any


def build_tiny_world(root: str | Path) -> TinyWorld:
    """Build the tiny world under ``root`` (a few seconds on a CPU; nothing downloads)."""
    from transformers import AutoTokenizer

    root = Path(root)
    docs = tiny_corpus(240, seed=11)  # its detector tokens are linearly separable at layer 1
    model = build_tiny_model(root / "tiny-llama", texts=docs, family="llama", layers=2)
    tok = AutoTokenizer.from_pretrained(model)
    single = [w for w in dict.fromkeys(WORDS) if len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1]
    targets = single[1:4]  # not "the": every window would be about it
    others = [w for w in single if w not in targets]
    target_ids = [tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in targets]
    sae = token_detector_sae(root / "sae", model, target_ids, layer=1, texts=docs[:80])
    corpus = root / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return TinyWorld(root=root, model=model, sae=sae, corpus=corpus, docs=docs, targets=targets, others=others,
                     tokenizer=tok)
