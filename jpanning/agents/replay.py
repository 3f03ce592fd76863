"""A replay buffer of preallocated device arrays, shared by the agents (TD3, DQN).

Pure functions over a ``flax.struct`` ring buffer, so the buffer lives in a jitted or scanned
training carry. The transition's leaves fix the dtypes and shapes: TD3 stores float action
vectors, DQN integer action indices.
"""

from __future__ import annotations

import chex
import flax.struct
import jax
import jax.numpy as jnp

from jpanning.errors import JPanningError


@flax.struct.dataclass
class Transition:
    """One transition, or a batch of them (leading axis B).

    ``terminated`` is 1.0 where the episode ended in a terminal state (no bootstrapping);
    a truncated transition is stored with ``terminated = 0``.
    """

    obs: jax.Array  # [O]
    action: jax.Array  # [A] float (TD3) or [] int32 (DQN)
    reward: jax.Array  # []
    next_obs: jax.Array  # [O]
    terminated: jax.Array  # [], float32 0/1


@flax.struct.dataclass
class ReplayBuffer:
    """A ring buffer of preallocated arrays: ``data`` leaves are ``[capacity, ...]``.

    ``position`` is the slot the next transition goes to, ``size`` how many slots are filled.
    """

    data: Transition
    position: jax.Array
    size: jax.Array

    @property
    def capacity(self) -> int:
        return self.data.reward.shape[0]


def buffer_init(capacity: int, example: Transition) -> ReplayBuffer:
    """An empty buffer of ``capacity`` zeroed transitions shaped and typed like ``example``."""
    if int(capacity) < 1:
        raise JPanningError(f"buffer capacity must be >= 1, got {capacity}")
    data = jax.tree.map(
        lambda x: jnp.zeros((int(capacity), *jnp.shape(x)), jnp.asarray(x).dtype), example
    )
    return ReplayBuffer(data=data, position=jnp.int32(0), size=jnp.int32(0))


def buffer_add(buffer: ReplayBuffer, transition: Transition) -> ReplayBuffer:
    """Write one transition at ``position`` (overwriting the oldest once full).

    Args:
        buffer: the ring buffer.
        transition: unbatched leaves (``obs [O]``, ``reward []``, ...).

    Returns:
        The buffer with ``position`` advanced mod capacity and ``size`` capped at capacity.
    """
    data = jax.tree.map(
        lambda store, x: store.at[buffer.position].set(jnp.asarray(x, store.dtype)),
        buffer.data,
        transition,
    )
    capacity = buffer.capacity
    return ReplayBuffer(
        data=data,
        position=(buffer.position + 1) % capacity,
        size=jnp.minimum(buffer.size + 1, capacity),
    )


def buffer_sample(key: jax.Array, buffer: ReplayBuffer, batch_size: int) -> Transition:
    """Draw ``batch_size`` transitions uniformly, with replacement, from the filled slots.

    Returns:
        A :class:`Transition` with leaves ``[batch_size, ...]`` (meaningless if the buffer
        is empty).
    """
    index = jax.random.randint(key, (batch_size,), 0, jnp.maximum(buffer.size, 1))
    return jax.tree.map(lambda store: store[index], buffer.data)


def assert_batch(batch: Transition, *, action_rank: int, action_type, where: str) -> None:
    """Assert a batch of transitions at a loss's door (chex; trace-time, jit-safe).

    ``obs`` and ``next_obs`` ``[B, O]`` float, ``action`` of rank ``action_rank`` and dtype
    kind ``action_type`` (TD3: 2, float; DQN: 1, int), ``reward`` and ``terminated`` ``[B]``
    float, all sharing B. ``where`` names the function in the message.
    """
    fields = [batch.obs, batch.action, batch.reward, batch.next_obs, batch.terminated]
    message = f"{where}: batch (obs, action, reward, next_obs, terminated)"
    chex.assert_rank(fields, [2, action_rank, 1, 2, 1], custom_message=message)
    chex.assert_type(fields, [float, action_type, float, float, float], custom_message=message)
    chex.assert_equal_shape_prefix(fields, 1, custom_message=message)
    chex.assert_equal_shape([batch.obs, batch.next_obs], custom_message=f"{where}: obs, next_obs")
