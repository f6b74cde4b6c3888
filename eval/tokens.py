"""Token ids as the tokenizer writes text, one string per token.

`token_pieces(tokenizer, sequences)` decodes each token sequence with the tokenizer and splits
the text back into one piece per token, so that `"".join(pieces)` is exactly what
`tokenizer.decode` writes: WordPiece `##` continuations join their word, byte-level BPE `Ġ`
and SentencePiece `▁` become spaces, punctuation sits where the tokenizer's clean-up puts it.
The dashboard shows a context window as these pieces, so one token can be highlighted (or
shaded) inside readable text.

Each sequence is decoded after an *anchor* token (a plain word, "a"), whose text is then cut
off: a sequence taken from the middle of a text then renders as it does there (a window that
starts on `##ore` shows `ore`, one that starts on `▁the` shows ` the`). The fast path decodes
every distinct token once after the anchor and checks that the pieces add up to the decoded
sequence; where they do not (a UTF-8 character split over byte tokens, clean-up rules that span
tokens) the sequence is split by decoding its prefixes, which is exact by construction.
"""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def token_pieces(tokenizer, sequences: list[list[int]], progress: bool = False) -> list[list[str]]:
    """One string per token of each sequence; the strings of a sequence join to its decoded
    text (as if it followed a word: a leading space is kept). `tokenizer` None: `<id>` pieces."""
    if tokenizer is None:
        return [[(" " if k else "") + f"<{i}>" for k, i in enumerate(seq)] for seq in sequences]
    anchor = _anchor(tokenizer)
    anchor_text = _decode(tokenizer, [[anchor]])[0] if anchor is not None else ""
    prefix = [anchor] if anchor_text else []
    ids = sorted({i for seq in sequences for i in seq})
    single = dict(zip(ids, _after(tokenizer, prefix, anchor_text, [[i] for i in ids])))
    out = []
    chunk = 4096
    bar = tqdm(total=len(sequences), unit="window", desc="decoding contexts", leave=False,
               disable=not progress or len(sequences) < chunk)
    for s in range(0, len(sequences), chunk):
        batch = sequences[s:s + chunk]
        for seq, text in zip(batch, _after(tokenizer, prefix, anchor_text, batch)):
            fast = [single[i] for i in seq]
            if text is not None and None not in fast and "".join(fast) == text:
                out.append(fast)
            else:
                out.append(_by_prefixes(tokenizer, prefix, anchor_text, seq))
        bar.update(len(batch))
    bar.close()
    return out


def id_strings(tokenizer, ids: list[int]) -> dict[int, str]:
    """How each token reads after a word (` the`, `ore` for `##ore`): the token column of the
    index and of the logit tables."""
    return {i: pieces[0] for i, pieces in zip(ids, token_pieces(tokenizer, [[i] for i in ids]))}


def _anchor(tokenizer) -> int | None:
    try:
        ids = tokenizer.encode("a", add_special_tokens=False)
    except Exception:  # a tokenizer that cannot encode: decode without an anchor
        return None
    return ids[-1] if ids else None


def _decode(tokenizer, sequences: list[list[int]]) -> list[str]:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return tokenizer.batch_decode(sequences, skip_special_tokens=False)


def _after(tokenizer, prefix: list[int], anchor_text: str, sequences: list[list[int]]) -> list[str | None]:
    """The text each sequence adds after the anchor (None where the anchor's text changes)."""
    texts = _decode(tokenizer, [prefix + list(seq) for seq in sequences])
    return [t[len(anchor_text):] if t.startswith(anchor_text) else None for t in texts]


def _by_prefixes(tokenizer, prefix: list[int], anchor_text: str, seq: list[int]) -> list[str]:
    """Exact split: token k's piece is what decoding k + 1 tokens adds to decoding k tokens
    (measured against the whole text, so a character completed by a later byte token goes to
    that token and the pieces always join to the text)."""
    texts = _decode(tokenizer, [prefix + list(seq[:k]) for k in range(len(seq) + 1)])
    texts = [t[len(anchor_text):] if t.startswith(anchor_text) else t for t in texts]
    full = texts[-1]
    bounds, at = [0], 0
    for text in texts[1:-1]:
        at = max(at, len(os.path.commonprefix([text, full])))
        bounds.append(at)
    bounds.append(len(full))
    return [full[a:b] for a, b in zip(bounds, bounds[1:])]
