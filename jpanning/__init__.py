"""jpanning: pruning before training (Neural Network Panning) in JAX/Flax."""

from jpanning.errors import JPanningError

__version__ = "0.1.0"

__all__ = ["JPanningError", "__version__"]
