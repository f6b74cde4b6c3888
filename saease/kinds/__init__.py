"""The built-in dictionary kinds, one module each; importing this package registers them.

A new kind is one new module here (its config, encode, loss; see saease/dictionary.py) plus
its import below. Nothing else in saease names a kind.
"""

from saease.kinds import (  # noqa: F401  (each module registers its kind)
    vaease,
    vae,
    sae_l1,
    sae_log,
    sae_topk,
    sae_batchtopk,
    sae_jumprelu,
    sae_gated,
    sae_matryoshka,
)
