"""DQN: TD targets by hand, the ε schedule, target copies, jit/no-jit, and learning a task."""

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jpanning.agents import dqn, replay
from jpanning.errors import JPanningError

CONFIG = dqn.DQNConfig(hidden_sizes=(16,), gamma=0.9, batch_size=4, buffer_size=8)


def _batch():
    return replay.Transition(
        obs=jnp.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]),
        action=jnp.array([0, 2, 1], jnp.int32),
        reward=jnp.array([1.0, -0.5, 0.25]),
        next_obs=jnp.array([[0.0, 1.0], [1.0, 1.0], [0.2, -0.3]]),
        terminated=jnp.array([0.0, 1.0, 0.0]),
    )


@pytest.mark.parametrize("double_q", [False, True])
def test_td_errors_match_a_hand_computation(double_q):
    config = dqn.DQNConfig(hidden_sizes=(16,), gamma=0.9, double_q=double_q)
    online = dqn.init_agent(jax.random.key(0), config, 2, 3).params
    target = dqn.init_agent(jax.random.key(1), config, 2, 3).params
    batch = _batch()
    q = np.asarray(dqn.q_values(online, batch.obs, config, 3))
    q_next_online = np.asarray(dqn.q_values(online, batch.next_obs, config, 3))
    q_next_target = np.asarray(dqn.q_values(target, batch.next_obs, config, 3))
    expected = []
    for i in range(3):
        if double_q:
            bootstrap = q_next_target[i, np.argmax(q_next_online[i])]
        else:
            bootstrap = q_next_target[i].max()
        y = float(batch.reward[i]) + 0.9 * (1 - float(batch.terminated[i])) * bootstrap
        expected.append(y - q[i, int(batch.action[i])])
    got = dqn.td_errors(online, target, batch, config)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # the terminal transition does not bootstrap at all
    assert float(got[1]) == pytest.approx(-0.5 - q[1, 2], abs=1e-6)


@pytest.mark.parametrize("jit", [False, True])
def test_td_errors_and_update_assert_the_batch_at_the_door(jit):
    state = dqn.init_agent(jax.random.key(0), CONFIG, 2, 3)
    batch = _batch()
    td_errors = jax.jit(dqn.td_errors, static_argnums=3) if jit else dqn.td_errors
    update = jax.jit(dqn.update, static_argnums=2) if jit else dqn.update
    float_actions = batch.replace(action=batch.action.astype(jnp.float32))
    with pytest.raises(AssertionError, match=r"assert_type.*dqn.td_errors: batch \(obs, action"):
        td_errors(state.params, state.target_params, float_actions, CONFIG)
    with pytest.raises(AssertionError, match=r"assert_rank.*dqn.update"):
        update(state, batch.replace(reward=batch.reward[:, None]), CONFIG)
    with pytest.raises(AssertionError, match=r"dqn.update: obs, next_obs"):
        update(state, batch.replace(next_obs=batch.next_obs[:, :1]), CONFIG)


def test_epsilon_falls_linearly_over_the_exploration_fraction():
    config = dqn.DQNConfig(total_steps=1000, exploration_fraction=0.7, epsilon_end=0.05)
    eps = [float(dqn.epsilon_at(t, config)) for t in (0, 350, 700, 999)]
    assert eps[0] == pytest.approx(1.0)
    assert eps[1] == pytest.approx(1.0 - 0.5 * 0.95)
    assert eps[2] == pytest.approx(0.05) and eps[3] == pytest.approx(0.05)


def test_update_with_and_without_jit_agree_and_moves_only_the_online_network():
    state = dqn.init_agent(jax.random.key(0), CONFIG, 2, 3)
    a, ma = dqn.update(state, _batch(), CONFIG)
    b, mb = jax.jit(dqn.update, static_argnums=2)(state, _batch(), CONFIG)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)
    assert float(ma["loss"]) == pytest.approx(float(mb["loss"]), rel=1e-5)
    assert int(a.step) == 1
    jax.tree.map(np.testing.assert_array_equal, a.target_params, state.target_params)
    assert not np.allclose(
        a.params["params"]["out"]["kernel"], state.params["params"]["out"]["kernel"]
    )


@flax.struct.dataclass
class BanditState:
    context: jax.Array
    t: jax.Array


class Bandit:
    """A contextual bandit: one-hot context i of n, reward 1 for action i, else 0; episodes of
    ``horizon`` steps (truncated), so the optimal return is ``horizon``."""

    def __init__(self, n=4, horizon=5):
        self.n, self.horizon = n, horizon

    def _obs(self, context):
        return jax.nn.one_hot(context, self.n)

    def reset(self, key, params):
        context = jax.random.randint(key, (), 0, self.n)
        return self._obs(context), BanditState(context, jnp.int32(0))

    def step(self, key, state, action, params):
        reward = (action == state.context).astype(jnp.float32)
        context = jax.random.randint(key, (), 0, self.n)
        t = state.t + 1
        info = {"correct": action == state.context}
        return self._obs(context), BanditState(context, t), reward, False, t >= self.horizon, info


def test_target_network_is_copied_every_target_update_every_steps():
    config = dqn.DQNConfig(
        hidden_sizes=(8,), batch_size=2, learning_starts=0, target_update_every=5
    )
    env = Bandit()
    init, step = dqn.make_step(env, config, num_actions=4, obs_size=4)
    carry = init(jax.random.key(0), None)
    step = jax.jit(step)
    for t in range(12):
        carry, _ = step(carry, jnp.int32(t), jax.random.key(1), None)
        same = jax.tree.leaves(
            jax.tree.map(
                lambda a, b: bool(jnp.all(a == b)), carry.agent.params, carry.agent.target_params
            )
        )
        # copied after steps 5 and 10 (t + 1 a multiple of 5); updates move the online network
        assert all(same) == ((t + 1) % 5 == 0 or t == 0), t


def test_dqn_learns_a_contextual_bandit():
    config = dqn.DQNConfig(
        hidden_sizes=(32,),
        lr=3e-3,
        batch_size=32,
        buffer_size=400,
        learning_starts=50,
        total_steps=1500,
    )
    agent, metrics = jax.jit(dqn.make_train(Bandit(), None, config, num_actions=4))(
        jax.random.key(0)
    )
    greedy = dqn.greedy_action(agent.params, jnp.eye(4), config)
    np.testing.assert_array_equal(greedy, np.arange(4))
    returns = np.asarray(metrics["episode_return"])[np.asarray(metrics["done"])]
    assert returns[:20].mean() < 2.0 < 4.0 < returns[-20:].mean()  # random: 1.25 of 5


def test_vmap_over_seeds_gives_the_separate_runs():
    config = dqn.DQNConfig(hidden_sizes=(8,), batch_size=8, learning_starts=8, total_steps=60)
    train = dqn.make_train(Bandit(), None, config, num_actions=4)
    keys = jax.random.split(jax.random.key(3), 2)
    batched, metrics = jax.jit(jax.vmap(train))(keys)
    single, single_metrics = jax.jit(train)(keys[1])
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a[1], b, rtol=1e-4, atol=1e-5),
        batched.params,
        single.params,
    )
    np.testing.assert_array_equal(metrics["action"][1], single_metrics["action"])


def test_bad_configs_are_refused():
    with pytest.raises(JPanningError, match="batch_size"):
        dqn.validate_config(dqn.DQNConfig(batch_size=500, buffer_size=400))
    with pytest.raises(JPanningError, match="exploration_fraction"):
        dqn.validate_config(dqn.DQNConfig(exploration_fraction=0.0))
    with pytest.raises(JPanningError, match="num_actions"):
        dqn.make_step(Bandit(), dqn.DQNConfig(), num_actions=1, obs_size=4)
