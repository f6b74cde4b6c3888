"""Masking curves on disk: one long-format CSV and one PNG overlaying every dictionary (Fig. 4)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from saease.store import atomic_write_bytes


def write_masking_csv(curves: list[tuple[str, str, dict]], path: Path) -> None:
    """`curves`: (label, kind, MaskingCurve.result()). Columns: dictionary, kind, left, masked,
    latent (the one zeroed at that step, empty for the first row), re."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["dictionary", "kind", "left", "masked", "latent", "re"])
    for label, kind, curve in curves:
        for step, (left, re) in enumerate(zip(curve["left"], curve["re"])):
            latent = curve["order"][step - 1] if step > 0 else ""
            out.writerow([label, kind, left, step, latent, f"{re:.8g}"])
    atomic_write_bytes(path, buf.getvalue().encode())


def plot_masking(curves: list[tuple[str, str, dict]], path: Path, title: str = "") -> None:
    """RE against the number of latents left, one line per dictionary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for label, kind, curve in curves:
        ax.plot(curve["left"], curve["re"], label=f"{label} ({kind})", linewidth=1.6)
    ax.set_xlabel("latents left (least used masked first)")
    ax.set_ylabel("reconstruction error  E‖x − x̂‖²")
    ax.set_title(title or "latent masking curve")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
