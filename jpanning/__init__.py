"""jpanning: pruning before training (Neural Network Panning) in JAX/Flax.

Importing it changes nothing in the process (no ``os.environ`` writes, no allocator settings).
The CPU tuning that ``run.py`` applies is an explicit call: :func:`jpanning.cpu.configure`,
before JAX's first computation.
"""

from jpanning import cpu
from jpanning.errors import JPanningError

__version__ = "0.1.0"

__all__ = ["JPanningError", "__version__", "cpu"]
