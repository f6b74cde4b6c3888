"""Fig. 4: latent masking curves of the five kinds on one dataset.

Each dictionary's latents are ordered from least to most used over the held-out rows and zeroed
one at a time in that order (saease.metrics.masking_curve); RE is plotted against the latents
left. A sparse, well-ordered code keeps RE flat until only the needed latents remain.

    python benchmarks/fig4.py --dicts /tmp/saease-table2-linear     # folders written by table2_linear.py
    python benchmarks/fig4.py --dicts DIR --out docs/figures/fig4.png --max-rows 20000

`--dicts` is a folder holding one dictionary folder per kind (vaease/, vae/, sae-l1/, …), all
trained on the same store. Prints each kind's RE with all latents and the fewest latents that
keep RE within 2× of it, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


from saease.recipes.reproduce import LABELS, ORDER, heldout_rows, plot_masking_curves
from saease.dictionary import Dictionary
from saease.errors import SaeaseError
from saease.metrics import masking_curve


def needed(curve: dict, factor: float = 2.0) -> int:
    """Fewest latents left whose RE stays within `factor` × the RE with all latents."""
    full = curve["re"][0]
    ok = [left for left, re in zip(curve["left"], curve["re"]) if re <= factor * full + 1e-12]
    return min(ok)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dicts", required=True, help="folder with one dictionary folder per kind")
    p.add_argument("--out", default="docs/figures/fig4.png")
    p.add_argument("--max-rows", type=int, default=20_000, help="held-out rows used")
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    kinds = [k for k in ORDER if (Path(args.dicts) / k / "config.json").exists()]
    if not kinds:
        raise SaeaseError(f"{args.dicts}: no dictionary folders named {', '.join(ORDER)} inside")
    x = heldout_rows(Path(args.dicts) / kinds[0])[: args.max_rows]
    curves = {k: masking_curve(Dictionary.load(Path(args.dicts) / k), x) for k in kinds}
    source = Dictionary.load(Path(args.dicts) / kinds[0]).cfg.source
    title = args.title or f"Fig. 4: masking curves ({source.get('synthetic', source.get('model', 'data'))})"
    plot_masking_curves(curves, args.out, title)
    for k in kinds:
        print(f"{LABELS[k]:7s} RE all latents {curves[k]['re'][0]:.3g}; latents needed for ≤ 2× that: {needed(curves[k])}")
    summary = {"figure": "fig4", "out": args.out, "rows": len(x),
               "results": {k: {"re_full": c["re"][0], "latents_needed_2x": needed(c), "left": c["left"], "re": c["re"]}
                           for k, c in curves.items()}}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    sys.exit(main() and 0)
