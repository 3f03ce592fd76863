"""Reinforcement-learning agents as pure functions over ``flax.struct`` state: TD3 (RL Panning),
DQN (PuRL), and the replay buffer and training loops they share."""

import flax.struct


def static_field(default):
    """A ``flax.struct`` field kept out of the pytree: hashable config for jit, never traced."""
    return flax.struct.field(pytree_node=False, default=default)
