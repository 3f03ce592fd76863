"""PuRL (Gupta et al. 2020, "Learning to Prune Deep Neural Networks via Reinforcement
Learning"): a DQN agent walks the layers of a *trained* network and picks for each a threshold
α, pruning the weights with ``|w| < α·σ(w_layer)``; after each layer the network is retrained
briefly on a small training subset and evaluated, and the agent is rewarded at once (dense
rewards, unlike RL Panning's end-of-screening signal).

The environment (:class:`PuRLEnv`) has the functional gymnax API of :mod:`jpanning.env`: one
step prunes one layer (in forward order), retrains on ``retrain_images`` examples with the mask
held, and measures accuracy A on ``eval_images`` held-out training examples and the sparsity P
of all prunable weights so far. The reward is ``R = −β (max(1 − A/T_A, 0) + max(1 − P/T_P, 0))``
with T_A the target accuracy (default: the trained network's accuracy on the same examples) and
T_P the target sparsity (``run.py --ratio``). The state is ``(layer index, A, P)`` or the
``2n`` per-layer form (accuracy after each layer so far, sparsity of each layer). An episode
ends after the last layer, or early when A falls below ``collapse_accuracy · T_A`` (then the
step's penalty counts once for every layer not visited, so collapsing never pays).

After training, the α of each layer is the mean over ``final_episodes`` greedy episodes, and the
final mask prunes the trained network with those α in one shot; ``run.py`` then fine-tunes.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from jpanning import checkpoint as checkpoint_lib, flops, masks as masks_lib, pruning, report, train
from jpanning.agents import dqn, loop
from jpanning.options import number, option, positive, shared
from jpanning.errors import JPanningError

PyTree = Any


@dataclasses.dataclass(frozen=True)
class PuRLConfig:
    """PuRL's settings (serialised into results.json).

    Attributes:
        alpha_step, alpha_max: the actions are α ∈ {0, step, 2·step, ..., alpha_max}.
        episodes: DQN training episodes (one step per prunable layer).
        final_episodes: greedy episodes whose α are averaged into the final mask.
        retrain_images, retrain_batch: the short retraining after each layer: one pass of
            ``retrain_images // retrain_batch`` SGD steps over that many training examples.
        retrain_lr, retrain_momentum: its SGD settings (masks held exactly).
        eval_images: held-out training examples on which A is measured.
        target_accuracy: T_A; None: the trained network's accuracy on the eval examples.
        beta: β, the reward's scale.
        state: ``'per_layer'`` (2n values ⟨a_1, p_1, …, a_n, p_n⟩, zeros at the start of an
            episode: the paper's final configuration, chosen by its ImageNet ablation) or
            ``'compact'`` (layer/n, A, P: that ablation's baseline).
        collapse_accuracy: stop an episode when A < this × T_A (0: never).
        dqn: the agent's settings (``total_steps`` is set from ``episodes``).
    """

    alpha_step: float = 0.2
    alpha_max: float = 2.2
    episodes: int = 55
    final_episodes: int = 5
    retrain_images: int = 1000
    retrain_batch: int = 100
    retrain_lr: float = 0.01
    retrain_momentum: float = 0.9
    eval_images: int = 1000
    target_accuracy: Optional[float] = None
    beta: float = 1.0
    state: str = "per_layer"
    collapse_accuracy: float = 0.0
    dqn: dqn.DQNConfig = dqn.DQNConfig()

    @property
    def alphas(self) -> np.ndarray:
        count = int(round(self.alpha_max / self.alpha_step)) + 1
        return np.round(np.arange(count) * self.alpha_step, 6).astype(np.float32)

    def validate(self) -> "PuRLConfig":
        if not self.alpha_step > 0 or not self.alpha_max >= self.alpha_step:
            raise JPanningError(
                f"purl needs 0 < alpha_step <= alpha_max, got {self.alpha_step}, {self.alpha_max}"
            )
        for name in ("episodes", "final_episodes", "retrain_batch", "eval_images"):
            if int(getattr(self, name)) < 1:
                raise JPanningError(f"purl {name} must be >= 1, got {getattr(self, name)}")
        if self.retrain_images < self.retrain_batch:
            raise JPanningError(
                f"purl retrain_images ({self.retrain_images}) must be >= retrain_batch "
                f"({self.retrain_batch})"
            )
        if self.state not in ("compact", "per_layer"):
            raise JPanningError(f"purl state {self.state!r}; choose compact or per_layer")
        if not 0.0 <= self.collapse_accuracy < 1.0:
            raise JPanningError(
                f"purl collapse_accuracy must be in [0, 1), got {self.collapse_accuracy}"
            )
        dqn.validate_config(self.dqn)
        return self


PRESETS = {
    # PuRL's settings where the paper gives them (55 episodes, the DQN defaults); 1,000
    # retraining images per layer as on ImageNet.
    "paper": PuRLConfig(),
    # Minutes on a CPU for ResNet-20: a smoke test of the method, not a trained policy.
    "quick": PuRLConfig(
        episodes=8,
        retrain_images=128,
        retrain_batch=64,
        eval_images=256,
        dqn=dqn.DQNConfig(batch_size=16, learning_starts=16),
    ),
}


# -- the functional core ----------------------------------------------------------------------


def layer_ids(prunable: PyTree, order: list[str]) -> PyTree:
    """A pytree like ``prunable``: each prunable leaf's position in ``order``, others −1."""
    position = {path: i for i, path in enumerate(order)}
    flat = traverse_util.flatten_dict(prunable)
    return traverse_util.unflatten_dict(
        {p: (position["/".join(p)] if flag else -1) for p, flag in flat.items()}
    )


def threshold_masks(params: PyTree, ids: PyTree, alphas: jax.Array) -> PyTree:
    """PuRL's pruning rule on every prunable layer at once: keep ``|w| >= α_l · std(w_l)``.

    Args:
        params: the network's params.
        ids: :func:`layer_ids` (−1 for leaves that are never pruned).
        alphas: ``[n]`` α per layer, in the order of ``ids``.
    Returns:
        A 0/1 float mask pytree (ones on the leaves that are never pruned).
    """

    def leaf(w, i):
        if i < 0:
            return jnp.ones_like(w)
        return (jnp.abs(w) >= alphas[i] * jnp.std(w)).astype(w.dtype)

    return jax.tree.map(leaf, params, ids)


def reward_fn(accuracy, sparsity, target_accuracy, target_sparsity, beta):
    """``−β (max(1 − A/T_A, 0) + max(1 − P/T_P, 0))``."""
    return -beta * (
        jnp.maximum(1.0 - accuracy / target_accuracy, 0.0)
        + jnp.maximum(1.0 - sparsity / target_sparsity, 0.0)
    )


@flax.struct.dataclass
class EnvParams:
    """What an episode starts from: the trained network and the data it retrains/evaluates on."""

    params: PyTree
    batch_stats: PyTree
    retrain_images: jax.Array  # [N, H, W, C]
    retrain_labels: jax.Array  # [N]
    eval_images: jax.Array  # [M, H, W, C]
    eval_labels: jax.Array  # [M]
    alphas: jax.Array  # [K] the action table
    dense_accuracy: jax.Array  # [] the trained network's accuracy on the eval examples
    target_accuracy: jax.Array  # [] T_A
    target_sparsity: jax.Array  # [] T_P
    beta: jax.Array
    collapse_accuracy: jax.Array


@flax.struct.dataclass
class EnvState:
    """The network being pruned and what the agent has seen so far."""

    layer: jax.Array  # the next layer to prune, 0..n
    params: PyTree
    batch_stats: PyTree
    masks: PyTree
    accuracy: jax.Array
    sparsity: jax.Array  # of all prunable weights
    layer_accuracy: jax.Array  # [n] accuracy after pruning each layer (0: not yet)
    layer_sparsity: jax.Array  # [n]
    layer_alpha: jax.Array  # [n] the α chosen per layer


class PuRLEnv:
    """PuRL's layer-by-layer pruning environment (gymnax API; see the module docstring).

    Args:
        model: the Flax module (called with ``train=True/False``).
        prunable: the bool pytree of prunable leaves.
        order: prunable kernel paths in the order the agent visits them
            (:func:`jpanning.flops.prunable_layer_order`: forward order).
        config: retraining sizes and the state form.
    """

    def __init__(self, model: nn.Module, prunable: PyTree, order: list[str], config: PuRLConfig):
        self.model, self.prunable, self.order = model, prunable, list(order)
        self.config = config.validate()
        self.ids = layer_ids(prunable, self.order)
        self.num_layers = len(self.order)
        self.num_actions = len(config.alphas)
        self.retrain_steps = config.retrain_images // config.retrain_batch
        self.obs_size = 3 if config.state == "compact" else 2 * self.num_layers
        self._eval = train.eval_step_fn(model)

    # -- pieces -------------------------------------------------------------------------------

    def accuracy(self, params, batch_stats, images, labels) -> jax.Array:
        """Accuracy of the network on ``images`` (running BatchNorm statistics)."""
        _, correct = self._eval(params, batch_stats, images, labels, jnp.ones(labels.shape))
        return correct / labels.shape[0]

    def retrain(self, key, params, batch_stats, masks, env_params: EnvParams):
        """``retrain_images // retrain_batch`` masked SGD steps on a random draw of the
        retraining examples; pruned weights stay exactly zero."""
        tx = masks_lib.masked_optimizer(
            optax.sgd(self.config.retrain_lr, momentum=self.config.retrain_momentum), masks
        )
        step = train.train_step_fn(self.model, tx, augment=False)
        n = env_params.retrain_labels.shape[0]
        batch = self.config.retrain_batch
        index = jax.random.permutation(key, n)[: self.retrain_steps * batch]
        index = index.reshape(self.retrain_steps, batch)
        state = train.TrainState(
            step=jnp.int32(0), params=params, batch_stats=batch_stats, opt_state=tx.init(params)
        )

        def body(state, ix):
            state, _ = step(
                state, key, env_params.retrain_images[ix], env_params.retrain_labels[ix]
            )
            return state, None

        # unrolled (a few steps): a user's network with lax's convolution would run its
        # gradients many times slower inside a loop body on XLA:CPU (see jpanning.cpu)
        state, _ = jax.lax.scan(body, state, index, unroll=True)
        return state.params, state.batch_stats

    def layer_counts(self, masks) -> tuple[jax.Array, np.ndarray]:
        """``([n] kept weights, [n] layer sizes)`` in visiting order."""
        flat = traverse_util.flatten_dict(masks)
        leaves = [flat[tuple(p.split("/"))] for p in self.order]
        return jnp.stack([jnp.sum(m) for m in leaves]), np.array([m.size for m in leaves])

    def observation(self, state: EnvState) -> jax.Array:
        if self.config.state == "compact":
            return jnp.stack(
                [state.layer / self.num_layers, state.accuracy, state.sparsity]
            ).astype(jnp.float32)
        return jnp.concatenate([state.layer_accuracy, state.layer_sparsity]).astype(jnp.float32)

    # -- gymnax API ---------------------------------------------------------------------------

    def reset(self, key, env_params: EnvParams):
        n = self.num_layers
        state = EnvState(
            layer=jnp.int32(0),
            params=env_params.params,
            batch_stats=env_params.batch_stats,
            masks=jax.tree.map(jnp.ones_like, env_params.params),
            accuracy=jnp.asarray(env_params.dense_accuracy, jnp.float32),
            sparsity=jnp.float32(0.0),
            layer_accuracy=jnp.zeros((n,), jnp.float32),
            layer_sparsity=jnp.zeros((n,), jnp.float32),
            layer_alpha=jnp.zeros((n,), jnp.float32),
        )
        return self.observation(state), state

    def step(self, key, state: EnvState, action, env_params: EnvParams):
        """Prune layer ``state.layer`` at α = ``alphas[action]``, retrain, evaluate, reward."""
        alpha = env_params.alphas[action]
        layer = state.layer
        alphas = jnp.full((self.num_layers,), -1.0).at[layer].set(alpha)
        # Only the visited layer changes: the others keep their mask (a negative α keeps all).
        cut = threshold_masks(state.params, self.ids, jnp.maximum(alphas, 0.0))
        visit = jax.tree.map(lambda i: i == layer, self.ids)
        masks = jax.tree.map(lambda m, c, v: jnp.where(v, m * c, m), state.masks, cut, visit)
        params = masks_lib.apply(state.params, masks)
        params, batch_stats = self.retrain(key, params, state.batch_stats, masks, env_params)
        accuracy = self.accuracy(
            params, batch_stats, env_params.eval_images, env_params.eval_labels
        ).astype(jnp.float32)
        kept, sizes = self.layer_counts(masks)
        sparsity = (1.0 - jnp.sum(kept) / sizes.sum()).astype(jnp.float32)
        reward = reward_fn(
            accuracy,
            sparsity,
            env_params.target_accuracy,
            env_params.target_sparsity,
            env_params.beta,
        )
        last = layer + 1 >= self.num_layers
        collapsed = accuracy < env_params.collapse_accuracy * env_params.target_accuracy
        # an early stop is charged this step's penalty for every layer left unvisited
        reward = jnp.where(collapsed & ~last, reward * (self.num_layers - layer), reward)
        new_state = EnvState(
            layer=layer + 1,
            params=params,
            batch_stats=batch_stats,
            masks=masks,
            accuracy=accuracy,
            sparsity=sparsity,
            layer_accuracy=state.layer_accuracy.at[layer].set(accuracy),
            layer_sparsity=(1.0 - kept / sizes).astype(jnp.float32),
            layer_alpha=state.layer_alpha.at[layer].set(alpha),
        )
        info = {"alpha": alpha, "accuracy": accuracy, "sparsity": sparsity, "layer": layer}
        terminated = last | collapsed
        return (
            self.observation(new_state),
            new_state,
            reward.astype(jnp.float32),
            terminated,
            jnp.bool_(False),
            info,
        )


# -- the method --------------------------------------------------------------------------------


def make_env_params(
    env: PuRLEnv,
    variables: dict,
    retrain_data: tuple,
    eval_data: tuple,
    target_sparsity: float,
) -> EnvParams:
    """The trained network, its data, the action table and the targets."""
    config = env.config
    params, batch_stats = variables["params"], variables["batch_stats"]
    eval_images, eval_labels = (jnp.asarray(x) for x in eval_data)
    dense = float(jax.jit(env.accuracy)(params, batch_stats, eval_images, eval_labels))
    target = dense if config.target_accuracy is None else float(config.target_accuracy)
    if not target > 0:
        raise JPanningError(
            f"purl target accuracy must be > 0, got {target} (the trained network's accuracy "
            "on the eval examples when not given)"
        )
    return EnvParams(
        params=params,
        batch_stats=batch_stats,
        retrain_images=jnp.asarray(retrain_data[0]),
        retrain_labels=jnp.asarray(retrain_data[1]),
        eval_images=eval_images,
        eval_labels=eval_labels,
        alphas=jnp.asarray(config.alphas),
        dense_accuracy=jnp.float32(dense),
        target_accuracy=jnp.float32(target),
        target_sparsity=jnp.float32(target_sparsity),
        beta=jnp.float32(config.beta),
        collapse_accuracy=jnp.float32(config.collapse_accuracy),
    )


def agent_config(env: PuRLEnv) -> dqn.DQNConfig:
    """The DQN settings with ``total_steps`` = episodes × layers."""
    return env.config.dqn.replace(total_steps=env.config.episodes * env.num_layers)


def greedy_episodes(env: PuRLEnv, env_params: EnvParams, q_params, key, episodes: int):
    """Run ``episodes`` greedy episodes (one jitted call per layer, from the host, as the
    training does); returns ``[episodes, n]`` α and each episode's final accuracy and sparsity
    (an episode stopped early keeps α = 0 for the layers it did not visit)."""
    config = env.config.dqn

    @jax.jit
    def act_and_step(key, obs, state):
        action = dqn.greedy_action(q_params, obs, config)
        obs, state, _, terminated, _, _ = env.step(key, state, action, env_params)
        return obs, state, terminated

    alphas, accuracy, sparsity = [], [], []
    for episode_key in jax.random.split(key, episodes):
        k_reset, k_steps = jax.random.split(episode_key)
        obs, state = jax.jit(env.reset)(k_reset, env_params)
        for t in range(env.num_layers):
            obs, state, terminated = act_and_step(jax.random.fold_in(k_steps, t), obs, state)
            if bool(terminated):
                break
        alphas.append(np.asarray(state.layer_alpha))
        accuracy.append(float(state.accuracy))
        sparsity.append(float(state.sparsity))
    return np.stack(alphas), np.asarray(accuracy), np.asarray(sparsity)


@dataclasses.dataclass
class PuRLResult:
    """What :func:`run` produced: the masks and everything the report needs."""

    masks: PyTree
    alphas: np.ndarray  # [n] final α per layer (mean over the greedy episodes)
    episode_alphas: np.ndarray  # [final_episodes, n]
    final_accuracy: np.ndarray  # [final_episodes] A at the end of each greedy episode
    final_sparsity: np.ndarray
    layers: list[str]
    metrics: dict  # DQN training metrics, numpy [total_steps, ...]
    dense_accuracy: float
    target_accuracy: float
    config: PuRLConfig
    search_seconds: float


@dataclasses.dataclass(frozen=True)
class TrainedOptions:
    """The options of a method that prunes a trained network: a run trains it first, or
    loads it."""

    pretrained: Optional[str] = shared("pretrained")
    pretrain_epochs: Optional[int] = shared("pretrain_epochs")


@dataclasses.dataclass(frozen=True)
class PuRLOptions:
    """PuRL's options (``run.py --method purl``); None: the preset's (:data:`PRESETS`)."""

    preset: Optional[str] = shared("preset")
    purl_episodes: Optional[int] = option(
        None, "DQN training episodes (default: the preset's; paper 55, quick 8)",
        parse=positive(int),
    )  # fmt: skip
    purl_alpha_step: Optional[float] = option(
        None,
        "spacing of the α grid {0, step, ..., 2.2} (0.2; the paper also uses 0.1)",
        parse=positive(float),
    )
    purl_state: Optional[str] = option(
        None,
        "the agent's state, 2n per-layer accuracies and sparsities (per_layer, the paper's "
        "final choice) or (layer, accuracy, sparsity) (compact, its ablation)",
        choices=("compact", "per_layer"),
    )
    purl_collapse: Optional[float] = option(
        None,
        "end an episode when accuracy falls below FRACTION x the target (off)",
        parse=number(float),
        metavar="FRACTION",
    )
    pretrained: Optional[str] = shared("pretrained")
    pretrain_epochs: Optional[int] = shared("pretrain_epochs")


# PuRLOptions' overrides of the preset: option to PuRLConfig field
OVERRIDES = {"purl_episodes": "episodes", "purl_alpha_step": "alpha_step",
             "purl_state": "state", "purl_collapse": "collapse_accuracy"}  # fmt: skip


def config_from_options(options) -> PuRLConfig:
    """The preset named by the ``preset`` option (``paper``/``quick``) with the overrides
    ``purl_episodes``, ``purl_alpha_step``, ``purl_state`` and ``purl_collapse`` where given
    (:data:`OVERRIDES`). ``options``: :class:`PuRLOptions`, or a dict of its fields."""
    if isinstance(options, dict):
        options = PuRLOptions(**options)
    given = {
        field: getattr(options, name)
        for name, field in OVERRIDES.items()
        if getattr(options, name) is not None
    }
    config = pruning.preset(PRESETS, "purl", options.preset)
    return dataclasses.replace(config, **given).validate()


def run(
    problem: pruning.PruneProblem,
    *,
    callback: Optional[Callable] = None,
    checkpoints=None,
    stop: Callable = checkpoint_lib.never,
) -> PuRLResult:
    """Train the DQN agent on ``problem``'s trained network, then prune it with the mean α.

    ``problem.variables`` must be the *trained* network; ``problem.data`` is
    ``((retrain images, labels), (eval images, labels))`` from the training split, and
    ``problem.sparsity`` is T_P. ``callback(t, metrics)`` follows every agent step;
    ``checkpoints`` and ``stop`` make the DQN training resumable
    (:func:`jpanning.agents.loop.host_loop`).
    """
    config = config_from_options(pruning.options_of(problem, PuRLOptions))
    if problem.data is None:
        raise JPanningError("purl needs problem.data (retraining and eval examples)")
    retrain_data, eval_data = problem.data
    input_shape = tuple(np.shape(retrain_data[0])[1:])
    order = flops.prunable_layer_order(
        problem.model, problem.variables, problem.prunable, input_shape
    )
    env = PuRLEnv(problem.model, problem.prunable, order, config)
    env_params = make_env_params(env, problem.variables, retrain_data, eval_data, problem.sparsity)
    k_train, k_final = jax.random.split(problem.key)
    start = time.perf_counter()
    agent, metrics = dqn.train_loop(
        env,
        env_params,
        agent_config(env),
        k_train,
        num_actions=env.num_actions,
        obs_size=env.obs_size,
        callback=callback,
        checkpoints=checkpoints,
        stop=stop,
    )
    alphas, accuracy, sparsity = greedy_episodes(
        env, env_params, agent.params, k_final, config.final_episodes
    )
    mean_alpha = alphas.mean(axis=0)
    masks = jax.jit(lambda p, a: threshold_masks(p, env.ids, a))(
        problem.params, jnp.asarray(mean_alpha)
    )
    return PuRLResult(
        masks=jax.block_until_ready(masks),
        alphas=mean_alpha,
        episode_alphas=alphas,
        final_accuracy=accuracy,
        final_sparsity=sparsity,
        layers=order,
        metrics=metrics,
        dense_accuracy=float(env_params.dense_accuracy),
        target_accuracy=float(env_params.target_accuracy),
        config=config,
        search_seconds=time.perf_counter() - start,
    )


def _screen(problem: pruning.PruneProblem, context: pruning.ScreenContext):
    """PuRL in a run: draw its retraining/eval examples, train the DQN agent (progress bar,
    checkpoints), prune; the α per layer and the learning curve are plotted in the run's
    folder."""
    run_config, options = context.config, pruning.options_of(problem, PuRLOptions)
    config = config_from_options(options)
    data = split_examples(context.dataset, config, run_config.seed)
    problem = dataclasses.replace(problem, data=data)
    print(
        f"purl: DQN over the layers, {config.episodes} episodes, α in "
        f"{{0, {config.alpha_step:g}, ..., {config.alpha_max:g}}}, retraining on "
        f"{config.retrain_images} examples per layer ({options.preset} preset)"
    )
    layers = sum(bool(f) for f in jax.tree.leaves(problem.prunable))
    with (
        context.progress("PuRL search", config.episodes * layers) as progress,
        context.checkpoints() as ckpt,
    ):
        result = run(problem, callback=progress, checkpoints=ckpt, stop=context.stop)
    return result.masks, {"purl": _report(context, result, problem.prunable)}


def _report(context: pruning.ScreenContext, result: PuRLResult, prunable) -> dict:
    """The α per layer (PNG), the DQN learning curve (PNG), the ``purl`` entry of results."""

    run_config, out = context.config, context.out
    name = f"{run_config.model} / {run_config.data.dataset}"
    layers = masks_lib.sparsity_report(result.masks, prunable)["layers"]
    metrics = result.metrics
    steps, returns = (x.tolist() for x in loop.episode_returns(metrics))
    report.plot_layer_alphas(
        result.layers,
        result.alphas,
        [layers[layer]["density"] for layer in result.layers],
        os.path.join(out, "purl_alphas.png"),
        f"PuRL: {name}, target sparsity {run_config.pruning.ratio}",
    )
    report.plot_learning_curve(
        steps, returns, os.path.join(out, "purl_curve.png"), f"PuRL DQN: {name}"
    )
    print(
        "purl: α per layer "
        + " ".join(f"{a:.2f}" for a in result.alphas)
        + f"; greedy episodes ended at accuracy {result.final_accuracy.mean():.4f}, "
        f"sparsity {result.final_sparsity.mean():.4f} (before fine-tuning)"
    )
    return {
        "layers": result.layers,
        "alphas": result.alphas.tolist(),
        "episode_alphas": result.episode_alphas.tolist(),
        "final_accuracy": result.final_accuracy.tolist(),
        "final_sparsity": result.final_sparsity.tolist(),
        "dense_accuracy": result.dense_accuracy,
        "target_accuracy": result.target_accuracy,
        "episode_end_steps": steps,
        "episode_returns": returns,
        "epsilon": metrics["epsilon"].tolist(),
        "search_seconds": result.search_seconds,
        "config": dataclasses.asdict(result.config),
        "files": {"purl_alphas": "purl_alphas.png", "purl_curve": "purl_curve.png"},
    }


@pruning.register_method(
    "purl", trained=True, presets=tuple(PRESETS), options=PuRLOptions, screen=_screen
)
def purl(problem: pruning.PruneProblem):
    """PuRL as a ``run.py --method`` on a trained network (``run.py`` trains or loads it).

    Options: :class:`PuRLOptions`; ``problem.data``: see :func:`run`.
    """
    return run(problem).masks


@pruning.register_method("uniform", trained=True, options=TrainedOptions)
def uniform(problem: pruning.PruneProblem):
    """PuRL's baseline: the same sparsity in every layer, by magnitude of the trained weights
    (``run.py`` trains or loads the network first)."""
    return pruning.magnitude(dataclasses.replace(problem, scope="layer"))


def split_examples(dataset, config: PuRLConfig, seed: int) -> tuple[tuple, tuple]:
    """Disjoint seeded draws from the training split: ``retrain_images`` examples to retrain
    on and ``eval_images`` to measure A on (the test split is never seen)."""
    need = config.retrain_images + config.eval_images
    if need > dataset.num_train:
        raise JPanningError(
            f"purl needs {config.retrain_images} + {config.eval_images} training examples, "
            f"{dataset.name} has {dataset.num_train} here"
        )
    index = np.random.default_rng([seed, 2020]).permutation(dataset.num_train)
    retrain, held = index[: config.retrain_images], index[config.retrain_images : need]
    return (
        (dataset.train_images[retrain], dataset.train_labels[retrain]),
        (dataset.train_images[held], dataset.train_labels[held]),
    )
