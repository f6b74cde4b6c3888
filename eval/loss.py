"""Loss recovered: next-token cross-entropy with the dictionary spliced into the model.

Four runs of the model over the same token windows, differing only at the dictionary's hook:

    clean          the activation as it is
    spliced        replaced by the dictionary's reconstruction x̂ (saease.lens.splice)
    zero-ablated   replaced by zeros
    mean-ablated   replaced by its mean over every position of the evaluated windows

    fraction recovered = (CE_zero − CE_spliced) / (CE_zero − CE_clean)

1 means the reconstruction costs nothing in loss, 0 means it is as bad as deleting the
activation. Also reported: the same fraction against mean-ablation, and the KL divergence
KL(clean ‖ spliced) of the next-token distributions, averaged over every position.
"""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from saease.dictionary import Dictionary
from saease.errors import SaeaseError
from saease.models import run_to_hook


def pick_sequences(windows: Int[Tensor, "n_seq pos"], n: int, seed: int = 0) -> Tensor:
    """`n` windows chosen at random (seeded) from the store's contexts, in store order."""
    if n < 1:
        raise SaeaseError(f"--loss-seqs {n}: expected a positive number of sequences")
    if len(windows) == 0:
        raise SaeaseError("the store's contexts hold no token windows; loss recovered needs some")
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(windows), generator=gen)[:n].sort().values
    return windows[pick].long()


def next_token_ce(logits: Tensor, tokens: Tensor) -> Tensor:
    """Cross-entropy of each next token: [batch, pos − 1]."""
    logp = logits[:, :-1].log_softmax(-1)
    return -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)


@torch.no_grad()
def loss_recovered(model, dictionary: Dictionary, tokens: Int[Tensor, "n_seq pos"], hook: str, *,
                   batch_size: int = 8, progress: bool = False) -> dict:
    """CE clean / spliced / zero-ablated / mean-ablated, fractions recovered and KL(clean ‖ spliced)
    over `tokens` (windows of token ids), with the dictionary spliced at `hook`."""
    from saease.lens import splice

    if hook not in model.hook_dict:
        raise SaeaseError(f"hook {hook!r} is not in the model; the dictionary was trained elsewhere")
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise SaeaseError(f"token windows of shape {tuple(tokens.shape)}; expected [n_seq, ≥ 2 positions]")
    device = model.cfg.device
    batches = [tokens[s:s + batch_size].to(device) for s in range(0, len(tokens), batch_size)]
    bar = tqdm(total=5 * len(tokens), desc="loss recovered", unit="seq", disable=not progress, leave=False)

    # The mean activation at the hook over every evaluated position (for mean-ablation).
    total, count = 0.0, 0
    for toks in batches:
        act = run_to_hook(model, toks, hook).double()
        total = total + act.sum((0, 1))
        count += act.shape[0] * act.shape[1]
        bar.update(len(toks))
    mean_act = (total / count).float()

    def replace_with(value):
        return [(hook, lambda act, hook: value(act).to(act.dtype))]

    zero = replace_with(torch.zeros_like)
    mean = replace_with(lambda act: mean_act.expand_as(act))
    sums = {"clean": 0.0, "spliced": 0.0, "zero": 0.0, "mean": 0.0, "kl": 0.0}
    n_pred = n_pos = 0
    for toks in batches:
        clean = model(toks)
        with splice(model, dictionary, use_error_term=False, hook=hook):
            spliced = model(toks)
        zeroed = model.run_with_hooks(toks, fwd_hooks=zero)
        meaned = model.run_with_hooks(toks, fwd_hooks=mean)
        for name, logits in (("clean", clean), ("spliced", spliced), ("zero", zeroed), ("mean", meaned)):
            sums[name] += next_token_ce(logits.float(), toks).sum(dtype=torch.float64).item()
        p_log, q_log = clean.float().log_softmax(-1), spliced.float().log_softmax(-1)
        sums["kl"] += (p_log.exp() * (p_log - q_log)).sum(-1).sum(dtype=torch.float64).item()
        n_pred += toks.shape[0] * (toks.shape[1] - 1)
        n_pos += toks.numel()
        bar.update(4 * len(toks))
    bar.close()

    ce = {name: sums[name] / n_pred for name in ("clean", "spliced", "zero", "mean")}
    return {
        "ce_clean": ce["clean"], "ce_spliced": ce["spliced"], "ce_zero_ablated": ce["zero"],
        "ce_mean_ablated": ce["mean"],
        "loss_recovered": _fraction(ce["zero"], ce["spliced"], ce["clean"]),
        "loss_recovered_vs_mean": _fraction(ce["mean"], ce["spliced"], ce["clean"]),
        "kl_clean_spliced": sums["kl"] / n_pos,
        "loss_seqs": len(tokens), "loss_tokens": n_pred, "hook": hook,
    }


def _fraction(ablated: float, spliced: float, clean: float) -> float:
    gap = ablated - clean
    return (ablated - spliced) / gap if abs(gap) > 1e-12 else float("nan")
