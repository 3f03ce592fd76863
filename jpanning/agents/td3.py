"""TD3 (Fujimoto, van Hoof, Meger 2018, "Addressing Function Approximation Error in
Actor-Critic Methods") as pure functions over ``flax.struct`` state.

Twin critics with the clipped double-Q target, target policy smoothing, and delayed actor and
target updates; the replay buffer is preallocated device arrays. :func:`make_train` returns a
pure ``train(key)`` whose whole loop (act, step, store, update) is one ``lax.scan``, so
``jax.jit(jax.vmap(train))(keys)`` trains several seeds at once::

    train = make_train(env, env_params, TD3Config(total_steps=50_000), action_size=3)
    agent_state, metrics = jax.jit(train)(jax.random.key(0))

:func:`train_loop` runs the same steps (same key, same result up to rounding) as one jitted
call per step, or per ``steps_per_call`` steps, from a host loop: for progress reporting, and
for environments whose convolutions XLA:CPU runs slowly inside a loop body (those built on
``lax.conv_general_dilated``; jpanning's models are not, see ``jpanning.cpu``).

The environment follows gymnax's functional API with ``terminated`` and ``truncated`` kept
apart (``jpanning.env.PanningEnv``): ``env.reset(key, params) -> (obs, state)`` and
``env.step(key, state, action, params) -> (obs, state, reward, terminated, truncated, info)``,
with ``obs`` a 1-D float vector and ``action`` in ``[action_low, action_high]^k``. It must not
reset itself: the loop resets after ``terminated | truncated`` and bootstraps through
truncations (only ``terminated`` stops bootstrapping).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import chex
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
import rlax

from jpanning import checkpoint as checkpoint_lib
from jpanning.agents import loop, replay, static_field
from jpanning.agents.replay import (  # noqa: F401 (buffer_add: part of td3's API)
    ReplayBuffer,
    Transition,
    buffer_add,
    buffer_sample,
)
from jpanning.errors import JPanningError

PyTree = Any


@flax.struct.dataclass
class TD3Config:
    """TD3's settings; defaults from the Panning authors' code (all static, hashable).

    Attributes:
        hidden_sizes: widths of the actor's and each critic's hidden layers.
        actor_lr, critic_lr: Adam learning rates.
        warmup_steps: environment steps with uniform random actions before the policy acts
            and before any update.
        batch_size: transitions per update.
        gamma: discount.
        tau: target soft-update rate, ``θ' ← τ θ + (1 − τ) θ'``.
        policy_noise, noise_clip: target policy smoothing, ``clip(σ ε, −c, c)``, in units of
            half the action range.
        policy_delay: the actor and the targets update once every this many critic updates.
        exploration_noise: Gaussian acting noise, in units of half the action range.
        buffer_size: replay capacity (transitions).
        total_steps: environment steps of :func:`make_train`'s ``train`` (one update each).
        action_low, action_high: action bounds, the same for every dimension.
        critic_loss: ``"mse"``, the authors' squared TD error, or ``"huber"``, a jpanning
            deviation (``rlax.huber_loss``, δ = 1): quadratic within one unit of the target,
            linear beyond, so one rare huge reward (RL Panning's collapse penalty, about 1,500
            times a median step) cannot dominate the critic's gradient
            (``benchmarks/results/critic_fit``).
        target_reward_floor: None (the authors'), or a floor on the reward inside the
            critic's target only, ``y = max(r, floor) + γ (1 − d) min Q'``: a jpanning
            deviation that clips RL Panning's collapse penalty (−174.5 once in the CPU search,
            1,500 times a median step) where it would dominate the critic, while the
            environment's reward, returns and metrics keep it.
        demo_steps: 0 (the authors': all of warm-up is uniform), or how many of the first
            ``warmup_steps`` act with a demonstrator (``make_step(demonstrator=...)``, e.g.
            RL Panning's fixed controllers) plus the exploration noise, in place of uniform
            actions: a jpanning option that puts the corners of the action cube, where the
            best fixed controllers sit, in the replay buffer before the first update.
    """

    hidden_sizes: tuple[int, ...] = static_field((256, 256))
    actor_lr: float = static_field(2e-4)
    critic_lr: float = static_field(2e-4)
    warmup_steps: int = static_field(2000)
    batch_size: int = static_field(256)
    gamma: float = static_field(0.99)
    tau: float = static_field(0.01)
    policy_noise: float = static_field(0.2)
    noise_clip: float = static_field(0.5)
    policy_delay: int = static_field(2)
    exploration_noise: float = static_field(0.1)
    buffer_size: int = static_field(100_000)
    total_steps: int = static_field(50_000)
    action_low: float = static_field(-1.0)
    action_high: float = static_field(1.0)
    critic_loss: str = static_field("mse")
    target_reward_floor: float | None = static_field(None)
    demo_steps: int = static_field(0)


CRITIC_LOSSES = ("mse", "huber")


def td_loss(error: jax.Array, kind: str) -> jax.Array:
    """Elementwise critic loss of TD errors: ``x²/2`` (``"mse"``) or Huber with δ = 1."""
    return rlax.huber_loss(error, 1.0) if kind == "huber" else rlax.l2_loss(error)


def validate_config(config: TD3Config) -> TD3Config:
    """Raise :class:`JPanningError` on settings TD3 cannot run with; return ``config``."""
    for name in ("warmup_steps", "total_steps", "demo_steps"):
        if int(getattr(config, name)) < 0:
            raise JPanningError(f"{name} must be >= 0, got {getattr(config, name)}")
    for name in ("batch_size", "buffer_size", "policy_delay"):
        if int(getattr(config, name)) < 1:
            raise JPanningError(f"{name} must be >= 1, got {getattr(config, name)}")
    if any(int(h) < 1 for h in config.hidden_sizes):
        raise JPanningError(f"hidden_sizes must be positive widths, got {config.hidden_sizes}")
    if config.batch_size > config.buffer_size:
        raise JPanningError(
            f"batch_size ({config.batch_size}) must be <= buffer_size ({config.buffer_size})"
        )
    if not 0.0 < config.tau <= 1.0:
        raise JPanningError(f"tau must be in (0, 1], got {config.tau}")
    if not 0.0 <= config.gamma <= 1.0:
        raise JPanningError(f"gamma must be in [0, 1], got {config.gamma}")
    for name in ("actor_lr", "critic_lr"):
        if not getattr(config, name) > 0:
            raise JPanningError(f"{name} must be > 0, got {getattr(config, name)}")
    for name in ("policy_noise", "noise_clip", "exploration_noise"):
        if not getattr(config, name) >= 0:
            raise JPanningError(f"{name} must be >= 0, got {getattr(config, name)}")
    if config.demo_steps > config.warmup_steps:
        raise JPanningError(
            f"demo_steps ({config.demo_steps}) must be <= warmup_steps ({config.warmup_steps})"
        )
    if config.critic_loss not in CRITIC_LOSSES:
        raise JPanningError(
            f"critic_loss {config.critic_loss!r} is not one of {', '.join(CRITIC_LOSSES)}"
        )
    if not config.action_low < config.action_high:
        raise JPanningError(
            f"action_low must be < action_high, got {config.action_low}, {config.action_high}"
        )
    return config


# -- networks -------------------------------------------------------------------------------


class Actor(nn.Module):
    """Deterministic policy MLP: ``obs [..., O] -> tanh output [..., A]`` in ``[-1, 1]``.

    Params are ``{'hidden_i': Dense, ..., 'out': Dense}``.
    """

    action_size: int
    hidden_sizes: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, obs):
        x = obs
        for i, width in enumerate(self.hidden_sizes):
            x = nn.relu(nn.Dense(width, name=f"hidden_{i}")(x))
        return jnp.tanh(nn.Dense(self.action_size, name="out")(x))


class QNetwork(nn.Module):
    """One critic MLP: ``(obs [..., O], action [..., A]) -> Q [...]``."""

    hidden_sizes: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, obs, action):
        x = jnp.concatenate([obs, action], axis=-1)
        for i, width in enumerate(self.hidden_sizes):
            x = nn.relu(nn.Dense(width, name=f"hidden_{i}")(x))
        return nn.Dense(1, name="out")(x)[..., 0]


class TwinCritic(nn.Module):
    """Two independent critics, one vmapped module: ``(obs, action) -> Q [2, ...]``.

    Params are ``{'q': QNetwork params with a leading axis of 2}``.
    """

    hidden_sizes: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, obs, action):
        twin = nn.vmap(
            QNetwork,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=2,
        )
        return twin(hidden_sizes=self.hidden_sizes, name="q")(obs, action)


def _actor(config: TD3Config, action_size: int) -> Actor:
    return Actor(action_size=action_size, hidden_sizes=tuple(config.hidden_sizes))


def _critic(config: TD3Config) -> TwinCritic:
    return TwinCritic(hidden_sizes=tuple(config.hidden_sizes))


def _half_range(config: TD3Config) -> float:
    return (config.action_high - config.action_low) / 2.0


def scale_action(tanh_action: jax.Array, config: TD3Config) -> jax.Array:
    """Map the actor's ``[-1, 1]`` output to ``[action_low, action_high]`` (same shape)."""
    return config.action_low + (tanh_action + 1.0) * _half_range(config)


def policy(actor_params: PyTree, obs: jax.Array, config: TD3Config, action_size: int):
    """The deterministic action ``μ(obs)`` within the bounds.

    Args:
        actor_params: the actor's params.
        obs: ``[..., O]``.
        config: for the network sizes and action bounds.
        action_size: A.

    Returns:
        ``[..., A]``.
    """
    return scale_action(_actor(config, action_size).apply(actor_params, obs), config)


# -- replay buffer (jpanning.agents.replay, with TD3's float actions) ------------------------


def buffer_init(capacity: int, obs_size: int, action_size: int) -> ReplayBuffer:
    """An empty buffer of ``capacity`` zeroed float32 transitions with ``action [A]``."""
    example = Transition(
        obs=jnp.zeros((obs_size,), jnp.float32),
        action=jnp.zeros((action_size,), jnp.float32),
        reward=jnp.zeros((), jnp.float32),
        next_obs=jnp.zeros((obs_size,), jnp.float32),
        terminated=jnp.zeros((), jnp.float32),
    )
    return replay.buffer_init(capacity, example)


# -- agent state and update -----------------------------------------------------------------


@flax.struct.dataclass
class AgentState:
    """Everything TD3 learns, plus ``step``, the number of updates done so far."""

    actor_params: PyTree
    critic_params: PyTree
    target_actor_params: PyTree
    target_critic_params: PyTree
    actor_opt_state: PyTree
    critic_opt_state: PyTree
    step: jax.Array


def _optimizers(config: TD3Config):
    return optax.adam(config.actor_lr), optax.adam(config.critic_lr)


def init_agent(key: jax.Array, config: TD3Config, obs_size: int, action_size: int) -> AgentState:
    """Fresh networks (targets equal to them), Adam states and ``step = 0``.

    Args:
        key: PRNG key.
        config: network sizes and learning rates.
        obs_size, action_size: O and A.
    """
    k_actor, k_critic = jax.random.split(key)
    obs = jnp.zeros((obs_size,), jnp.float32)
    action = jnp.zeros((action_size,), jnp.float32)
    actor_params = _actor(config, action_size).init(k_actor, obs)
    critic_params = _critic(config).init(k_critic, obs, action)
    actor_opt, critic_opt = _optimizers(config)
    return AgentState(
        actor_params=actor_params,
        critic_params=critic_params,
        target_actor_params=actor_params,
        target_critic_params=critic_params,
        actor_opt_state=actor_opt.init(actor_params),
        critic_opt_state=critic_opt.init(critic_params),
        step=jnp.int32(0),
    )


def critic_target(
    key: jax.Array,
    target_actor_params: PyTree,
    target_critic_params: PyTree,
    batch: Transition,
    config: TD3Config,
) -> jax.Array:
    """The clipped double-Q target with target policy smoothing (TD3, eq. 15).

    ``y = r + γ (1 − terminated) min_i Q'_i(s', clip(μ'(s') + clip(σ ε, −c, c), low, high))``
    with ``ε ~ N(0, 1)`` per action dimension, σ and c in units of half the action range;
    ``r`` is ``max(r, config.target_reward_floor)`` when that is set.

    Args:
        key: PRNG key for the smoothing noise.
        target_actor_params, target_critic_params: μ' and (Q'_1, Q'_2).
        batch: transitions with leaves ``[B, ...]``.
        config: γ, σ, c, action bounds and network sizes.

    Returns:
        ``[B]`` targets, without gradient.
    """
    replay.assert_batch(batch, action_rank=2, action_type=float, where="td3.critic_target")
    action_size = batch.action.shape[-1]
    half = _half_range(config)
    noise = config.policy_noise * half * jax.random.normal(key, batch.action.shape)
    noise = jnp.clip(noise, -config.noise_clip * half, config.noise_clip * half)
    next_action = policy(target_actor_params, batch.next_obs, config, action_size) + noise
    next_action = jnp.clip(next_action, config.action_low, config.action_high)
    q_t = _critic(config).apply(target_critic_params, batch.next_obs, next_action)  # [2, B]
    discount_t = config.gamma * (1.0 - batch.terminated)
    r_t = batch.reward
    if config.target_reward_floor is not None:
        r_t = jnp.maximum(r_t, config.target_reward_floor)
    return jax.lax.stop_gradient(r_t + discount_t * jnp.min(q_t, axis=0))


def update(
    state: AgentState, batch: Transition, key: jax.Array, config: TD3Config
) -> tuple[AgentState, dict[str, jax.Array]]:
    """One TD3 update: the critics every call; the actor and all targets every
    ``policy_delay``-th call (when ``state.step + 1`` is a multiple of it).

    The critic loss is the authors' ``MSE(Q1, y) + MSE(Q2, y)`` (``2 × rlax.l2_loss``; with
    ``critic_loss="huber"``, ``2 × rlax.huber_loss`` instead); the
    actor maximises ``Q1(s, μ(s))`` with the freshly updated critic; targets move by
    ``optax.incremental_update`` with step size τ.

    Args:
        state: the agent.
        batch: transitions with leaves ``[B, ...]``.
        key: PRNG key (target smoothing noise).
        config: hyper-parameters.

    Returns:
        ``(state, metrics)``; metrics are scalars ``critic_loss``, ``actor_loss`` (0 where
        the actor did not update), ``q`` (mean of both critics) and ``actor_updated`` (bool).
    """
    replay.assert_batch(batch, action_rank=2, action_type=float, where="td3.update")
    chex.assert_rank(state.step, 0)
    action_size = batch.action.shape[-1]
    actor, critic = _actor(config, action_size), _critic(config)
    actor_opt, critic_opt = _optimizers(config)

    y = critic_target(key, state.target_actor_params, state.target_critic_params, batch, config)

    def critic_loss_fn(params):
        q_tm1 = critic.apply(params, batch.obs, batch.action)  # [2, B]
        loss = 2.0 * jnp.mean(jnp.sum(td_loss(q_tm1 - y[None], config.critic_loss), axis=0))
        return loss, jnp.mean(q_tm1)

    (critic_loss, q_mean), grads = jax.value_and_grad(critic_loss_fn, has_aux=True)(
        state.critic_params
    )
    updates, critic_opt_state = critic_opt.update(grads, state.critic_opt_state)
    critic_params = optax.apply_updates(state.critic_params, updates)

    def actor_loss_fn(params):
        action = scale_action(actor.apply(params, batch.obs), config)
        return -jnp.mean(critic.apply(critic_params, batch.obs, action)[0])

    def delayed(operand):
        actor_params, actor_opt_state, target_actor, target_critic = operand
        loss, grads = jax.value_and_grad(actor_loss_fn)(actor_params)
        updates, actor_opt_state = actor_opt.update(grads, actor_opt_state)
        actor_params = optax.apply_updates(actor_params, updates)
        target_actor = optax.incremental_update(actor_params, target_actor, config.tau)
        target_critic = optax.incremental_update(critic_params, target_critic, config.tau)
        return (actor_params, actor_opt_state, target_actor, target_critic), loss

    def skip(operand):
        return operand, jnp.zeros((), jnp.float32)

    step = state.step + 1
    actor_updated = step % config.policy_delay == 0
    operand = (
        state.actor_params,
        state.actor_opt_state,
        state.target_actor_params,
        state.target_critic_params,
    )
    (actor_params, actor_opt_state, target_actor, target_critic), actor_loss = jax.lax.cond(
        actor_updated, delayed, skip, operand
    )
    new_state = AgentState(
        actor_params=actor_params,
        critic_params=critic_params,
        target_actor_params=target_actor,
        target_critic_params=target_critic,
        actor_opt_state=actor_opt_state,
        critic_opt_state=critic_opt_state,
        step=step,
    )
    metrics = {
        "critic_loss": critic_loss,
        "actor_loss": actor_loss.astype(jnp.float32),
        "q": q_mean,
        "actor_updated": actor_updated,
    }
    return new_state, metrics


def _no_update_metrics() -> dict[str, jax.Array]:
    zero = jnp.zeros((), jnp.float32)
    return {"critic_loss": zero, "actor_loss": zero, "q": zero, "actor_updated": jnp.bool_(False)}


# -- the training loop ----------------------------------------------------------------------


TrainCarry = loop.TrainCarry  # the loop's carry (agent, buffer, obs, env_state, return)


def _check_sizes(env, env_params, config: TD3Config, action_size, obs_size) -> tuple[int, int]:
    validate_config(config)
    if int(action_size) < 1:
        raise JPanningError(f"action_size must be >= 1, got {action_size}")
    if obs_size is None:
        obs_shape = jax.eval_shape(env.reset, jax.random.key(0), env_params)[0].shape
        if len(obs_shape) != 1:
            raise JPanningError(f"observations must be 1-D vectors, got shape {obs_shape}")
        obs_size = obs_shape[0]
    return int(obs_size), int(action_size)


def make_step(env, config: TD3Config, *, action_size: int, obs_size: int, demonstrator=None):
    """The two pure functions every TD3 training loop is made of.

    Returns:
        ``(init, step)``: ``init(key, env_params) -> TrainCarry`` (fresh agent, empty buffer,
        a reset environment) and ``step(carry, t, loop_key, env_params) -> (carry, metrics)``,
        environment step ``t`` (0-based; its randomness is ``fold_in(loop_key, t)``). Each
        step acts (uniform random for the first ``warmup_steps``, else ``μ(s)`` plus clipped
        Gaussian exploration noise), steps the env, stores the transition, resets the env on
        ``terminated | truncated``, and runs one :func:`update` once the buffer holds
        ``batch_size`` transitions and warm-up is over. ``env_params`` are arguments, so
        large ones (a network and its scoring data) are never baked into the program.

        With ``config.demo_steps > 0``, steps ``t < demo_steps`` act with
        ``demonstrator(loop_key, t, obs, env_state)`` (pure; it derives its own randomness
        from ``loop_key`` and picks its controller per episode as it likes) plus the
        exploration noise, clipped to the bounds, instead of uniform actions.
    """
    if config.demo_steps and demonstrator is None:
        raise JPanningError(f"demo_steps={config.demo_steps} needs a demonstrator")
    half = _half_range(config)

    def init(key, env_params) -> TrainCarry:
        k_agent, k_reset = jax.random.split(key)
        obs, env_state = env.reset(k_reset, env_params)
        return TrainCarry(
            agent=init_agent(k_agent, config, obs_size, action_size),
            buffer=buffer_init(config.buffer_size, obs_size, action_size),
            obs=jnp.asarray(obs, jnp.float32),
            env_state=env_state,
            episode_return=jnp.float32(0.0),
        )

    def step(carry: TrainCarry, t, loop_key, env_params):
        key = jax.random.fold_in(loop_key, t)
        k_random, k_noise, k_step, k_reset, k_sample, k_update = jax.random.split(key, 6)
        agent = carry.agent

        random_action = jax.random.uniform(
            k_random, (action_size,), minval=config.action_low, maxval=config.action_high
        )
        noise = config.exploration_noise * half * jax.random.normal(k_noise, (action_size,))
        greedy = policy(agent.actor_params, carry.obs, config, action_size)
        noisy = jnp.clip(greedy + noise, config.action_low, config.action_high)
        if config.demo_steps:
            shown = demonstrator(loop_key, t, carry.obs, carry.env_state)
            shown = jnp.clip(shown + noise, config.action_low, config.action_high)
            random_action = jnp.where(t < config.demo_steps, shown, random_action)
        action = jnp.where(t < config.warmup_steps, random_action, noisy)

        carry, metrics = loop.interact(env, env_params, carry, action, k_step, k_reset)
        can_update = (carry.buffer.size >= config.batch_size) & (t >= config.warmup_steps)
        agent, update_metrics = jax.lax.cond(
            can_update,
            lambda a: update(
                a, buffer_sample(k_sample, carry.buffer, config.batch_size), k_update, config
            ),
            lambda a: (a, _no_update_metrics()),
            agent,
        )
        return carry.replace(agent=agent), {**metrics, "updated": can_update, **update_metrics}

    return init, step


def make_train(
    env, env_params, config: TD3Config, *, action_size: int, obs_size=None, demonstrator=None
):
    """Build a pure ``train(key) -> (agent_state, metrics)`` running TD3 on ``env``.

    ``config.total_steps`` steps of :func:`make_step` in one ``lax.scan``, so the whole
    search is one program that ``jax.vmap`` runs over seeds. :func:`train_loop` drives the
    same steps from the host (progress bars). On XLA:CPU an environment whose convolutions
    are ``lax.conv_general_dilated`` is many times slower inside the scan
    (``python -m benchmarks.archive.loop_body_conv``); with jpanning's models it is not
    (``jpanning.cpu``).

    Args:
        env: an object with gymnax-style ``reset`` and ``step`` (module docstring).
        env_params: passed to ``env.reset``/``env.step``.
        config: TD3 settings (validated here).
        action_size: A.
        obs_size: O; taken from ``env.reset``'s output shape when None.
        demonstrator: the warm-up's demonstrator when ``config.demo_steps > 0``
            (:func:`make_step`).

    Returns:
        ``train``; it returns the final :class:`AgentState` and a dict of ``[total_steps]``
        arrays: ``obs`` ``[total_steps, O]`` (what the agent acted on), ``action``
        ``[total_steps, A]``, ``reward``, ``terminated``, ``truncated``, ``done``,
        ``episode_return`` (the running return including this step, so
        ``episode_return[done]`` are the completed episodes' returns), ``updated`` and the
        :func:`update` metrics (0 where no update).
    """
    obs_size, action_size = _check_sizes(env, env_params, config, action_size, obs_size)
    init, step = make_step(
        env, config, action_size=action_size, obs_size=obs_size, demonstrator=demonstrator
    )
    return loop.scanned(init, step, env_params, config.total_steps)


def train_loop(
    env,
    env_params,
    config: TD3Config,
    key: jax.Array,
    *,
    action_size: int,
    obs_size=None,
    steps_per_call: int = 1,
    env_params_at=None,
    callback=None,
    checkpoints=None,
    stop=checkpoint_lib.never,
    demonstrator=None,
    watch=None,
):
    """Run the same steps as :func:`make_train`'s ``train(key)`` from a host loop.

    Each call of one jitted function runs ``steps_per_call`` environment steps (a
    ``lax.scan`` when more than one); with the same key the result equals ``train(key)``
    up to floating-point rounding. This is how to train on an environment with
    convolutions on XLA:CPU (``steps_per_call=1``), and it lets the shell show progress.

    Args:
        env, env_params, config, action_size, obs_size: as :func:`make_train`.
        key: PRNG key.
        steps_per_call: environment steps per jitted call.
        env_params_at: optional ``env_params_at(t) -> env_params`` giving the params for the
            call that starts at step ``t`` (e.g. a target distribution that changes during
            training; the pytree structure and shapes must stay the same); default: always
            ``env_params``.
        callback: optional ``callback(t_end, metrics)`` after each call, with the call's
            metrics as numpy arrays ``[n, ...]`` and ``t_end`` the steps done so far.
        checkpoints, stop: checkpoint and stop the loop
            (:func:`jpanning.agents.loop.host_loop`).
        demonstrator: as :func:`make_train`.
        watch: optional ``watch(t_end, carry)`` after each call
            (:func:`jpanning.agents.loop.host_loop`).

    Returns:
        ``(agent_state, metrics)`` like ``train(key)``, metrics as numpy arrays.
    """
    obs_size, action_size = _check_sizes(env, env_params, config, action_size, obs_size)
    init, step = make_step(
        env, config, action_size=action_size, obs_size=obs_size, demonstrator=demonstrator
    )
    return loop.host_loop(
        init,
        step,
        key,
        config.total_steps,
        env_params_at or (lambda t: env_params),
        steps_per_call=steps_per_call,
        callback=callback,
        checkpoints=checkpoints,
        stop=stop,
        watch=watch,
    )
