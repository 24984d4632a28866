"""charlm core: vocabulary, the three model families, checkpoints and sampling.

This package is the leaf of the project: it imports only torch, safetensors and
numpy, and both `training` and `service` build on it.
"""

__version__ = "0.1.0"
