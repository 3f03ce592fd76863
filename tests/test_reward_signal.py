"""benchmarks.reward_signal: the rest-of-episode reward after a probed action, and the greedy
controller, against policy_eval's episodes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import policy_eval, reward_signal
from jpanning import data, rlpanning

pytestmark = pytest.mark.slow  # building an environment and its pool: ~30 s on 2 cores

CONFIG = rlpanning.RLPanningConfig(rounds=4, scoring="pool", pool_size=2)
TARGET = 0.8


@pytest.fixture(scope="module")
def env():
    dataset = data.load_dataset("synthetic")
    env, env_params, key = policy_eval.build("tinycnn", dataset, CONFIG, 0, 1)
    return env, env_params, key, jax.jit(env.step), jax.jit(env.reset)


def test_future_completes_the_staircase_episode_it_probes(env):
    env, env_params, key, step, reset = env
    stairs = policy_eval.staircase_actions(TARGET, CONFIG.rounds, CONFIG.fusion)
    k_episode = jax.random.fold_in(key, int(round(TARGET * 1e4)))
    k_reset, k_steps = jax.random.split(k_episode)
    played = policy_eval.play(
        env, env_params, step, reset, lambda t, obs: stairs[t], TARGET, k_episode, None
    )
    t = 1  # probe round 1 with the staircase's own action on the episode's own key
    _, state = reset(k_reset, env_params, TARGET, None)
    before = 0.0
    for u in range(t):
        _, state, reward, *_ = step(jax.random.fold_in(k_steps, u), state, stairs[u], env_params)
        before += float(reward)
    _, _, now, *_ = step(jax.random.fold_in(k_steps, t), state, stairs[t], env_params)
    actions = [stairs[t], -jnp.ones(3).at[0].set(1.0)]  # the staircase's row, SynFlow alone
    k_probes = [jax.random.fold_in(k_steps, t), jax.random.key(9)]
    table = reward_signal.future(step, env_params, state, actions, stairs, t, k_steps, k_probes)
    assert table.shape == (2, 2)
    # the staircase's own action on its own key: the rest of the very episode policy_eval played
    assert before + float(now) + table[0, 0] == pytest.approx(played["return"], rel=1e-5)
    # another action leaves other masks, and the rounds after it see them
    assert table[0, 1] != table[0, 0]


def replay_start(env_params, reset, key):
    """What a replay of a greedy episode starts from, derived by hand: the candidates' names,
    the staircase, the step keys (policy_eval's episode key) and the reset state."""
    stairs = policy_eval.staircase_actions(TARGET, CONFIG.rounds, CONFIG.fusion)
    k_reset, k_steps = jax.random.split(jax.random.fold_in(key, int(round(TARGET * 1e4))))
    _, state = reset(k_reset, env_params, TARGET, None)
    return reward_signal.action_names(2), stairs, k_steps, state


def test_greedy_keeps_the_best_candidate_each_round(env):
    env, env_params, key, step, reset = env
    draws = reward_signal.greedy_draws(key, 2)
    totals, picks, state = reward_signal.greedy_episode(
        step, reset, env_params, CONFIG, TARGET, key, None, draws
    )
    assert len(picks) == CONFIG.rounds and set(picks) <= set(reward_signal.action_names(2))
    # replayed with its own picks, the episode's return is the greedy one, and no candidate
    # would have paid more at any round
    names, stairs, k_steps, s = replay_start(env_params, reset, key)
    total = 0.0
    for t, pick in enumerate(picks):
        k_t = jax.random.fold_in(k_steps, t)
        options = reward_signal.candidates(stairs[t], draws)
        rewards = [float(step(k_t, s, jnp.asarray(a, jnp.float32), env_params)[2]) for a in options]
        assert rewards[names.index(pick)] == max(rewards)
        _, s, reward, *_ = step(k_t, s, jnp.asarray(options[names.index(pick)]), env_params)
        total += float(reward)
    assert totals["return"] == pytest.approx(total, rel=1e-6)
    np.testing.assert_array_equal(
        np.asarray(jax.tree.leaves(state.masks)[0]), np.asarray(jax.tree.leaves(s.masks)[0])
    )


def test_batch_blind_greedy_picks_by_other_batches_and_steps_on_its_own(env):
    env, env_params, key, step, reset = env
    draws = reward_signal.greedy_draws(key, 2)
    totals, picks, _ = reward_signal.greedy_episode(
        step, reset, env_params, CONFIG, TARGET, key, None, draws, probes=2
    )
    names, stairs, k_steps, s = replay_start(env_params, reset, key)
    total = 0.0
    for t, pick in enumerate(picks):
        options = [jnp.asarray(a, jnp.float32) for a in reward_signal.candidates(stairs[t], draws)]
        probes = [jax.random.fold_in(jax.random.fold_in(k_steps, 20_000 + t), k) for k in (0, 1)]
        means = [np.mean([float(step(k, s, a, env_params)[2]) for k in probes]) for a in options]
        assert names.index(pick) == int(np.argmax(means))  # chosen on the other batches
        _, s, reward, *_ = step(jax.random.fold_in(k_steps, t), s, options[names.index(pick)],
                                env_params)  # fmt: skip
        total += float(reward)  # ...and stepped on the round's own
    assert totals["return"] == pytest.approx(total, rel=1e-6)
