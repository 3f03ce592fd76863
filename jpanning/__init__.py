"""jpanning: pruning before training (Neural Network Panning) in JAX/Flax."""

from jpanning import cpu
from jpanning.errors import JPanningError

# Before JAX starts: XLA:CPU's multi-threaded convolutions for every model, scorer and jit in
# this process (JPANNING_CPU_FAST=0 opts out; see jpanning.cpu). GPUs and TPUs are unaffected.
cpu.configure()
# Where JAX will run on the CPU: freed memory stays in the process for XLA's next execution
# instead of being unmapped and page-faulted back in (JPANNING_CPU_FAST=0 opts out too).
cpu.configure_allocator()

__version__ = "0.1.0"

__all__ = ["JPanningError", "__version__"]
