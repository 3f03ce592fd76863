"""Pendulum-v1 (the classic swing-up task of Gym/Gymnasium) in the functional API the agents use.

A standard continuous-control task with a known scale, for testing and benchmarking agents
apart from Panning: a random policy scores about −1,200 per 200-step episode, a good one
−150 to −200. Dynamics as in Gymnasium's ``Pendulum-v1`` (``g = 10``, ``m = l = 1``,
``dt = 0.05``, torque in ``[−2, 2]``, speed clipped to ``±8``); the observation is
``(cos θ, sin θ, θ̇)`` and the reward ``−(θ² + 0.1 θ̇² + 0.001 u²)`` with θ wrapped to
``[−π, π)``. Episodes are truncated after ``max_steps`` and never terminate.

The agents act in ``[−1, 1]``; this environment scales the action by ``max_torque``.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class PendulumParams:
    max_speed: float = 8.0
    max_torque: float = 2.0
    dt: float = 0.05
    g: float = 10.0
    m: float = 1.0
    l: float = 1.0  # noqa: E741 (the pendulum's length)
    max_steps: int = flax.struct.field(pytree_node=False, default=200)


@flax.struct.dataclass
class PendulumState:
    theta: jax.Array
    theta_dot: jax.Array
    t: jax.Array


def _wrap(theta):
    return (theta + jnp.pi) % (2 * jnp.pi) - jnp.pi


class Pendulum:
    """``reset(key, params) -> (obs, state)``; ``step(key, state, action, params) ->
    (obs, state, reward, terminated, truncated, info)`` with ``action`` of shape ``[1]`` in
    ``[−1, 1]``."""

    obs_size = 3
    action_size = 1

    def default_params(self) -> PendulumParams:
        return PendulumParams()

    def observation(self, state: PendulumState) -> jax.Array:
        return jnp.stack([jnp.cos(state.theta), jnp.sin(state.theta), state.theta_dot])

    def reset(self, key, params: PendulumParams):
        k_theta, k_dot = jax.random.split(key)
        state = PendulumState(
            theta=jax.random.uniform(k_theta, (), minval=-jnp.pi, maxval=jnp.pi),
            theta_dot=jax.random.uniform(k_dot, (), minval=-1.0, maxval=1.0),
            t=jnp.int32(0),
        )
        return self.observation(state), state

    def step(self, key, state: PendulumState, action, params: PendulumParams):
        u = jnp.clip(jnp.reshape(action, ())[()], -1.0, 1.0) * params.max_torque
        cost = _wrap(state.theta) ** 2 + 0.1 * state.theta_dot**2 + 0.001 * u**2
        accel = (
            3.0 * params.g / (2.0 * params.l) * jnp.sin(state.theta)
            + 3.0 / (params.m * params.l**2) * u
        )
        theta_dot = jnp.clip(
            state.theta_dot + accel * params.dt, -params.max_speed, params.max_speed
        )
        new = PendulumState(
            theta=state.theta + theta_dot * params.dt, theta_dot=theta_dot, t=state.t + 1
        )
        truncated = new.t >= params.max_steps
        return self.observation(new), new, -cost, jnp.bool_(False), truncated, {}
