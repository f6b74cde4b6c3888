"""HarvestConfig: the dataclass whose fields are the `saease harvest` flags."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from saease.errors import SaeaseError
from saease.models import SHORT_HOOKS
from saease.store import DTYPES

STORAGE_DTYPES = tuple(DTYPES)  # float16, float32, bfloat16
DEFAULT_LAYER = 2  # docs/reproduce.md: blocks.2.hook_resid_post
PAPER_ROWS = 2_098_176  # docs/reproduce.md: 2,049 batches x 4 x 256 vectors

# Fields that do not change the rows of the store (they may differ between a run and its resume).
_NOT_IN_KEY = ("device", "out", "overwrite")
# Fields added after stores were made: an older manifest's key lacks them, which means this value.
KEY_DEFAULTS = {"shuffle_windows": False, "seed": 0}


@dataclass
class HarvestConfig:
    model: str = field(default="pythia-70m-deduped", metadata={
        "help": "TransformerLens model name, hub id (org/name) or local Hugging Face model folder "
                "(causal LMs, and BERT encoders such as a MiniLM BertModel folder)"})
    layer: int | None = field(default=None, metadata={
        "help": "block index to hook, 0-based (default: 2 like the paper, or the block of a full "
                "--hook name)"})
    hook: str = field(default="resid_post", metadata={
        "help": f"hook in that block: {', '.join(SHORT_HOOKS)}, or a full hook name "
                "such as blocks.2.hook_resid_post (in a post-LN BERT resid_post is the vector passed "
                "to the next block, blocks.L.hook_normalized_resid_post)"})
    raw: bool = field(default=False, metadata={
        "help": "keep the unprocessed Hugging Face weights (activations equal HF hidden states); "
                "by default weights are processed like the paper's harvest (fold_ln, "
                "center_writing_weights); BERTs are never processed"})
    dataset: str = field(default="NeelNanda/pile-10k", metadata={
        "help": "hub dataset id, or a local .jsonl/.json/.parquet/.csv/.txt file, a folder of "
                "them, or a folder saved with datasets' save_to_disk"})
    split: str = field(default="train", metadata={"help": "dataset split (hub datasets and folders)"})
    text_column: str | None = field(default=None, metadata={
        "help": "column holding the documents (default: 'text', else the only string column)"})
    context_size: int = field(default=256, metadata={
        "help": "tokens per context window (for a BERT including its [CLS] and [SEP])"})
    prepend_bos: bool = field(default=False, metadata={
        "help": "start every window with the BOS token (the paper's harvest did not; BERT windows "
                "are always [CLS] … [SEP])"})
    skip_special: bool | None = field(default=None, metadata={
        "help": "leave BOS/EOS ([CLS]/[SEP]/[PAD] for a BERT) and other special-token positions "
                "out of the store (their norms are outliers); they still run through the model "
                "(default: on for encoders such as BERT, whose every window holds [CLS] and [SEP]; "
                "off for causal LMs)"})
    max_rows: int = field(default=PAPER_ROWS, metadata={
        "help": "stop after this many activation rows (0: the whole dataset); the default is "
                "the paper's 2,098,176"})
    shuffle_windows: bool = field(default=False, metadata={
        "help": "tokenize the whole dataset, shuffle its windows (by --seed) and take as many as "
                "--max-rows needs, so that the rows sample the whole corpus rather than its first "
                "documents"})
    seed: int = field(default=0, metadata={"help": "seed of --shuffle-windows"})
    batch_size: int = field(default=32, metadata={"help": "context windows per forward pass"})
    device: str | None = field(default=None, metadata={
        "help": "torch device (default: cuda when present, else cpu; under torchrun cuda:LOCAL_RANK)"})
    dtype: str = field(default="float16", metadata={
        "help": "storage dtype of the activations", "choices": list(STORAGE_DTYPES)})
    out: str | None = field(default=None, metadata={
        "help": "store folder (default: activations/<model>/<hook name>/)"})
    shard_rows: int = field(default=65536, metadata={"help": "activation rows per shard file"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace a store made with another configuration (or a finished one) in --out"})

    def validate(self) -> "HarvestConfig":
        for name in ("context_size", "batch_size", "shard_rows"):
            if getattr(self, name) < 1:
                raise SaeaseError(f"--{name.replace('_', '-')} {getattr(self, name)}: "
                                  "expected a positive integer")
        if self.context_size < 2 and self.prepend_bos:
            raise SaeaseError(f"--context-size {self.context_size}: expected at least 2 with --prepend-bos")
        if self.max_rows < 0:
            raise SaeaseError(f"--max-rows {self.max_rows}: expected 0 (whole dataset) or a positive count")
        if self.layer is not None and self.layer < 0:
            raise SaeaseError(f"--layer {self.layer}: expected a block index >= 0")
        full = _block_of(self.hook)
        if full is not None and self.layer is not None and full != self.layer:
            raise SaeaseError(f"--hook {self.hook!r} is in block {full}, not --layer {self.layer}; "
                              "drop --layer or make them agree")
        if self.dtype not in STORAGE_DTYPES:
            raise SaeaseError(f"--dtype {self.dtype!r}: choose from {', '.join(STORAGE_DTYPES)}")
        if not self.hook:
            raise SaeaseError(f"--hook is empty: use one of {', '.join(SHORT_HOOKS)} or a full hook name")
        return self

    @property
    def block(self) -> int:
        """The layer hooked: --layer, else the block of a full --hook name, else 2 (the paper's)."""
        if self.layer is not None:
            return self.layer
        full = _block_of(self.hook)
        return full if full is not None else DEFAULT_LAYER

    @property
    def hook_label(self) -> str:
        """Full hook name as far as it can be known without loading the model."""
        short = self.hook[5:] if self.hook.startswith("hook_") else self.hook
        return f"blocks.{self.block}.hook_{short}" if short in SHORT_HOOKS else self.hook

    def for_model(self, ref) -> "HarvestConfig":
        """This configuration with the model-dependent defaults filled in from `ref`
        (a saease.models.ModelRef): --skip-special on for encoders, off for causal LMs."""
        if self.skip_special is not None:
            return self
        return dataclasses.replace(self, skip_special=bool(ref.encoder))

    def out_path(self, ref=None) -> Path:
        """--out, else activations/<model>/<hook>: the model's store name (its hub id, the name
        its config records, or its folder's name plus a hash: saease.models.local_store_name)
        and the full hook name the model will be hooked at. `ref`: saease.models.ModelRef,
        needed only without --out."""
        if self.out:
            return Path(self.out).expanduser()
        if ref is None:
            raise ValueError("out_path needs the model's ModelRef (saease.models.identify) without --out")
        from saease.models import expected_hook_name

        return Path("activations") / ref.store_name / expected_hook_name(self.block, self.hook, ref.encoder)

    def key(self) -> dict:
        """What determines the store's rows: stored as the manifest's `config`; a rerun with the
        same key resumes, a different key is refused (unless --overwrite). Call it on
        `for_model(ref)`, which settles --skip-special."""
        key = {k: v for k, v in dataclasses.asdict(self).items() if k not in _NOT_IN_KEY}
        key["hook"] = self.hook_label
        key["layer"] = self.block
        for name in ("model", "dataset"):  # local paths: absolute, so a rerun from elsewhere matches
            p = Path(key[name]).expanduser()
            if p.exists():
                key[name] = str(p.resolve())
        key["harvest_format"] = 1
        return key


def _block_of(hook: str) -> int | None:
    m = re.match(r"blocks\.(\d+)\.", hook)
    return int(m.group(1)) if m else None
