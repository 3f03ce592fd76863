"""RL Panning's environment against the authors' definitions, re-derived independently.

The reference below follows kangxiatao/RLPanning (``pruner/panning.py``: ``normalization``,
``get_loss_gtg``, ``PruningEnv.__init__``/``reset``/``step``) line by line, in float64 NumPy
and ``jax.grad`` on a tiny CNN with BatchNorm written here; it calls nothing of
``jpanning`` but the environment under test and its batch draw (which batch a step uses is
sampling, not maths). Every term of every step is compared: the masks, the kept count, the
7 observations, the reward and its terms, ``done``, the effective sparsity, and the
normalisation ranges, over two episodes with the ranges carried from the first.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jpanning import env as E, masks as M, scores as S

KERNELS = ("conv1", "conv2", "dense")  # the authors' Conv2d/Linear weights: all prunable
EPS = 1e-5


def _conv(x, k):
    return jax.lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _bn(x, p, train):
    if train:  # batch statistics (the authors' net.train())
        mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    else:  # running statistics at initialization: mean 0, variance 1
        mean, var = 0.0, 1.0
    return (x - mean) / jnp.sqrt(var + EPS) * p["scale"] + p["bias"]


def apply(params, x, train):
    h = jax.nn.relu(_bn(_conv(x, params["conv1"]["kernel"]), params["bn1"], train))
    h = jax.nn.relu(_bn(_conv(h, params["conv2"]["kernel"]), params["bn2"], train))
    return h.mean((1, 2)) @ params["dense"]["kernel"] + params["dense"]["bias"]


def init_params(key):
    k = jax.random.split(key, 7)
    f64 = jnp.float64
    return {
        "conv1": {"kernel": jax.random.normal(k[0], (3, 3, 1, 4), f64) * 0.5},
        "bn1": {"scale": 1 + 0.1 * jax.random.normal(k[1], (4,), f64),
                "bias": 0.1 * jax.random.normal(k[2], (4,), f64)},
        "conv2": {"kernel": jax.random.normal(k[3], (3, 3, 4, 4), f64) * 0.3},
        "bn2": {"scale": 1 + 0.1 * jax.random.normal(k[4], (4,), f64),
                "bias": 0.1 * jax.random.normal(k[5], (4,), f64)},
        "dense": {"kernel": jax.random.normal(k[6], (4, 3), f64) * 0.5,
                  "bias": jnp.array([0.1, -0.2, 0.05], f64)},
    }  # fmt: skip


# -- the authors' maths, re-derived ------------------------------------------------------------


def _with(params, kernels):
    out = {k: dict(v) for k, v in params.items()}
    for name, w in kernels.items():
        out[name]["kernel"] = w
    return out


def _kernels(params):
    return {name: params[name]["kernel"] for name in KERNELS}


def loss_gtg(params, batch, kernels):
    """``get_loss_gtg``: loss on logits / 200 (train mode) and Σ ‖∂L/∂w‖² over every
    conv/linear weight tensor, at the given weights."""
    x, y = batch

    def loss(ks):
        logits = apply(_with(params, ks), x, True) / S.TEMPERATURE
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(y)), y])

    g = jax.grad(loss)(kernels)
    return float(loss(kernels)), float(sum(jnp.sum(v**2) for v in g.values())), g, loss


def normalization(scores):
    """The authors' ``normalization``: divide by the mean, then |z-score| with torch's
    (Bessel-corrected) std."""
    flat = np.concatenate([np.ravel(v) for v in scores.values()])
    mean_div = flat.mean()
    flat = flat / mean_div
    std, mean = flat.std(ddof=1), flat.mean()
    return {k: np.abs((np.asarray(v) / mean_div - mean) / std) for k, v in scores.items()}


def dense_scores(params, batch):
    """What ``reset``/``step`` compute on the dense network: loss, gtg, SNIP, GraSP."""
    ks = _kernels(params)
    L, G, g, loss = loss_gtg(params, batch, ks)
    gtg = lambda w: sum(jnp.sum(v**2) for v in jax.grad(loss)(w).values())
    hg = jax.grad(gtg)(ks)  # their _Hg = ∂(Σ g²)/∂w = 2 H g
    snip = {k: np.asarray(ks[k] * g[k]) for k in KERNELS}
    grasp = {k: np.asarray(ks[k] * hg[k]) for k in KERNELS}
    return L, G, normalization(snip), normalization(grasp)


def synflow(params, masks, input_shape):
    """Their SynFlow network: every parameter made positive (``linearize``), eval mode,
    weights ``|w ⊙ m|``, all-ones input; scores ``w · ∂R/∂w`` with the signed w, and
    ``true_masks = (|w ⊙ m| · ∂R/∂w ≠ 0)``."""
    positive = jax.tree.map(jnp.abs, params)
    ks = _kernels(params)
    abs_masked = {k: jnp.abs(ks[k] * masks[k]) for k in KERNELS}
    ones = jnp.ones((1, *input_shape), jnp.float64)
    r = lambda w: jnp.sum(apply(_with(positive, w), ones, False))
    grad = jax.grad(r)(abs_masked)
    scores = {k: np.asarray(ks[k] * grad[k]) for k in KERNELS}
    true = {k: np.asarray(abs_masked[k] * grad[k]) != 0 for k in KERNELS}
    return normalization(scores), true


class AuthorsEnv:
    """``PruningEnv`` with the batches handed in (the environment under test draws them)."""

    def __init__(self, params, warmup, rounds, input_shape):
        self.params, self.rounds, self.input_shape = params, rounds, input_shape
        for i, batch in enumerate(warmup):  # __init__: 10 warm-up batches
            loss, gtg, _, _ = loss_gtg(params, batch, _kernels(params))
            if i == 0:
                self.max_loss, self.min_loss = loss / 100, loss * 100
                self.max_gtg, self.min_gtg = gtg / 100, gtg * 100
            else:
                self._widen(loss, gtg)

    def _widen(self, loss, gtg):
        self.max_loss, self.min_loss = max(self.max_loss, loss), min(self.min_loss, loss)
        self.max_gtg, self.min_gtg = max(self.max_gtg, gtg), min(self.min_gtg, gtg)

    def reset(self, ratio, batch):
        self.ratio, self.iter_cnt = ratio, 0
        self.masks = {k: np.ones(np.shape(self.params[k]["kernel"])) for k in KERNELS}
        loss, gtg, self.s_snip, self.s_grasp = dense_scores(self.params, batch)
        self.s_synflow, _ = synflow(self.params, self.masks, self.input_shape)
        norm_loss = (loss - self.min_loss) / (self.max_loss - self.min_loss)
        norm_gtg = (gtg - self.min_gtg) / (self.max_gtg - self.min_gtg)
        return np.array([norm_loss, norm_gtg, 0, 0, 0, 0, 0])

    def step(self, action, batch):
        score = {
            k: (action[0] + 1) * self.s_synflow[k]
            + (action[1] + 1) * self.s_snip[k]
            + (action[2] + 1) * self.s_grasp[k]
            for k in KERNELS
        }
        keep_ratio = (1.0 - self.ratio) ** ((self.iter_cnt + 1) / self.rounds)
        target_ratio = 1 - keep_ratio
        flat = np.concatenate([np.ravel(v) for v in score.values()])
        topk = int(len(flat) * (1 - target_ratio))
        topk = max(topk, 1)
        threshold = np.sort(flat)[::-1][topk - 1]
        self.masks = {k: (v >= threshold).astype(np.float64) for k, v in score.items()}

        loss, gtg, self.s_snip, self.s_grasp = dense_scores(self.params, batch)
        self.s_synflow, true = synflow(self.params, self.masks, self.input_shape)
        self._widen(loss, gtg)
        masked = {k: self.params[k]["kernel"] * self.masks[k] for k in KERNELS}
        sub_loss, sub_gtg, _, _ = loss_gtg(self.params, batch, masked)
        self._widen(sub_loss, sub_gtg)
        norm_loss = (loss - self.min_loss) / (self.max_loss - self.min_loss)
        norm_gtg = (gtg - self.min_gtg) / (self.max_gtg - self.min_gtg)
        r_loss = abs((sub_loss - loss) / (self.max_loss - self.min_loss))
        r_gtg = abs((sub_gtg - gtg) / (self.max_gtg - self.min_gtg)) / 5
        n = sum(v.size for v in true.values())
        effe_ratio = 1 - sum(v.sum() for v in true.values()) / n
        r_ratio = abs(target_ratio - effe_ratio) * 100
        state = np.array(
            [norm_loss, norm_gtg, r_loss, r_gtg, effe_ratio, target_ratio,
             self.iter_cnt / self.rounds]
        )  # fmt: skip
        reward = -r_ratio - r_loss - r_gtg
        r_done = 0.0
        if effe_ratio == 1:
            done = True
            r_done = (1 - self.iter_cnt / self.rounds) * self.rounds
            reward -= r_done
        else:
            done = self.iter_cnt + 1 >= self.rounds
        self.iter_cnt += 1
        terms = {"r_sparsity": r_ratio, "r_loss": r_loss, "r_gtg": r_gtg, "r_done": r_done,
                 "kept": topk, "effective": effe_ratio}  # fmt: skip
        return state, reward, done, terms


# -- the comparison ----------------------------------------------------------------------------

INPUT_SHAPE = (6, 6, 1)
ROUNDS = 3


@pytest.fixture(scope="module")
def setup():
    with jax.enable_x64(True):
        params = init_params(jax.random.key(1))
        kx = jax.random.split(jax.random.key(2), 2)
        xs = jax.random.normal(kx[0], (3, 6, *INPUT_SHAPE), jnp.float64)
        ys = jnp.tile(jnp.arange(3), (3, 2))  # 3 pool batches, 2 examples of each class
        prunable = M.prunable_tree(params)
        assert [k for k, f in jax.tree_util.tree_leaves_with_path(prunable) if f]  # kernels
        env = E.PanningEnv(
            functools.partial(apply, train=True),
            functools.partial(apply, train=False),
            prunable,
            INPUT_SHAPE,
        )
        env_params = env.make_params(params, xs, ys, rounds=ROUNDS)
    return env, env_params, params


def _batch(env_params, index):
    return (env_params.inputs[index], env_params.labels[index])


def _compare_step(got, want, masks, env_masks):
    obs, reward, done, terms = want
    g_obs, g_state, g_reward, g_terminated, g_truncated, info = got
    for k in KERNELS:  # the masks, entry by entry
        np.testing.assert_array_equal(np.asarray(env_masks[k]["kernel"]), masks[k])
    assert int(info["kept"]) == terms["kept"]
    np.testing.assert_allclose(np.asarray(g_obs), obs, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(float(g_reward), reward, rtol=1e-7, atol=1e-9)
    for name in ("r_sparsity", "r_loss", "r_gtg", "r_done"):
        np.testing.assert_allclose(float(info[name]), terms[name], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(float(g_state.effective), terms["effective"], rtol=0, atol=1e-12)
    assert bool(g_terminated) == done and not bool(g_truncated)


def test_two_episodes_match_the_authors_environment_term_by_term(setup):
    env, env_params, params = setup
    with jax.enable_x64(True):
        warmup = [_batch(env_params, i % 3) for i in range(E.WARMUP_BATCHES)]
        ref = AuthorsEnv(params, warmup, ROUNDS, INPUT_SHAPE)
        np.testing.assert_allclose(
            np.asarray(env_params.ranges.loss), [ref.min_loss, ref.max_loss], rtol=1e-12
        )
        np.testing.assert_allclose(
            np.asarray(env_params.ranges.grad_norm), [ref.min_gtg, ref.max_gtg], rtol=1e-12
        )
        step = jax.jit(env.step)
        actions = [(0.3, -0.6, 0.9), (-1.0, 1.0, 0.0), (0.8, 0.2, -0.4)]
        state = None
        for episode, target in enumerate((0.7, None)):
            key = jax.random.key(10 + episode)
            if state is None:
                obs, state = env.reset(key, env_params, target=target)
            else:  # the second episode starts from the first one's ranges
                obs, state = env.reset_after(key, state, env_params)
            target = float(state.target)
            want = ref.reset(
                target, _batch(env_params, env.draw(jax.random.split(key)[1], env_params)[1])
            )
            np.testing.assert_allclose(np.asarray(obs), want, rtol=1e-7, atol=1e-9)
            for t, action in enumerate(actions):
                k = jax.random.key(100 * episode + t)
                got = step(k, state, jnp.asarray(action), env_params)
                batch = _batch(env_params, env.draw(k, env_params)[1])
                want = ref.step(np.asarray(action), batch)
                _compare_step(got, want, ref.masks, got[1].masks)
                np.testing.assert_allclose(
                    np.asarray(got[5]["ranges"]),
                    [[ref.min_loss, ref.max_loss], [ref.min_gtg, ref.max_gtg]],
                    rtol=1e-12,
                )
                state = got[1]


def test_fresh_batches_match_the_authors_step(setup):
    env, _, params = setup
    with jax.enable_x64(True):
        xs = jax.random.normal(jax.random.key(3), (30, *INPUT_SHAPE), jnp.float64)
        ys = jnp.arange(30) % 3
        fresh = env.make_params(params, xs, ys, rounds=ROUNDS, scoring="fresh", samples_per_class=2)
        warm_keys = jax.random.split(jax.random.key(0), E.WARMUP_BATCHES)
        ref = AuthorsEnv(params, [env.draw(k, fresh)[0] for k in warm_keys], ROUNDS, INPUT_SHAPE)
        key = jax.random.key(4)
        obs, state = env.reset(key, fresh, target=0.6)
        want = ref.reset(0.6, env.draw(jax.random.split(key)[1], fresh)[0])
        np.testing.assert_allclose(np.asarray(obs), want, rtol=1e-7, atol=1e-9)
        for t in range(ROUNDS):
            k = jax.random.key(50 + t)
            action = np.array([0.1 * t, -0.3, 0.5])
            got = jax.jit(env.step)(k, state, jnp.asarray(action), fresh)
            want = ref.step(action, env.draw(k, fresh)[0])
            _compare_step(got, want, ref.masks, got[1].masks)
            state = got[1]


def test_a_fresh_batch_is_class_balanced_without_replacement(setup):
    env, _, params = setup
    labels = np.array([0] * 7 + [1] * 3 + [2] * 5)  # unequal classes: rows are padded
    with jax.enable_x64(True):
        xs = jnp.zeros((15, *INPUT_SHAPE))
        fresh = env.make_params(params, xs, labels, rounds=2, scoring="fresh", samples_per_class=3)
        seen = set()
        for i in range(20):
            (_, y), index = env.draw(jax.random.key(i), fresh)
            index = np.asarray(index)
            np.testing.assert_array_equal(np.asarray(y), np.repeat([0, 1, 2], 3))
            np.testing.assert_array_equal(labels[index], np.repeat([0, 1, 2], 3))
            assert len(set(index.tolist())) == 9  # no example twice
            seen.update(index.tolist())
        assert seen == set(range(15))  # every example can be drawn


@pytest.mark.slow  # 11 s
def test_round_zero_sparsity_term_is_near_zero_at_098(setup):
    """The authors' term compares ρe with the round's scheduled sparsity, so round 0 of a
    0.98 episode (ρ_0 = 1 − 0.02 ** 0.01 = 0.038) costs almost nothing; the old jpanning term
    ``α |0.98 − ρe|`` was about 94 here."""
    env, env_params, _ = setup
    with jax.enable_x64(True):
        params100 = env_params.replace(rounds=100)
        _, state = env.reset(jax.random.key(0), params100, target=0.98)
        _, _, reward, _, _, info = env.step(jax.random.key(1), state, jnp.zeros(3), params100)
    rho_0 = 1 - 0.02**0.01
    np.testing.assert_allclose(float(info["sparsity"]), rho_0, rtol=1e-6)
    assert float(info["r_sparsity"]) < 1.0  # 100 · |ρ_0 − ρe|: only the floor's rounding


def test_bias_paths_keep_weights_alive_in_the_authors_effective_sparsity(setup):
    """With conv1 pruned away, conv2 still sees bn1's positive shift: the authors count
    conv2 and dense alive (``|w m| · ∂R/∂w ≠ 0``), the path definition counts nothing."""
    env, env_params, params = setup
    with jax.enable_x64(True):
        masks = M.ones_like(params)
        masks["conv1"]["kernel"] = jnp.zeros_like(masks["conv1"]["kernel"])
        _, alive = env.synflow_maps(params, masks)
        _, true = synflow(params, {k: np.asarray(masks[k]["kernel"]) for k in KERNELS}, INPUT_SHAPE)
        for k in KERNELS:
            np.testing.assert_array_equal(np.asarray(alive[k]["kernel"]), true[k])
        assert not true["conv1"].any() and true["conv2"].all() and true["dense"].all()
        paths = S.effective_masks(env.synflow_apply_fn, masks, INPUT_SHAPE, prunable=env.prunable)
        assert M.sparsity_report(paths, env.prunable)["kept"] == 0
