"""saease: sparse dictionaries (VAEase, VAE, SAE-ℓ1, SAE-log, SAE-TopK) for LLM activations.

    from saease import Dictionary
    d = Dictionary.load(DIR)
    codes = d.encode(x)
    x_hat = d.decode(codes)
"""

from saease.dictionary import Dictionary, DictionaryConfig
from saease.errors import SaeaseError
from saease.store import ActivationStore, StoreWriter

__version__ = "0.1.0"
__all__ = ["Dictionary", "DictionaryConfig", "ActivationStore", "StoreWriter", "SaeaseError", "__version__"]
