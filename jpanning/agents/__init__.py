"""Reinforcement-learning agents as pure functions over ``flax.struct`` state (RL Panning)."""
