"""Datasets in, context windows out.

`load_documents` opens a hub dataset or a local file/folder as a `datasets.Dataset` and picks
the text column; `make_windows` tokenizes the documents the way the paper's harvest did
(TransformerLens `tokenize_and_concatenate`): every document tokenized on its own without
special tokens, documents joined with one EOS token, the stream cut into `context_size`
windows (`context_size - 1` tokens after a BOS with `prepend_bos`), the incomplete tail dropped.
Unlike `tokenize_and_concatenate` the stream runs over the whole dataset (it does not restart
every 1,000 documents), and empty documents are skipped.

Encoders (BERT) get windows the BERT way (`window_frame`): documents joined with [SEP], every
window `[CLS]` + `context_size - 2` tokens + `[SEP]`, as BERT saw its inputs in pretraining.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from saease.errors import SaeaseError

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv",
                 ".txt": "text"}
_HUB_TIMEOUT_S = 5.0
_DOCS_PER_CALL = 1000


# ---------------------------------------------------------------------------------------------
# loading


def load_documents(dataset: str, split: str = "train", text_column: str | None = None):
    """(datasets.Dataset, text column). Local paths are tried first, then the hub."""
    path = Path(dataset).expanduser()
    if path.is_file():
        ds = _load_file(path)
    elif path.is_dir():
        ds = _load_folder(path, split)
    elif dataset.startswith((".", "/", "~")) or path.suffix.lower() in FILE_BUILDERS \
            or dataset.count("/") > 1:
        raise SaeaseError(f"--dataset {dataset!r}: no such file or folder (expected a hub id, or a local "
                          f"{'/'.join(sorted(set(FILE_BUILDERS)))} file or folder)")
    else:
        ds = _load_hub(dataset, split)
    return ds, pick_text_column(ds, dataset, text_column)


def pick_text_column(ds, name: str, text_column: str | None) -> str:
    columns = list(ds.column_names)
    found = ", ".join(columns) or "none"
    if text_column is not None:
        if text_column not in columns:
            raise SaeaseError(f"--text-column {text_column!r} is not in dataset {name!r}; columns found: {found}")
        col = text_column
    else:
        strings = [c for c in columns if _is_string(ds.features[c])]
        if "text" in strings:
            col = "text"
        elif len(strings) == 1:
            col = strings[0]
        else:
            what = "no string column" if not strings else "several string columns"
            raise SaeaseError(f"dataset {name!r} has {what} and none named 'text'; pass --text-column "
                              f"(columns found: {found})")
    if not _is_string(ds.features[col]):
        raise SaeaseError(f"--text-column {col!r} of dataset {name!r} holds {ds.features[col]}, not text; "
                          f"columns found: {found}")
    if len(ds) == 0:
        raise SaeaseError(f"dataset {name!r} is empty (0 rows; columns found: {found}); "
                          "pass a dataset with documents")
    return col


def _is_string(feature) -> bool:
    return getattr(feature, "dtype", None) in ("string", "large_string")


def _load_file(path: Path):
    import datasets

    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise SaeaseError(f"--dataset {str(path)!r}: unsupported file type {path.suffix or '(none)'}; "
                          f"expected one of {', '.join(sorted(FILE_BUILDERS))} or a folder")
    if path.stat().st_size == 0:
        raise SaeaseError(f"--dataset {str(path)!r} is empty (0 bytes; columns found: none); "
                          "pass a file with documents")
    kwargs = {"sample_by": "document"} if builder == "text" else {}
    try:
        with _quiet():
            return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as err:  # malformed files raise many different types
        if "corresponds to no data" in str(err):  # datasets' way of saying: no rows
            raise SaeaseError(f"--dataset {str(path)!r} is empty (0 rows; columns found: "
                              f"{', '.join(_columns_of(path, builder)) or 'none'}); "
                              "pass a file with documents") from None
        raise SaeaseError(f"--dataset {str(path)!r}: cannot read it as {builder} ({_one_line(err)})") from None


def _columns_of(path: Path, builder: str) -> list[str]:
    """Column names of a file that has no rows, where the format keeps them."""
    try:
        if builder == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(str(path)).names)
        if builder == "csv":
            import csv

            with open(path, newline="") as f:
                return next(csv.reader(f), [])
    except Exception:  # noqa: BLE001 - only for the message
        pass
    return []


def _load_folder(path: Path, split: str):
    import datasets

    try:
        with _quiet():
            if (path / "dataset_dict.json").is_file():
                dd = datasets.load_from_disk(str(path))
                if split not in dd:
                    raise SaeaseError(f"--split {split!r} is not in dataset {str(path)!r}; "
                                      f"splits found: {', '.join(dd)}")
                return dd[split]
            if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
                return datasets.load_from_disk(str(path))
            kinds = {FILE_BUILDERS[f.suffix.lower()] for f in path.rglob("*")
                     if f.is_file() and f.suffix.lower() in FILE_BUILDERS and not f.name.startswith(".")}
            if not kinds:
                raise SaeaseError(f"--dataset {str(path)!r}: the folder has no "
                                  f"{'/'.join(sorted(FILE_BUILDERS))} files and is not a saved dataset")
            if len(kinds) > 1:
                raise SaeaseError(f"--dataset {str(path)!r}: the folder mixes file types "
                                  f"({', '.join(sorted(kinds))}); keep one kind")
            (builder,) = kinds
            kwargs = {"sample_by": "document"} if builder == "text" else {}
            return datasets.load_dataset(builder, data_dir=str(path), split=split, **kwargs)
    except SaeaseError:
        raise
    except Exception as err:
        raise SaeaseError(f"--dataset {str(path)!r} (split {split!r}): cannot load it ({_one_line(err)})") from None


def _load_hub(name: str, split: str):
    """A hub dataset; fails within seconds when the hub cannot be reached and nothing is cached."""
    hint = "pass a local file or folder with --dataset (jsonl, parquet, txt, csv or a saved dataset)"
    if not _offline():
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        try:
            HfApi().dataset_info(name, timeout=_HUB_TIMEOUT_S)
            reachable = True
        except (RepositoryNotFoundError, GatedRepoError) as err:
            raise SaeaseError(f"dataset {name!r} is not on the hub or needs access rights "
                              f"({type(err).__name__}); {hint}") from None
        except Exception:
            reachable = False
        if not reachable:  # use the cached copy, if any, without the hub's retry loop
            with _forced_offline():
                return _hub_call(name, split, hint, "not in the local cache and the hub is unreachable")
    return _hub_call(name, split, hint, "not in the local cache and the hub is offline (HF_HUB_OFFLINE)")


def _hub_call(name: str, split: str, hint: str, why_unreachable: str):
    import datasets

    try:
        with _quiet():
            return datasets.load_dataset(name, split=split)
    except ConnectionError:
        raise SaeaseError(f"dataset {name!r}: {why_unreachable}; {hint}") from None
    except ValueError as err:
        if "split" in str(err).lower():
            raise SaeaseError(f"--split {split!r} of dataset {name!r}: {_one_line(err)}") from None
        raise SaeaseError(f"dataset {name!r}: {_one_line(err)}; {hint}") from None
    except Exception as err:
        raise SaeaseError(f"dataset {name!r}: cannot load it ({type(err).__name__}: {_one_line(err)}); "
                          f"{hint}") from None


def _offline() -> bool:
    import datasets

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("HF_DATASETS_OFFLINE"))
    return bool(datasets.config.HF_HUB_OFFLINE) or any(
        (f or "").strip().lower() in {"1", "true", "yes", "on"} for f in flags)


class _forced_offline:
    """Make `datasets`/`huggingface_hub` use only the local cache for the duration."""

    def __enter__(self):
        import datasets
        import huggingface_hub.constants as constants

        self.saved = (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE)
        datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True

    def __exit__(self, *exc):
        import datasets
        import huggingface_hub.constants as constants

        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = self.saved


class _quiet:
    """Silence datasets' progress bars and info logs while loading."""

    def __enter__(self):
        import datasets

        self.bars = datasets.utils.are_progress_bars_disabled()
        self.level = datasets.logging.get_verbosity()
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()

    def __exit__(self, *exc):
        import datasets

        if not self.bars:
            datasets.enable_progress_bars()
        datasets.logging.set_verbosity(self.level)


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


# ---------------------------------------------------------------------------------------------
# tokenization


def special_ids(tokenizer, encoder: bool = False) -> list[int]:
    """Token ids whose positions `--skip-special` leaves out of the store.

    Causal LMs: every special token, BOS/EOS/PAD/UNK included (byte-level BPE never emits UNK
    for text; Pythia's UNK is its EOS). Encoders (WordPiece): [CLS]/[SEP]/[PAD]/[MASK] and any
    other special token, but not [UNK], which stands for a real word of the text.
    """
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    names = ("cls_token_id", "sep_token_id", "pad_token_id", "mask_token_id") if encoder else \
        ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")
    ids |= {int(t) for t in (getattr(tokenizer, n, None) for n in names) if t is not None}
    if encoder:
        ids.discard(getattr(tokenizer, "unk_token_id", None))
    return sorted(ids)


def window_frame(tokenizer, *, encoder: bool = False, prepend_bos: bool = False) -> tuple[int, list[int], list[int]]:
    """(token joining documents, tokens opening every window, tokens closing it).

    Causal LMs: EOS joins; BOS opens with `prepend_bos`; nothing closes.
    Encoders (BERT): [SEP] joins, [CLS] opens, [SEP] closes.
    """
    if encoder:
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        if cls is None or sep is None:
            raise SaeaseError("the tokenizer of this encoder has no [CLS]/[SEP] token to frame windows with")
        return sep, [cls], [sep]
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    if eos is None:
        raise SaeaseError("the tokenizer of this model has no EOS token to join documents with")
    if prepend_bos and bos is None:
        raise SaeaseError("--prepend-bos: the tokenizer of this model has no BOS token")
    return eos, ([bos] if prepend_bos else []), []


def keep_mask(windows: torch.Tensor, skip: list[int] | None) -> torch.Tensor | None:
    """Positions stored: all (None), or those whose token is not in `skip`."""
    if not skip:
        return None
    return ~torch.isin(windows, torch.tensor(skip, dtype=windows.dtype))


def make_windows(ds, column: str, tokenizer, *, context_size: int, prepend_bos: bool = False,
                 encoder: bool = False, skip_ids: list[int] | None = None, max_rows: int = 0,
                 progress: bool = False, name: str = "dataset",
                 shuffle_seed: int | None = None) -> torch.Tensor:
    """Token windows [n, context_size] (int64), just enough of them for `max_rows` stored rows
    (0: all the windows the dataset makes). `encoder`: BERT framing (see `window_frame`).

    By default these are the dataset's first windows and tokenizing stops there. With
    `shuffle_seed`, the whole dataset is tokenized, its windows put in a random order drawn from
    torch.Generator().manual_seed(shuffle_seed), and the first of those taken: a sample of
    windows from across the corpus, the same for the same seed."""
    from tqdm.auto import tqdm

    joiner, head, tail = window_frame(tokenizer, encoder=encoder, prepend_bos=prepend_bos)
    body = context_size - len(head) - len(tail)
    if body < 1:
        raise SaeaseError(f"--context-size {context_size}: expected at least {len(head) + len(tail) + 1} "
                          f"(the window holds {len(head) + len(tail)} framing tokens)")
    skip = torch.tensor(sorted(skip_ids or []), dtype=torch.int64)
    pending: list[np.ndarray] = []  # tokens not yet in a window
    n_pending = 0
    windows: list[torch.Tensor] = []
    rows = 0
    first = True
    done = False
    bar = tqdm(total=len(ds), desc="tokenize", unit="doc", disable=not progress, leave=False)
    try:
        for start in range(0, len(ds), _DOCS_PER_CALL):
            texts = [t for t in ds[start:start + _DOCS_PER_CALL][column] if t]
            bar.update(min(_DOCS_PER_CALL, len(ds) - start))
            if not texts:
                continue
            encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
            for ids in encoded:
                if not first:
                    pending.append(np.array([joiner], dtype=np.int64))
                    n_pending += 1
                first = False
                pending.append(np.asarray(ids, dtype=np.int64))
                n_pending += len(ids)
            if n_pending < body:
                continue
            stream = np.concatenate(pending)
            n_win = len(stream) // body
            block = torch.from_numpy(stream[: n_win * body].copy()).view(n_win, body)
            pending, n_pending = [stream[n_win * body:]], len(stream) - n_win * body
            if head or tail:
                block = torch.cat([torch.tensor(head, dtype=torch.int64).expand(n_win, -1), block,
                                   torch.tensor(tail, dtype=torch.int64).expand(n_win, -1)], dim=1)
            if max_rows and shuffle_seed is None:
                block, rows, done = _enough(block, skip, max_rows, rows)
            windows.append(block)
            if done:
                break
    finally:
        bar.close()
    if not windows:
        raise SaeaseError(f"dataset {name!r} has fewer than {body} tokens of text in column {column!r}, "
                          f"not one --context-size {context_size} window; pass more text or a smaller "
                          "--context-size")
    windows = torch.cat(windows)
    if shuffle_seed is not None:
        order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(int(shuffle_seed)))
        windows = windows[order]
        if max_rows:
            windows = _enough(windows, skip, max_rows, 0)[0]
    return windows


def _enough(block: torch.Tensor, skip: torch.Tensor, max_rows: int, rows: int) -> tuple[torch.Tensor, int, bool]:
    """The first windows of `block` that bring the `rows` stored so far to `max_rows` (all of
    them if they do not): (windows, rows after them, whether max_rows is reached)."""
    per_window = (block.shape[1] - torch.isin(block, skip).sum(1)) if len(skip) else \
        torch.full((len(block),), block.shape[1])
    cum = rows + per_window.cumsum(0)
    done = bool(cum[-1] >= max_rows)
    if done:
        block = block[:int(torch.searchsorted(cum, torch.tensor(max_rows))) + 1]
    return block, int(cum[len(block) - 1]), done
