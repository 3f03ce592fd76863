"""The two ways to drive an agent's ``(init, step)`` pair: one ``lax.scan``, or a host loop.

Every agent here (TD3, DQN) is written as ``init(key, env_params) -> carry`` and
``step(carry, t, loop_key, env_params) -> (carry, metrics)``, environment step ``t`` taking its
randomness from ``fold_in(loop_key, t)``. :func:`scanned` runs all steps as one program (vmap it
over seeds); :func:`host_loop` runs the same steps as jitted calls from Python, for progress
reporting and for environments whose convolutions XLA:CPU runs slowly inside a loop body
(``lax.conv_general_dilated``'s gradients; not jpanning's models, see ``jpanning.cpu``). With the
same key both give the same result up to floating-point rounding. :func:`interact` is the part
of a step every agent shares: step the environment, store the transition, reset on episode end.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jpanning import checkpoint as checkpoint_lib
from jpanning.agents import replay
from jpanning.errors import JPanningError
from jpanning.resumable import Resumable


@flax.struct.dataclass
class TrainCarry:
    """The carry of an agent's training loop: the agent, its replay buffer, the observation
    it acts on next, the environment's state and the running return of the episode."""

    agent: Any
    buffer: replay.ReplayBuffer
    obs: jax.Array
    env_state: Any
    episode_return: jax.Array


def interact(env, env_params, carry: TrainCarry, action, k_step, k_reset):
    """Step the environment with ``action``, store the transition, reset on episode end.

    Only ``terminated`` stops bootstrapping: a truncated transition is stored with
    ``terminated = 0``. The environment must not reset itself; one with a ``reset_after(key,
    state, params)`` method starts each next episode from the last state (``reset`` starts
    the first).

    Returns:
        ``(carry, metrics)``: the carry with the new buffer, observation, environment state
        and running return (the agent unchanged); metrics ``obs`` (what was acted on),
        ``action``, ``reward``, ``terminated``, ``truncated``, ``done`` and
        ``episode_return`` (the return including this step), plus the environment's ``info``.
    """
    next_obs, next_env_state, reward, terminated, truncated, info = env.step(
        k_step, carry.env_state, action, env_params
    )
    next_obs = jnp.asarray(next_obs, jnp.float32)
    reward = jnp.asarray(reward, jnp.float32)
    terminated, truncated = jnp.asarray(terminated, bool), jnp.asarray(truncated, bool)
    buffer = replay.buffer_add(
        carry.buffer,
        replay.Transition(carry.obs, action, reward, next_obs, terminated.astype(jnp.float32)),
    )
    done = terminated | truncated

    def start_next(_):
        # An environment whose state outlives episodes (the Panning environment's
        # normalisation ranges) starts the next one from the last state.
        if hasattr(env, "reset_after"):
            obs, state = env.reset_after(k_reset, next_env_state, env_params)
        else:
            obs, state = env.reset(k_reset, env_params)
        like = lambda a, b: jnp.asarray(a, jnp.result_type(b))  # weak types as step's
        return jnp.asarray(obs, jnp.float32), jax.tree.map(like, state, next_env_state)

    # lax.cond: a reset can cost as much as a step (fresh scoring batches); under vmap both
    # branches run, as a select would.
    obs, env_state = jax.lax.cond(done, start_next, lambda _: (next_obs, next_env_state), None)
    episode_return = carry.episode_return + reward
    new_carry = TrainCarry(
        agent=carry.agent,
        buffer=buffer,
        obs=obs,
        env_state=env_state,
        episode_return=jnp.where(done, 0.0, episode_return),
    )
    metrics = {
        "obs": carry.obs,
        "action": action,
        "reward": reward,
        "terminated": terminated,
        "truncated": truncated,
        "done": done,
        "episode_return": episode_return,
        "info": info,
    }
    return new_carry, metrics


def episode_returns(metrics) -> tuple[np.ndarray, np.ndarray]:
    """``(end_steps, returns)`` of the completed episodes in training metrics (1-based)."""
    done = np.asarray(metrics["done"], bool)
    return np.flatnonzero(done) + 1, np.asarray(metrics["episode_return"])[done]


Init = Callable[[jax.Array, Any], Any]
Step = Callable[[Any, jax.Array, jax.Array, Any], tuple[Any, dict]]


def scanned(init: Init, step: Step, env_params, total_steps: int):
    """A pure ``train(key) -> (agent, metrics)``: ``total_steps`` steps in one ``lax.scan``.

    ``agent`` is the final carry's (:class:`TrainCarry`); metrics come back stacked,
    ``[total_steps, ...]``.
    """

    def train(key: jax.Array):
        k_init, k_loop = jax.random.split(key)
        carry = init(k_init, env_params)
        carry, metrics = jax.lax.scan(
            lambda c, t: step(c, t, k_loop, env_params), carry, jnp.arange(total_steps)
        )
        return carry.agent, metrics

    return train


def host_loop(
    init: Init,
    step: Step,
    key: jax.Array,
    total_steps: int,
    env_params_at: Callable[[int], Any],
    *,
    steps_per_call: int = 1,
    callback: Callable[[int, dict], None] | None = None,
    checkpoints=None,
    stop: Callable[[], str | None] = checkpoint_lib.never,
    watch: Callable[[int, Any], None] | None = None,
):
    """Run :func:`scanned`'s steps as one jitted call per ``steps_per_call`` steps.

    Args:
        init, step: the agent's pair (module docstring).
        key: PRNG key, split as :func:`scanned` splits it.
        total_steps: environment steps.
        env_params_at: ``env_params_at(t)`` gives the params for the call starting at step
            ``t`` (same pytree structure and shapes every call).
        steps_per_call: environment steps per jitted call (a ``lax.scan`` when > 1).
        callback: optional ``callback(t_end, metrics)`` after each call, metrics as numpy
            arrays ``[n, ...]``, ``t_end`` the steps done so far.
        checkpoints: a :class:`jpanning.checkpoint.Checkpoints`: the loop continues from its
            newest checkpoint (the whole carry: agent, replay buffer, environment state,
            observation; and the metrics so far) and writes one every ``checkpoints.every``
            steps and on a stop request. A resumed loop ends where an
            uninterrupted one does.
        stop: polled after every call but the last; a signal name makes the loop write a
            checkpoint and raise :class:`jpanning.checkpoint.Interrupted`
            (:class:`jpanning.resumable.Resumable` does both).
        watch: optional ``watch(t_end, carry)`` after each call, with the whole carry (agent,
            replay buffer, environment state). The next call reuses the carry's buffers, so
            it must copy what it keeps.

    Returns:
        ``(agent, metrics)`` like ``scanned``'s ``train(key)``, metrics as numpy arrays.
    """
    if int(steps_per_call) < 1:
        raise JPanningError(f"steps_per_call must be >= 1, got {steps_per_call}")

    @functools.partial(jax.jit, static_argnums=3, donate_argnums=0)
    def run_steps(carry, t0, loop_key, n, env_params):
        if n == 1:
            carry, metrics = step(carry, t0, loop_key, env_params)
            return carry, jax.tree.map(lambda x: x[None], metrics)
        return jax.lax.scan(
            lambda c, t: step(c, t, loop_key, env_params), carry, t0 + jnp.arange(n)
        )

    k_init, k_loop = jax.random.split(key)
    carry = jax.jit(init)(k_init, env_params_at(0))
    chunks = []
    t = 0
    run = {"key": np.asarray(jax.random.key_data(key)).tolist(), "total_steps": total_steps}
    loop = Resumable(checkpoints, stop, unit="agent step")
    restored = loop.restore(carry, extra=True)
    if restored is not None:
        t, carry, meta, done = restored
        if meta.get("key") != run["key"] or meta.get("total_steps") != total_steps:
            raise loop.refuse("belongs to another run (seed or number of steps)")
        loop.resumed(t)
        chunks.append(done)
        if callback is not None:
            callback(t, done)

    def checkpoint() -> None:
        if checkpoints is not None:
            loop.save(t, carry, run, jax.tree.map(lambda *xs: np.concatenate(xs), *chunks))

    while t < total_steps:
        n = min(int(steps_per_call), total_steps - t)
        carry, metrics = run_steps(carry, jnp.int32(t), k_loop, n, env_params_at(t))
        metrics = jax.tree.map(np.asarray, metrics)
        chunks.append(metrics)
        t_before, t = t, t + n
        if callback is not None:
            callback(t, metrics)
        if watch is not None:
            watch(t, carry)
        loop.after(t_before, t, checkpoint, last=t >= total_steps)
    if not chunks:
        empty = jax.eval_shape(lambda c: step(c, 0, k_loop, env_params_at(0))[1], carry)
        return carry.agent, jax.tree.map(lambda x: np.zeros((0, *x.shape), x.dtype), empty)
    return carry.agent, jax.tree.map(lambda *xs: np.concatenate(xs), *chunks)
