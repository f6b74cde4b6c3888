"""Shared offline fixtures: a tiny random Pythia-like model folder and a small text dataset.

Everything is built locally and deterministically (seeded); nothing touches the network.
"""

from __future__ import annotations

import json
import os
import random

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

EOS = "<|endoftext|>"

_SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "our team", "the old man",
             "a small bird", "the river", "this model", "the city", "her brother", "the sun"]
_VERBS = ["sees", "likes", "finds", "builds", "reads", "follows", "carries", "watches",
          "remembers", "opens", "paints", "counts"]
_OBJECTS = ["the red ball", "a long letter", "the green house", "an open window", "the map",
            "a quiet song", "the last train", "some fresh bread", "the blue door",
            "a heavy box", "the number seven", "the morning news"]
_TAILS = ["", " today", " again", " in the park", " after dinner", " at night",
          " with great care", " near the lake", " every morning", " for a while"]


def english_like_docs(n_docs: int, seed: int = 0) -> list[str]:
    """`n_docs` short documents of 1-4 simple sentences, reproducible from `seed`."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(rng.randint(1, 4)):
            s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(_TAILS)}."
            sentences.append(s[0].upper() + s[1:])
        docs.append(" ".join(sentences))
    return docs


def _train_tokenizer(texts: list[str], vocab_size: int = 512):
    """A byte-level BPE tokenizer like Pythia's, with "<|endoftext|>" as bos/eos/unk."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS)


@pytest.fixture(scope="session")
def tiny_pythia(tmp_path_factory) -> str:
    """Folder with a random-weight GPTNeoXForCausalLM (d_model 64, 3 layers) and its tokenizer.

    Layer-norm and bias parameters are perturbed away from their (1, 0) init so that weight
    processing (fold_ln, centering) is actually exercised by tests.
    """
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    path = tmp_path_factory.mktemp("tiny-pythia")
    tokenizer = _train_tokenizer(english_like_docs(400, seed=1))
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=256,
        rotary_pct=0.25,
        use_parallel_residual=True,
        hidden_act="gelu",
        initializer_range=0.1,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_text_dataset(tmp_path_factory) -> str:
    """A jsonl file of 200 short English-like documents, one {"text": ...} object per line."""
    path = tmp_path_factory.mktemp("tiny-text") / "docs.jsonl"
    with open(path, "w") as f:
        for doc in english_like_docs(200, seed=2):
            f.write(json.dumps({"text": doc}) + "\n")
    return str(path)
