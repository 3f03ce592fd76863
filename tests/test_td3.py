"""TD3: the critic target by hand, delayed and soft updates, jit agreement, the replay ring,
vmapped training, and learning a toy 1-D control task."""

import functools

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jpanning.agents import td3
from jpanning.errors import JPanningError

# -- a toy environment with the project's gymnax-like API ----------------------------------


@flax.struct.dataclass
class PointState:
    x: jax.Array
    t: jax.Array


@flax.struct.dataclass
class PointParams:
    speed: float = 0.2
    horizon: int = flax.struct.field(pytree_node=False, default=20)


class PointEnv:
    """A point on a line, started in U(-1, 1), should move to the origin.

    ``x ← x + speed · a``; reward ``−|x|``; leaving ``|x| > 1.5`` terminates with −5; the
    horizon truncates.
    """

    def reset(self, key, params):
        x = jax.random.uniform(key, (), minval=-1.0, maxval=1.0)
        return x[None], PointState(x=x, t=jnp.int32(0))

    def step(self, key, state, action, params):
        x = state.x + params.speed * jnp.clip(action[0], -1.0, 1.0)
        t = state.t + 1
        terminated = jnp.abs(x) > 1.5
        truncated = (t >= params.horizon) & ~terminated
        reward = -jnp.abs(x) - jnp.where(terminated, 5.0, 0.0)
        return x[None], PointState(x=x, t=t), reward, terminated, truncated, {}


def _rollout_return(env, params, act, keys, horizon):
    """Mean undiscounted return of ``act(key, obs)`` over episodes started from ``keys``,
    each run for ``horizon`` steps or until it ends."""

    def episode(key):
        k_reset, k_act = jax.random.split(key)
        obs, state = env.reset(k_reset, params)

        def step(carry, t):
            obs, state, alive, total = carry
            action = act(jax.random.fold_in(k_act, t), obs)
            obs, state, reward, terminated, truncated, _ = env.step(key, state, action, params)
            total = total + alive * reward
            alive = alive * (1.0 - (terminated | truncated))
            return (obs, state, alive, total), None

        carry, _ = jax.lax.scan(step, (obs, state, 1.0, 0.0), jnp.arange(horizon))
        return carry[3]

    return float(jnp.mean(jax.vmap(episode)(keys)))


def _random_batch(key, batch_size, obs_size, action_size):
    ks = jax.random.split(key, 5)
    return td3.Transition(
        obs=jax.random.normal(ks[0], (batch_size, obs_size)),
        action=jax.random.uniform(ks[1], (batch_size, action_size), minval=-1.0, maxval=1.0),
        reward=jax.random.normal(ks[2], (batch_size,)),
        next_obs=jax.random.normal(ks[3], (batch_size, obs_size)),
        terminated=(jax.random.uniform(ks[4], (batch_size,)) < 0.3).astype(jnp.float32),
    )


# -- the critic target ----------------------------------------------------------------------


def test_critic_target_matches_hand_computation():
    # No hidden layers: μ'(s) = tanh(s·W + b) and Q'_i(s, a) = [s, a]·w_i + c_i.
    config = td3.TD3Config(hidden_sizes=(), gamma=0.9, policy_noise=2.0, noise_clip=0.5)
    actor_w = np.array([[0.5], [-1.0]], np.float32)  # [O=2, A=1]
    actor_b = np.array([0.3], np.float32)
    critic_w = np.array([[[1.0], [2.0], [3.0]], [[-1.0], [0.5], [1.0]]], np.float32)  # [2, 3, 1]
    critic_b = np.array([[0.1], [0.2]], np.float32)
    actor_params = {"params": {"out": {"kernel": actor_w, "bias": actor_b}}}
    critic_params = {"params": {"q": {"out": {"kernel": critic_w, "bias": critic_b}}}}
    # The hand-built trees have the networks' structure.
    init = td3.init_agent(jax.random.key(0), config, obs_size=2, action_size=1)
    chex.assert_trees_all_equal_shapes(init.actor_params, actor_params)
    chex.assert_trees_all_equal_shapes(init.critic_params, critic_params)

    next_obs = np.array([[1.0, -2.0], [0.5, 0.5], [-1.0, 1.0], [2.0, 0.0], [0.0, 0.0]], np.float32)
    batch = td3.Transition(
        obs=np.zeros((5, 2), np.float32),
        action=np.zeros((5, 1), np.float32),
        reward=np.array([1.0, -1.0, 0.5, 2.0, 0.0], np.float32),
        next_obs=next_obs,
        terminated=np.array([0.0, 1.0, 0.0, 0.0, 1.0], np.float32),
    )
    key = jax.random.key(3)
    y = td3.critic_target(key, actor_params, critic_params, batch, config)

    # Hand computation (the smoothing noise is σ·ε with ε = normal(key, action shape)).
    eps = np.asarray(jax.random.normal(key, (5, 1)))
    noise = np.clip(2.0 * eps, -0.5, 0.5)
    assert np.any(np.abs(2.0 * eps) > 0.5), "pick a key where the noise clip matters"
    mu = np.tanh(next_obs @ actor_w + actor_b)
    unclipped = mu + noise
    a = np.clip(unclipped, -1.0, 1.0)
    assert np.any(np.abs(unclipped) > 1.0), "pick a case where the action clip matters"
    sa = np.concatenate([next_obs, a], axis=1)
    q = np.stack([sa @ critic_w[i, :, 0] + critic_b[i, 0] for i in range(2)])  # [2, B]
    assert len(set(np.argmin(q, axis=0))) == 2, "both critics should be the minimum somewhere"
    expected = batch.reward + 0.9 * (1.0 - batch.terminated) * q.min(axis=0)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-6)
    # Terminal transitions are the bare reward.
    np.testing.assert_allclose(np.asarray(y)[[1, 4]], batch.reward[[1, 4]], rtol=1e-6)
    # gamma 0 (proxy_search --gamma 0, the step's own reward): every target is the reward
    y0 = td3.critic_target(key, actor_params, critic_params, batch, config.replace(gamma=0.0))
    np.testing.assert_allclose(np.asarray(y0), batch.reward, rtol=1e-6)


def test_critic_target_without_smoothing_uses_the_target_policy():
    config = td3.TD3Config(hidden_sizes=(8,), policy_noise=0.0)
    state = td3.init_agent(jax.random.key(1), config, obs_size=3, action_size=2)
    batch = _random_batch(jax.random.key(2), 6, 3, 2)
    y1 = td3.critic_target(
        jax.random.key(0), state.actor_params, state.critic_params, batch, config
    )
    y2 = td3.critic_target(
        jax.random.key(9), state.actor_params, state.critic_params, batch, config
    )
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))
    a = td3.policy(state.actor_params, batch.next_obs, config, 2)
    q = td3.TwinCritic((8,)).apply(state.critic_params, batch.next_obs, a)
    expected = batch.reward + 0.99 * (1 - batch.terminated) * jnp.minimum(q[0], q[1])
    np.testing.assert_allclose(np.asarray(y1), np.asarray(expected), rtol=1e-5, atol=1e-6)


# -- the update -----------------------------------------------------------------------------


def _changed(a, b):
    return any(
        not np.array_equal(x, y)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_actor_updates_every_policy_delay_and_targets_move_by_tau():
    config = td3.TD3Config(hidden_sizes=(8,), policy_delay=3, tau=0.25, actor_lr=1e-2)
    state = td3.init_agent(jax.random.key(0), config, obs_size=3, action_size=2)
    update = jax.jit(td3.update, static_argnames="config")
    for i in range(1, 8):
        batch = _random_batch(jax.random.key(100 + i), 16, 3, 2)
        new, metrics = update(state, batch, jax.random.key(i), config=config)
        assert int(new.step) == i
        assert _changed(new.critic_params, state.critic_params)  # critics: every update
        delayed = i % 3 == 0
        assert bool(metrics["actor_updated"]) == delayed
        assert _changed(new.actor_params, state.actor_params) == delayed
        if delayed:
            for online, old_target, new_target in (
                (new.actor_params, state.target_actor_params, new.target_actor_params),
                (new.critic_params, state.target_critic_params, new.target_critic_params),
            ):
                expected = jax.tree.map(lambda o, t: 0.25 * o + 0.75 * t, online, old_target)
                chex.assert_trees_all_close(new_target, expected, rtol=1e-6, atol=1e-7)
                assert _changed(new_target, old_target)
        else:
            chex.assert_trees_all_equal(new.target_actor_params, state.target_actor_params)
            chex.assert_trees_all_equal(new.target_critic_params, state.target_critic_params)
            chex.assert_trees_all_equal(new.actor_opt_state, state.actor_opt_state)
        state = new


@pytest.mark.slow  # 15 s
def test_update_with_and_without_jit_agree_and_does_not_retrace():
    config = td3.TD3Config(hidden_sizes=(16, 16), policy_delay=1)
    state = td3.init_agent(jax.random.key(0), config, obs_size=4, action_size=2)
    batch = _random_batch(jax.random.key(1), 32, 4, 2)
    eager_state, eager_metrics = td3.update(state, batch, jax.random.key(2), config)
    jitted = jax.jit(chex.assert_max_traces(td3.update, n=1))
    jit_state, jit_metrics = jitted(state, batch, jax.random.key(2), config)
    chex.assert_trees_all_close(jit_state, eager_state, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(jit_metrics, eager_metrics, rtol=1e-5, atol=1e-6)
    assert _changed(jit_state.actor_params, state.actor_params)
    # A second call with new values reuses the trace.
    jitted(jit_state, _random_batch(jax.random.key(5), 32, 4, 2), jax.random.key(3), config)


# -- the replay buffer ----------------------------------------------------------------------


@pytest.mark.parametrize("jit", [False, True])
def test_update_and_critic_target_assert_the_batch_at_the_door(jit):
    config = td3.TD3Config(hidden_sizes=(8,), batch_size=4)
    state = td3.init_agent(jax.random.key(0), config, obs_size=3, action_size=2)
    batch = _random_batch(jax.random.key(1), 4, 3, 2)
    update = jax.jit(td3.update, static_argnums=3) if jit else td3.update
    target = jax.jit(td3.critic_target, static_argnums=4) if jit else td3.critic_target
    key = jax.random.key(2)
    unbatched = jax.tree.map(lambda x: x[0], batch)
    with pytest.raises(AssertionError, match=r"assert_rank.*td3.update: batch \(obs, action"):
        update(state, unbatched, key, config)
    with pytest.raises(AssertionError, match=r"assert_equal_shape_prefix.*td3.update"):
        update(state, batch.replace(reward=batch.reward[:3]), key, config)
    with pytest.raises(AssertionError, match=r"assert_type.*td3.critic_target"):
        target(key, state.target_actor_params, state.target_critic_params,
               batch.replace(action=batch.action.astype(jnp.int32)), config)  # fmt: skip


def _transition(i):
    i = float(i)
    return td3.Transition(
        obs=jnp.array([i, -i]),
        action=jnp.array([i / 100.0]),
        reward=jnp.float32(i),
        next_obs=jnp.array([i + 1, -i - 1]),
        terminated=jnp.float32(i % 2),
    )


@pytest.mark.parametrize("kind", ["mse", "huber"])
def test_critic_loss_and_its_gradient_match_hand_computation(kind):
    """2 × mean over the batch of the summed per-critic loss of Q_i − y, with y from the
    critic target; Huber's gradient is the TD error clipped to [−1, 1], MSE's the error."""
    config = td3.TD3Config(hidden_sizes=(8,), policy_delay=5, critic_loss=kind)
    state = td3.init_agent(jax.random.key(3), config, obs_size=3, action_size=2)
    batch = _random_batch(jax.random.key(4), 6, 3, 2)
    batch = batch.replace(reward=batch.reward.at[0].set(-174.5))  # one collapse penalty
    key = jax.random.key(5)
    _, metrics = td3.update(state, batch, key, config)
    y = td3.critic_target(key, state.target_actor_params, state.target_critic_params, batch, config)
    q = td3.TwinCritic((8,)).apply(state.critic_params, batch.obs, batch.action)  # [2, B]
    err = np.asarray(q - y[None], np.float64)
    if kind == "mse":
        per, grad = 0.5 * err**2, err
    else:
        per = np.where(np.abs(err) <= 1, 0.5 * err**2, np.abs(err) - 0.5)
        grad = np.clip(err, -1.0, 1.0)
    np.testing.assert_allclose(float(metrics["critic_loss"]), 2 * per.sum(0).mean(), rtol=1e-5)
    # d loss / d q: 2/B × the per-element derivative, finite in size for Huber
    dq = jax.grad(lambda qq: 2.0 * jnp.mean(jnp.sum(td3.td_loss(qq - y[None], kind), 0)))(q)
    np.testing.assert_allclose(np.asarray(dq), 2.0 / 6 * grad, rtol=1e-5, atol=1e-7)
    if kind == "huber":
        assert np.abs(np.asarray(dq)).max() <= 2.0 / 6 + 1e-7  # the penalty's pull is bounded


def test_buffer_wraps_around():
    capacity = 5
    buffer = td3.buffer_init(capacity, obs_size=2, action_size=1)
    add = jax.jit(td3.buffer_add)
    for i in range(capacity + 3):
        buffer = add(buffer, _transition(i))
    assert int(buffer.size) == capacity
    assert int(buffer.position) == 3
    np.testing.assert_array_equal(np.asarray(buffer.data.reward), [5, 6, 7, 3, 4])
    np.testing.assert_array_equal(np.asarray(buffer.data.obs[:, 0]), [5, 6, 7, 3, 4])
    np.testing.assert_array_equal(np.asarray(buffer.data.next_obs[:, 1]), [-6, -7, -8, -4, -5])
    np.testing.assert_array_equal(np.asarray(buffer.data.terminated), [1, 0, 1, 1, 0])


def test_buffer_samples_only_filled_slots():
    buffer = td3.buffer_init(10, obs_size=2, action_size=1)
    for i in range(1, 4):
        buffer = td3.buffer_add(buffer, _transition(i))
    batch = td3.buffer_sample(jax.random.key(0), buffer, 300)
    assert batch.obs.shape == (300, 2) and batch.reward.shape == (300,)
    assert set(np.asarray(batch.reward).tolist()) == {1.0, 2.0, 3.0}
    np.testing.assert_array_equal(np.asarray(batch.obs[:, 0]), np.asarray(batch.reward))


# -- training -------------------------------------------------------------------------------

TINY = td3.TD3Config(
    hidden_sizes=(16,), warmup_steps=16, batch_size=8, buffer_size=32, total_steps=64
)


def test_vmapped_train_equals_separate_runs():
    env, params = PointEnv(), PointParams()
    train = td3.make_train(env, params, TINY, action_size=1)
    keys = jax.random.split(jax.random.key(0), 2)
    states, metrics = jax.jit(jax.vmap(train))(keys)
    assert metrics["reward"].shape == (2, 64)
    single = jax.jit(train)
    for i in range(2):
        state_i, metrics_i = single(keys[i])
        chex.assert_trees_all_close(
            jax.tree.map(lambda x, i=i: x[i], (states, metrics)),
            (state_i, metrics_i),
            rtol=1e-5,
            atol=1e-5,
        )
    m = jax.tree.map(np.asarray, metrics)
    assert not np.allclose(m["reward"][0], m["reward"][1])  # seeds differ
    # Updates start once warm-up is over and the buffer holds a batch; one per step after.
    np.testing.assert_array_equal(m["updated"][0], np.arange(64) >= 16)
    assert int(states.step[0]) == 64 - 16
    # Episodes end by truncation at the horizon (or termination) and the return restarts.
    assert m["done"][0].sum() >= 3
    after_done = np.flatnonzero(m["done"][0][:-1]) + 1
    np.testing.assert_allclose(m["episode_return"][0][after_done], m["reward"][0][after_done])
    # The agent acts on the env's next observation, or on a fresh one after an episode ends.
    obs, action, done = m["obs"][0][:, 0], m["action"][0][:, 0], m["done"][0]
    moved = obs[:-1] + 0.2 * action[:-1]
    np.testing.assert_allclose(obs[1:][~done[:-1]], moved[~done[:-1]], rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(obs[1:][done[:-1]] - moved[done[:-1]]) > 1e-4)
    assert np.all(np.abs(obs[1:][done[:-1]]) <= 1.0)
    assert np.all(np.abs(action) <= 1.0)


def test_train_rejects_bad_config():
    env, params = PointEnv(), PointParams()
    with pytest.raises(JPanningError, match="tau"):
        td3.make_train(env, params, TINY.replace(tau=0.0), action_size=1)
    with pytest.raises(JPanningError, match="batch_size"):
        td3.make_train(env, params, TINY.replace(batch_size=64), action_size=1)
    with pytest.raises(JPanningError, match="action_size"):
        td3.make_train(env, params, TINY, action_size=0)
    with pytest.raises(JPanningError, match="demo_steps \\(17\\) must be <= warmup_steps"):
        td3.make_train(env, params, TINY.replace(demo_steps=17), action_size=1)
    with pytest.raises(JPanningError, match="demo_steps=4 needs a demonstrator"):
        td3.make_train(env, params, TINY.replace(demo_steps=4), action_size=1)
    with pytest.raises(JPanningError, match="critic_loss 'l1' is not one of mse, huber"):
        td3.make_train(env, params, TINY.replace(critic_loss="l1"), action_size=1)


def test_td3_learns_to_reach_the_origin():
    env, params = PointEnv(), PointParams()
    config = td3.TD3Config(
        hidden_sizes=(32, 32),
        actor_lr=1e-3,
        critic_lr=1e-3,
        warmup_steps=300,
        batch_size=64,
        gamma=0.9,
        tau=0.02,
        buffer_size=3000,
        total_steps=3000,
    )
    train = td3.make_train(env, params, config, action_size=1)
    state, metrics = jax.jit(train)(jax.random.key(0))
    eval_keys = jax.random.split(jax.random.key(123), 64)
    trained = _rollout_return(
        env,
        params,
        lambda k, obs: td3.policy(state.actor_params, obs, config, 1),
        eval_keys,
        params.horizon,
    )
    uniform = functools.partial(jax.random.uniform, shape=(1,), minval=-1.0, maxval=1.0)
    random = _rollout_return(env, params, lambda k, obs: uniform(k), eval_keys, params.horizon)
    assert trained > 0.2 * random, (trained, random)  # returns are negative
    assert np.all(np.isfinite(np.asarray(metrics["critic_loss"])))


def test_train_runs_on_the_panning_environment():
    # The agent drives jpanning's own environment under jit + scan: 5-round episodes end
    # exactly every 5 steps (truncation), updates start after the warm-up.
    from jpanning import data, env as E, masks as M, models

    ds = data.load_dataset("synthetic", seed=0)
    model = models.create_model("tinycnn", ds.num_classes)
    v = models.init_variables(model, jax.random.key(0), ds.input_shape)
    env = E.PanningEnv(
        models.make_apply_fn(model, v["batch_stats"], train=True),
        models.make_apply_fn(model, v["batch_stats"], train=False),
        M.prunable_tree(v["params"]),
        ds.input_shape,
    )
    xs = ds.train_images[:80].reshape(2, 40, *ds.input_shape)
    ys = ds.train_labels[:80].reshape(2, 40)
    env_params = env.make_params(v["params"], xs, ys, rounds=5)
    config = td3.TD3Config(
        hidden_sizes=(32, 32), warmup_steps=20, batch_size=16, buffer_size=200, total_steps=60
    )
    _, metrics = jax.jit(td3.make_train(env, env_params, config, action_size=3))(jax.random.key(0))
    done = np.asarray(metrics["done"])
    np.testing.assert_array_equal(np.flatnonzero(done), np.arange(4, 60, 5))
    assert int(np.sum(metrics["updated"])) == 40
    assert np.all(np.isfinite(np.asarray(metrics["reward"])))


@pytest.mark.parametrize("steps_per_call", [1, 7])
def test_host_loop_equals_scanned_train(steps_per_call):
    # The host-driven loop runs the same steps as the scanned train(key), including a last
    # call shorter than the others (64 = 9 * 7 + 1), and reports progress after each call.
    env, params = PointEnv(), PointParams()
    key = jax.random.key(3)
    state, metrics = jax.jit(td3.make_train(env, params, TINY, action_size=1))(key)
    seen = []
    loop_state, loop_metrics = td3.train_loop(
        env,
        params,
        TINY,
        key,
        action_size=1,
        steps_per_call=steps_per_call,
        callback=lambda t, m: seen.append((t, len(m["reward"]))),
    )
    chex.assert_trees_all_close(loop_state, state, rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(
        loop_metrics, jax.tree.map(np.asarray, metrics), rtol=1e-4, atol=1e-5
    )
    assert seen[-1][0] == 64 and sum(n for _, n in seen) == 64
    assert len(seen) == -(-64 // steps_per_call)


def test_host_loop_switches_env_params():
    # env_params_at(t) swaps the params between calls: a faster point moves further.
    env = PointEnv()
    slow, fast = PointParams(speed=0.0), PointParams(speed=0.5)
    _, m = td3.train_loop(
        env,
        slow,
        TINY.replace(total_steps=10, warmup_steps=10),
        jax.random.key(0),
        action_size=1,
        env_params_at=lambda t: slow if t < 5 else fast,
    )
    obs = m["obs"][:, 0]
    np.testing.assert_array_equal(obs[1:6], obs[0])  # speed 0: never moves
    np.testing.assert_allclose(obs[6:], obs[5:-1] + 0.5 * m["action"][5:-1, 0], rtol=1e-5)


def test_interrupted_and_resumed_agent_training_equals_an_uninterrupted_one(tmp_path):
    # The checkpoint holds the whole carry (agent, replay buffer, environment, observation)
    # and the metrics so far; a resumed loop ends bit for bit where the uninterrupted one does.
    from jpanning import checkpoint

    env, params = PointEnv(), PointParams()
    steps_per_call = 7  # checkpoints land on call boundaries: 14 (every 10), 28 (the stop)
    kw = dict(action_size=1, steps_per_call=steps_per_call)
    want_state, want_metrics = td3.train_loop(env, params, TINY, jax.random.key(3), **kw)
    polls = []

    def stop():
        polls.append(1)
        return "SIGINT" if len(polls) == 30 // steps_per_call else None

    with checkpoint.opened(str(tmp_path / "agent"), every=10) as ckpt:
        with pytest.raises(checkpoint.Interrupted, match="stopped by SIGINT at agent step") as e:
            td3.train_loop(env, params, TINY, jax.random.key(3), **kw, checkpoints=ckpt, stop=stop)
        assert e.value.exit_code == 130
        stopped = (30 // steps_per_call) * steps_per_call
        assert ckpt.latest() == stopped and ckpt.steps()[0] < stopped  # and a periodic one
        with pytest.raises(JPanningError, match="belongs to another run"):
            td3.train_loop(env, params, TINY, jax.random.key(4), **kw, checkpoints=ckpt)
        seen = []
        got_state, got_metrics = td3.train_loop(
            env, params, TINY, jax.random.key(3), **kw, checkpoints=ckpt,
            callback=lambda t, m: seen.append(t),
        )  # fmt: skip
    assert seen[0] == stopped and seen[-1] == 64
    chex.assert_trees_all_equal(got_state, want_state)
    chex.assert_trees_all_equal(got_metrics, want_metrics)


@pytest.mark.slow
def test_td3_learns_pendulum_swing_up():
    # Pendulum-v1: a uniform random policy returns about -1,200 per 200-step episode; TD3
    # with these settings reached -179 against -1,371 for random actions (seed 0, 15k steps,
    # 14 s on 2 CPU cores).
    from jpanning.agents.pendulum import Pendulum

    env = Pendulum()
    params = env.default_params()
    config = td3.TD3Config(
        hidden_sizes=(64, 64),
        actor_lr=1e-3,
        critic_lr=1e-3,
        warmup_steps=1000,
        batch_size=128,
        buffer_size=15_000,
        tau=0.005,
        total_steps=15_000,
    )
    state, metrics = jax.jit(td3.make_train(env, params, config, action_size=1))(jax.random.key(0))

    keys = jax.random.split(jax.random.key(7), 32)
    rollout = functools.partial(_rollout_return, env, params, keys=keys, horizon=params.max_steps)
    trained = rollout(lambda k, obs: td3.policy(state.actor_params, obs, config, 1))
    random = rollout(lambda k, obs: jax.random.uniform(k, (1,), minval=-1.0, maxval=1.0))
    assert random < -900, random
    assert trained > -250, (trained, random)


def test_the_target_reward_floor_clips_rewards_in_the_critic_target_only():
    # Terminal transitions: y is the (floored) reward itself; the others add γ min Q' as before.
    config = td3.TD3Config(hidden_sizes=(8,), policy_noise=0.0)
    floored = config.replace(target_reward_floor=-1.0)
    agent = td3.init_agent(jax.random.key(0), config, obs_size=2, action_size=1)
    batch = td3.Transition(
        obs=np.zeros((4, 2), np.float32),
        action=np.zeros((4, 1), np.float32),
        reward=np.array([-174.5, -0.1, -174.5, -3.0], np.float32),
        next_obs=np.ones((4, 2), np.float32),
        terminated=np.array([1.0, 1.0, 0.0, 0.0], np.float32),
    )
    key = jax.random.key(1)
    args = (key, agent.target_actor_params, agent.target_critic_params, batch)
    y, y_floor = td3.critic_target(*args, config), td3.critic_target(*args, floored)
    np.testing.assert_allclose(np.asarray(y_floor)[:2], [-1.0, -0.1])
    np.testing.assert_allclose(np.asarray(y)[:2], [-174.5, -0.1])
    bootstrap = np.asarray(y)[2:] - batch.reward[2:]  # γ min Q'(s', μ'(s')), the same in both
    np.testing.assert_allclose(np.asarray(y_floor)[2:], -1.0 + bootstrap, rtol=1e-5, atol=1e-5)


# -- demonstration warm-up (TD3Config.demo_steps) ------------------------------------------


def test_demo_steps_act_with_the_demonstrator_then_uniform_then_the_policy():
    env, params = PointEnv(), PointParams()
    config = TINY.replace(demo_steps=6, exploration_noise=0.0)

    def demonstrator(loop_key, t, obs, state):
        return jnp.array([0.75]) - 0.1 * state.t  # depends on the state it is given

    _, metrics = td3.make_train(env, params, config, action_size=1, demonstrator=demonstrator)(
        jax.random.key(0)
    )
    actions = np.asarray(metrics["action"])[:, 0]
    # the state's t before each step: 0, 1, 2, ... within the 20-step episode
    shown = 0.75 - 0.1 * np.arange(6)
    np.testing.assert_allclose(actions[:6], shown, atol=1e-6)
    # warm-up's uniform part: not the demonstrator's
    assert not np.allclose(actions[6:16], 0.75 - 0.1 * np.arange(6, 16), atol=1e-3)
    plain = td3.make_train(env, params, TINY.replace(exploration_noise=0.0), action_size=1)
    _, m0 = plain(jax.random.key(0))
    # the demonstrations replace uniform actions only: from demo_steps on the same actions
    np.testing.assert_allclose(actions[6:16], np.asarray(m0["action"])[6:16, 0], atol=1e-6)


def test_demonstrations_get_the_exploration_noise_and_stay_in_bounds():
    env, params = PointEnv(), PointParams()
    config = TINY.replace(demo_steps=16, exploration_noise=0.5)
    _, metrics = td3.make_train(
        env, params, config, action_size=1, demonstrator=lambda k, t, o, s: jnp.array([0.9])
    )(jax.random.key(1))
    actions = np.asarray(metrics["action"])[:16, 0]
    assert np.all(actions <= 1.0) and np.all(actions >= -1.0)
    assert np.any(actions == 1.0)  # clipped: 0.9 + noise went past the bound
    assert np.std(actions) > 0.05  # noisy, not the bare 0.9


def test_the_host_loop_shows_its_watch_the_carry_after_every_call():
    env, params = PointEnv(), PointParams()
    seen = []
    td3.train_loop(env, params, TINY, jax.random.key(0), action_size=1, steps_per_call=8,
                   watch=lambda t, carry: seen.append((t, int(carry.buffer.size))))  # fmt: skip
    # one call per 8 steps; the buffer holds every transition so far (capacity 32)
    assert seen == [(t, min(t, 32)) for t in range(8, 65, 8)]
