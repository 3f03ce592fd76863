"""DQN (Mnih et al. 2015) with optional double Q-learning (van Hasselt et al. 2016), as pure
functions over ``flax.struct`` state, for discrete actions (PuRL's agent).

A Q-network MLP, a target network copied every ``target_update_every`` environment steps
(``optax.periodic_update``), ε-greedy acting with ε falling linearly over the first
``exploration_fraction`` of training (``optax.linear_schedule``), a
replay buffer of device arrays (:mod:`jpanning.agents.replay`) and rlax's Q-learning or double
Q-learning TD errors under a Huber loss. Defaults follow PuRL (Gupta et al. 2020): γ 0.982,
buffer 400, target update every 15 steps, exploration over 70% of training, a 2-layer MLP.

The environment API is the one of :mod:`jpanning.agents.td3` (gymnax's, ``terminated`` and
``truncated`` apart) with an integer action in ``[0, num_actions)``. :func:`make_train` gives a
pure ``train(key)`` (one ``lax.scan``, vmappable over seeds); :func:`train_loop` runs the same
steps from the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
import rlax

from jpanning import checkpoint as checkpoint_lib
from jpanning.agents import loop, replay, static_field
from jpanning.errors import JPanningError

PyTree = Any


@flax.struct.dataclass
class DQNConfig:
    """DQN's settings (all static, hashable); defaults from PuRL where it states them.

    Attributes:
        hidden_sizes: widths of the Q-network's hidden layers (PuRL: a 2-layer MLP).
        lr: Adam learning rate.
        gamma: discount.
        buffer_size: replay capacity in transitions.
        batch_size: transitions per update.
        learning_starts: environment steps before the first update (and at least
            ``batch_size`` stored transitions).
        target_update_every: environment steps between copies of the online network into
            the target network.
        exploration_fraction: ε falls linearly from ``epsilon_start`` to ``epsilon_end`` over
            this fraction of ``total_steps``, then stays.
        epsilon_start, epsilon_end: the schedule's ends.
        double_q: double Q-learning's target (online argmax, target value) instead of max.
        huber_delta: the Huber loss's δ on the TD error.
        total_steps: environment steps of training (one update per step once learning).
    """

    hidden_sizes: tuple[int, ...] = static_field((64, 64))
    lr: float = static_field(1e-3)
    gamma: float = static_field(0.982)
    buffer_size: int = static_field(400)
    batch_size: int = static_field(32)
    learning_starts: int = static_field(32)
    target_update_every: int = static_field(15)
    exploration_fraction: float = static_field(0.7)
    epsilon_start: float = static_field(1.0)
    epsilon_end: float = static_field(0.05)
    double_q: bool = static_field(True)
    huber_delta: float = static_field(1.0)
    total_steps: int = static_field(1_000)


def validate_config(config: DQNConfig) -> DQNConfig:
    """Raise :class:`JPanningError` on settings DQN cannot run with; return ``config``."""
    for name in ("buffer_size", "batch_size", "target_update_every"):
        if int(getattr(config, name)) < 1:
            raise JPanningError(f"dqn {name} must be >= 1, got {getattr(config, name)}")
    for name in ("learning_starts", "total_steps"):
        if int(getattr(config, name)) < 0:
            raise JPanningError(f"dqn {name} must be >= 0, got {getattr(config, name)}")
    if config.batch_size > config.buffer_size:
        raise JPanningError(
            f"dqn batch_size ({config.batch_size}) must be <= buffer_size ({config.buffer_size})"
        )
    if not 0.0 <= config.gamma <= 1.0:
        raise JPanningError(f"dqn gamma must be in [0, 1], got {config.gamma}")
    if not 0.0 < config.exploration_fraction <= 1.0:
        raise JPanningError(
            f"dqn exploration_fraction must be in (0, 1], got {config.exploration_fraction}"
        )
    for name in ("epsilon_start", "epsilon_end"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            raise JPanningError(f"dqn {name} must be in [0, 1], got {getattr(config, name)}")
    if not config.lr > 0:
        raise JPanningError(f"dqn lr must be > 0, got {config.lr}")
    if any(int(h) < 1 for h in config.hidden_sizes):
        raise JPanningError(f"dqn hidden_sizes must be positive, got {config.hidden_sizes}")
    return config


class QNetwork(nn.Module):
    """``obs [..., O] -> Q [..., num_actions]``, ReLU MLP."""

    num_actions: int
    hidden_sizes: Sequence[int] = (64, 64)

    @nn.compact
    def __call__(self, obs):
        x = obs
        for i, width in enumerate(self.hidden_sizes):
            x = nn.relu(nn.Dense(width, name=f"hidden_{i}")(x))
        return nn.Dense(self.num_actions, name="out")(x)


def _network(config: DQNConfig, num_actions: int) -> QNetwork:
    return QNetwork(num_actions=num_actions, hidden_sizes=tuple(config.hidden_sizes))


def _num_actions(params: PyTree) -> int:
    return params["params"]["out"]["kernel"].shape[-1]


def q_values(params: PyTree, obs: jax.Array, config: DQNConfig, num_actions: int) -> jax.Array:
    """``Q(obs, ·)``: ``[..., O] -> [..., num_actions]``."""
    return _network(config, num_actions).apply(params, obs)


def epsilon_at(t, config: DQNConfig) -> jax.Array:
    """ε at environment step ``t``: linear from start to end over the exploration fraction."""
    steps = max(int(config.exploration_fraction * config.total_steps), 1)
    return optax.linear_schedule(config.epsilon_start, config.epsilon_end, steps)(t)


@flax.struct.dataclass
class AgentState:
    """The online and target networks, Adam's state and ``step`` (updates done)."""

    params: PyTree
    target_params: PyTree
    opt_state: PyTree
    step: jax.Array


def init_agent(key: jax.Array, config: DQNConfig, obs_size: int, num_actions: int) -> AgentState:
    """A fresh Q-network, its copy as the target, Adam's state, ``step = 0``."""
    params = _network(config, num_actions).init(key, jnp.zeros((obs_size,), jnp.float32))
    return AgentState(
        params=params,
        target_params=params,
        opt_state=optax.adam(config.lr).init(params),
        step=jnp.int32(0),
    )


def td_errors(
    params: PyTree, target_params: PyTree, batch: replay.Transition, config: DQNConfig
) -> jax.Array:
    """TD errors of a batch, ``[B]``: rlax's (double) Q-learning on unbatched inputs, vmapped.

    Q-learning: ``r + γ(1 − terminated) max_a Q'(s', a) − Q(s, a)``; double Q-learning picks
    the argmax with the online network and takes its value from the target network.

    Args:
        params, target_params: the online and target Q-networks.
        batch: transitions with ``obs``, ``next_obs`` ``[B, O]``, ``action`` ``[B]`` int,
            ``reward``, ``terminated`` ``[B]`` (asserted).
        config: γ, double Q-learning and the network sizes.
    """
    replay.assert_batch(batch, action_rank=1, action_type=int, where="dqn.td_errors")
    num_actions = _num_actions(params)
    q_tm1 = q_values(params, batch.obs, config, num_actions)
    q_t_value = q_values(target_params, batch.next_obs, config, num_actions)
    discount_t = config.gamma * (1.0 - batch.terminated)
    if config.double_q:
        q_t_selector = q_values(params, batch.next_obs, config, num_actions)
        return jax.vmap(rlax.double_q_learning)(
            q_tm1, batch.action, batch.reward, discount_t, q_t_value, q_t_selector
        )
    return jax.vmap(rlax.q_learning)(q_tm1, batch.action, batch.reward, discount_t, q_t_value)


def update(
    state: AgentState, batch: replay.Transition, config: DQNConfig
) -> tuple[AgentState, dict[str, jax.Array]]:
    """One gradient step on the mean Huber loss of the TD errors (targets held fixed).

    Args:
        state: the agent.
        batch: transitions as :func:`td_errors` takes them (asserted here, at the door).
        config: hyper-parameters.

    Returns:
        ``(state, metrics)`` with scalar ``loss`` and ``q`` (mean Q of the taken actions).
    """
    replay.assert_batch(batch, action_rank=1, action_type=int, where="dqn.update")

    def loss_fn(params):
        td = td_errors(params, state.target_params, batch, config)
        return jnp.mean(rlax.huber_loss(td, config.huber_delta))

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = optax.adam(config.lr).update(grads, state.opt_state)
    params = optax.apply_updates(state.params, updates)
    num_actions = _num_actions(params)
    q = jnp.take_along_axis(
        q_values(state.params, batch.obs, config, num_actions), batch.action[:, None], axis=-1
    )
    new = AgentState(
        params=params, target_params=state.target_params, opt_state=opt_state, step=state.step + 1
    )
    return new, {"loss": loss, "q": jnp.mean(q)}


def _obs_size(env, env_params, obs_size) -> int:
    if obs_size is not None:
        return int(obs_size)
    shape = jax.eval_shape(env.reset, jax.random.key(0), env_params)[0].shape
    if len(shape) != 1:
        raise JPanningError(f"observations must be 1-D vectors, got shape {shape}")
    return shape[0]


def make_step(env, config: DQNConfig, *, num_actions: int, obs_size: int):
    """DQN's ``(init, step)`` pair (see :mod:`jpanning.agents.loop`).

    Each step acts ε-greedily (ε from :func:`epsilon_at`; rlax's ``epsilon_greedy`` is
    deprecated in favour of distrax, which is not a dependency), steps
    the environment, stores the transition, resets on ``terminated | truncated`` (bootstrapping
    through truncations), updates once ``learning_starts`` steps are done and ``batch_size``
    transitions are stored, and copies the online network into the target every
    ``target_update_every`` steps.
    """
    validate_config(config)
    if int(num_actions) < 2:
        raise JPanningError(f"num_actions must be >= 2, got {num_actions}")

    def init(key, env_params) -> loop.TrainCarry:
        k_agent, k_reset = jax.random.split(key)
        obs, env_state = env.reset(k_reset, env_params)
        example = replay.Transition(
            obs=jnp.zeros((obs_size,), jnp.float32),
            action=jnp.int32(0),
            reward=jnp.float32(0),
            next_obs=jnp.zeros((obs_size,), jnp.float32),
            terminated=jnp.float32(0),
        )
        return loop.TrainCarry(
            agent=init_agent(k_agent, config, obs_size, num_actions),
            buffer=replay.buffer_init(config.buffer_size, example),
            obs=jnp.asarray(obs, jnp.float32),
            env_state=env_state,
            episode_return=jnp.float32(0),
        )

    def step(carry: loop.TrainCarry, t, loop_key, env_params):
        key = jax.random.fold_in(loop_key, t)
        k_act, k_step, k_reset, k_sample = jax.random.split(key, 4)
        agent = carry.agent
        epsilon = epsilon_at(t, config)
        k_explore, k_random = jax.random.split(k_act)
        greedy = jnp.argmax(q_values(agent.params, carry.obs, config, num_actions))
        random_action = jax.random.randint(k_random, (), 0, num_actions)
        explore = jax.random.uniform(k_explore) < epsilon
        action = jnp.where(explore, random_action, greedy).astype(jnp.int32)

        carry, metrics = loop.interact(env, env_params, carry, action, k_step, k_reset)
        can_update = (carry.buffer.size >= config.batch_size) & (t >= config.learning_starts)
        zero = jnp.zeros((), jnp.float32)
        agent, update_metrics = jax.lax.cond(
            can_update,
            lambda a: update(
                a, replay.buffer_sample(k_sample, carry.buffer, config.batch_size), config
            ),
            lambda a: (a, {"loss": zero, "q": zero}),
            agent,
        )
        agent = agent.replace(
            target_params=optax.periodic_update(
                agent.params, agent.target_params, t + 1, config.target_update_every
            )
        )
        metrics |= {"epsilon": jnp.asarray(epsilon, jnp.float32), "updated": can_update}
        return carry.replace(agent=agent), {**metrics, **update_metrics}

    return init, step


def make_train(env, env_params, config: DQNConfig, *, num_actions: int, obs_size=None):
    """A pure ``train(key) -> (agent_state, metrics)``: ``total_steps`` DQN steps, one scan.

    Metrics are ``[total_steps, ...]`` arrays: ``action``, ``reward``, ``done``,
    ``episode_return`` (running, so ``episode_return[done]`` are finished episodes), ``epsilon``,
    ``loss``, ``q``, the environment's ``info`` and more (see :func:`make_step`).
    """
    obs_size = _obs_size(env, env_params, obs_size)
    init, step = make_step(env, config, num_actions=num_actions, obs_size=obs_size)
    return loop.scanned(init, step, env_params, config.total_steps)


def train_loop(
    env,
    env_params,
    config: DQNConfig,
    key,
    *,
    num_actions: int,
    obs_size=None,
    callback=None,
    checkpoints=None,
    stop=checkpoint_lib.never,
):
    """The steps of :func:`make_train`'s ``train(key)``, one jitted call each, from the host.

    For environments whose step is a large computation (PuRL retrains a network in each);
    ``callback(t_end, metrics)`` runs after every step; ``checkpoints`` and ``stop`` as in
    :func:`jpanning.agents.loop.host_loop`. Returns
    ``(agent_state, metrics)`` with numpy metrics.
    """
    obs_size = _obs_size(env, env_params, obs_size)
    init, step = make_step(env, config, num_actions=num_actions, obs_size=obs_size)
    return loop.host_loop(
        init,
        step,
        key,
        config.total_steps,
        lambda t: env_params,
        callback=callback,
        checkpoints=checkpoints,
        stop=stop,
    )


def greedy_action(params: PyTree, obs: jax.Array, config: DQNConfig) -> jax.Array:
    """``argmax_a Q(obs, a)`` as int32 (``[...]`` for ``obs [..., O]``)."""
    num_actions = _num_actions(params)
    return jnp.argmax(q_values(params, obs, config, num_actions), axis=-1).astype(jnp.int32)
