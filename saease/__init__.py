"""saease: sparse dictionaries (VAEase, VAE and the SAE family) for LLM activations.

    from saease import Dictionary
    d = Dictionary.load(DIR)                       # or Dictionary.create("sae-topk", d_in=512, d_latent=4096, k=32)
    codes = d.encode(x)
    x_hat = d.decode(codes)
"""

from saease.dictionary import Dictionary, DictionaryConfig, kind_names, make_config
from saease.errors import SaeaseError
from saease.store import ActivationStore, StoreWriter

__version__ = "0.1.0"
__all__ = ["Dictionary", "DictionaryConfig", "kind_names", "make_config", "ActivationStore", "StoreWriter", "SaeaseError", "__version__"]
