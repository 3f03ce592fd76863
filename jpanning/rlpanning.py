"""RL Panning: a TD3 agent learns, round by round, how to weigh the Panning metrics.

The agent acts in :class:`jpanning.env.PanningEnv` (one Panning round per step, action
``a ∈ [−1, 1]³`` giving the SynFlow/SNIP/GraSP weights ``p = (a + 1) / 2``). Training draws
each episode's target sparsity from the authors' distributions: ``U(0.8, 1)`` for the first
``early_steps`` agent steps (their 10k of 50k), then half ``U(0.9, 1)``, half ``U(0.98, 1)``.
A trained policy then screens a network at any target in ``T`` environment steps and no
more training::

    env, env_params = build_env(problem, pool, config)       # dense maps scored once
    agent, metrics = search(env, env_params, config, key)    # TD3, host-driven jitted steps
    masks, trace = screen(env, env_params, agent.actor_params, config, 0.95, key)
    save_policy(path, agent.actor_params, config)            # msgpack, written atomically

The search steps run as jitted calls from a host loop
(:func:`jpanning.agents.td3.train_loop`), ``steps_per_call`` steps per call (a ``lax.scan``
when more than one), so progress can be reported between calls. The environment's
convolutions are ``jpanning.cpu.conv_general_dilated``, whose gradients keep XLA:CPU's fast
path inside a scan body (``python -m benchmarks.archive.loop_body_conv``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from jpanning import checkpoint as checkpoint_lib, env as env_lib, masks as masks_lib
from jpanning import panning as panning_lib, pruning, report
from jpanning.agents import loop, td3
from jpanning.options import flag, option, positive, shared
from jpanning.errors import JPanningError, RunFailed

PyTree = Any
POLICY_FORMAT = "jpanning-rlpanning-policy"
POLICY_VERSION = 2  # 2: the authors' environment (options and ranges stored)


@dataclasses.dataclass(frozen=True)
class RLPanningConfig:
    """The search and screening settings.

    Attributes:
        agent_steps: environment steps of the TD3 search (the authors: 50,000).
        rounds: T, Panning rounds per episode (100).
        pool_size: scoring batches in the environment's pool (``scoring='pool'``); each step
            draws one.
        early_steps: agent steps with the early target distribution; ``None``: a fifth of
            ``agent_steps`` (the authors' 10k of 50k).
        alpha: weight of ``|ρ_t − ρe|`` in the reward (the authors' 100).
        scoring: ``'pool'`` or ``'fresh'`` (the authors': a new batch every step, the dense
            maps recomputed); see :class:`jpanning.env.EnvParams`.
        effective, fusion, reset_observes_sparsity, observe_gap: the environment's options
            (:class:`jpanning.env.EnvParams`; the defaults are the authors').
        steps_per_call: agent steps per jitted call (a ``lax.scan`` when more than one).
        td3: the agent's settings (``total_steps`` is replaced by ``agent_steps``).
        select_every: 0 (the authors': the search's last actor is the policy), or checkpoint
            selection, a jpanning option: every this many agent steps (and at the end) the
            current actor plays one deterministic episode at each of ``select_targets`` (the
            search's environment, its ranges at that step, episode keys from
            ``select_seed``), and the actor with the highest mean return is the policy,
            with the ranges it was judged through. Keep ``select_targets`` and
            ``select_seed`` apart from those a policy is finally judged on
            (``benchmarks.policy_eval``: 0.9-0.995, seeds 10-12). Not checkpointed: a
            resumed search selects among the steps after its restart.
    """

    agent_steps: int = 50_000
    rounds: int = 100
    pool_size: int = 10
    early_steps: Optional[int] = None
    alpha: float = 100.0
    scoring: str = panning_lib.SCORING
    effective: str = "authors"
    fusion: str = "add"
    reset_observes_sparsity: bool = False
    observe_gap: bool = False
    steps_per_call: int = 1
    td3: td3.TD3Config = td3.TD3Config()
    select_every: int = 0
    select_targets: tuple = (0.93, 0.97, 0.985, 0.993)
    select_seed: int = 1000

    def agent_config(self) -> td3.TD3Config:
        """The TD3 settings with ``total_steps = agent_steps``, and a buffer that fits."""
        return self.td3.replace(
            total_steps=int(self.agent_steps),
            buffer_size=max(min(self.td3.buffer_size, int(self.agent_steps)), self.td3.batch_size),
        )

    def switch_step(self) -> int:
        """The agent step from which the late target distribution is used."""
        if self.early_steps is None:
            return int(self.agent_steps) // 5
        return int(self.early_steps)

    def validate(self) -> "RLPanningConfig":
        for name in ("agent_steps", "rounds", "pool_size", "steps_per_call"):
            if int(getattr(self, name)) < 1:
                raise JPanningError(f"rlpanning {name} must be >= 1, got {getattr(self, name)}")
        for name, allowed in (
            ("scoring", env_lib.SCORINGS),
            ("effective", env_lib.EFFECTIVES),
            ("fusion", env_lib.panning.FUSIONS),
        ):
            if getattr(self, name) not in allowed:
                raise JPanningError(
                    f"rlpanning {name} {getattr(self, name)!r}; choose from: {', '.join(allowed)}"
                )
        if int(self.select_every) < 0:
            raise JPanningError(f"rlpanning select_every must be >= 0, got {self.select_every}")
        if self.select_every and not all(0.0 < float(x) < 1.0 for x in self.select_targets):
            raise JPanningError(
                f"rlpanning select_targets must be sparsities in (0, 1), got {self.select_targets}"
            )
        if self.early_steps is not None and int(self.early_steps) < 0:
            raise JPanningError(f"rlpanning early_steps must be >= 0, got {self.early_steps}")
        td3.validate_config(self.agent_config())
        return self


# Settings users pick by name (``run.py --preset``). ``paper`` follows the authors' code;
# ``quick`` is a smoke-test budget that finishes in minutes on a 2-core CPU (ResNet-20 on a
# scoring batch of 100: ~0.6 s per agent step) and learns little: its policy is not a
# result.
PRESETS = {
    "paper": RLPanningConfig(),
    "quick": RLPanningConfig(
        agent_steps=200,
        rounds=20,
        pool_size=2,
        td3=td3.TD3Config(hidden_sizes=(64, 64), warmup_steps=60, batch_size=32),
    ),
}


score_pool = panning_lib.score_pool  # where it was; Panning's fresh batches use it too


def env_options(config: RLPanningConfig) -> dict:
    """The environment's settings in ``config`` (:meth:`jpanning.env.PanningEnv.make_params`)."""
    return {
        "alpha": config.alpha,
        "rounds": config.rounds,
        "scoring": config.scoring,
        "effective": config.effective,
        "fusion": config.fusion,
        "reset_observes_sparsity": config.reset_observes_sparsity,
        "observe_gap": config.observe_gap,
    }


def build_env(
    problem: pruning.PruneProblem, data, config: RLPanningConfig, *, key=None, synflow_shape=None
):
    """The Panning environment for ``problem``'s network and its params over ``data``.

    Args:
        problem: the model, its initial variables, the prunable set, scope and (in
            ``problem.options``) ``temperature``, ``chunk_size`` and ``samples_per_class``.
        data: ``scoring='pool'``: ``(inputs [P, B, ...], labels [P, B])`` scoring batches;
            ``'fresh'``: ``(inputs [N, ...], labels [N])``, the examples to draw from.
        config: the environment's settings (:func:`env_options`).
        key: PRNG key of the fresh warm-up draws.
        synflow_shape: the input shape of SynFlow's all-ones pass (and so of the effective
            sparsity); default the scoring data's (``jpanning.proxy`` scores on smaller images).

    Returns:
        ``(env, env_params)`` with the early target distribution.
    """
    inputs, labels = data
    extra = 2 if config.scoring == "pool" else 1
    env = env_lib.PanningEnv(
        pruning.train_apply_fn(problem),
        pruning.eval_apply_fn(problem),
        problem.prunable,
        tuple(synflow_shape or np.shape(inputs)[extra:]),
        scope=problem.scope,
        temperature=pruning.temperature(problem),
        chunk_size=pruning.options_of(problem, RLPanningOptions).chunk_size,
    )
    env_params = env.make_params(
        problem.params,
        inputs,
        labels,
        targets=env_lib.TARGETS_EARLY,
        samples_per_class=int(problem.samples_per_class),
        key=key,
        **env_options(config),
    )
    return env, env_params


DEMONSTRATED = ("synflow", "snip", "grasp", "staircase")  # fixed_controllers' order


def fixed_controllers(rounds: int, fusion: str = "add") -> Callable:
    """RL Panning's fixed controllers as TD3's warm-up demonstrator (``TD3Config.demo_steps``).

    Each episode follows one controller of :data:`DEMONSTRATED`, drawn uniformly per episode
    from ``loop_key`` and the step at which the episode began (``t − round``): SynFlow, SNIP or
    GraSP alone (the corner with +1 on that metric and −1 on the others, weights (1, 0, 0)
    and so on) or hand Panning's staircase (``2 p − 1`` for the staircase row of the round's
    sparsity, :func:`jpanning.panning.scheduled_weights`, for ``fusion``). These are the fixed
    controllers of ``benchmarks.policy_eval``, the ones the policy must beat.
    """
    staircase = panning_lib.PanningConfig(rounds=rounds, fusion=fusion)
    corners = 2.0 * jnp.eye(len(panning_lib.METRICS), dtype=jnp.float32) - 1.0

    def demonstrator(loop_key, t, obs, state):
        episode = jnp.asarray(t, jnp.int32) - state.round.astype(jnp.int32)
        key = jax.random.fold_in(jax.random.fold_in(loop_key, 0x0DE), episode)
        pick = jax.random.randint(key, (), 0, len(DEMONSTRATED))
        sparsity = masks_lib.round_sparsity(state.target, state.round, rounds)
        stair = 2.0 * panning_lib.scheduled_weights(sparsity, staircase) - 1.0
        return jnp.where(pick < len(corners), corners[jnp.minimum(pick, 2)], stair)

    return demonstrator


def search(
    env: env_lib.PanningEnv,
    env_params: env_lib.EnvParams,
    config: RLPanningConfig,
    key: jax.Array,
    *,
    callback: Optional[Callable] = None,
    checkpoints=None,
    stop: Callable = checkpoint_lib.never,
):
    """Train the TD3 agent on the environment (early, then late target distribution).

    Returns:
        ``(agent_state, metrics)`` of :func:`jpanning.agents.td3.train_loop`; ``callback``,
        ``checkpoints`` and ``stop`` are passed on to it.
    """
    config.validate()
    late = env_params.with_targets(env_lib.TARGETS_LATE)
    switch = config.switch_step()
    selection = Selection(env, env_params, config) if config.select_every else None
    agent, metrics = td3.train_loop(
        env,
        env_params,
        config.agent_config(),
        key,
        action_size=env_lib.ACTION_SIZE,
        obs_size=env_lib.obs_size(config.observe_gap),
        steps_per_call=config.steps_per_call,
        env_params_at=lambda t: env_params if t < switch else late,
        callback=callback,
        checkpoints=checkpoints,
        stop=stop,
        demonstrator=fixed_controllers(config.rounds, config.fusion)
        if config.td3.demo_steps
        else None,
        watch=selection.watch if selection is not None else None,
    )
    if selection is not None and selection.best is not None:
        agent = agent.replace(actor_params=jax.tree.map(jnp.asarray, selection.best["params"]))
        metrics = metrics | {"selection": selection.record()}
    return agent, metrics


class Selection:
    """Checkpoint selection during a search (:attr:`RLPanningConfig.select_every`): a
    ``watch`` for the search loop that plays the current actor's deterministic episodes at
    the selection targets and keeps the best actor (host copies) and the ranges it played
    through."""

    def __init__(self, env, env_params, config: RLPanningConfig):
        self.every, self.total = int(config.select_every), int(config.agent_steps)
        self.targets = tuple(float(x) for x in config.select_targets)
        self.key = jax.random.key(int(config.select_seed))
        self.steps, self.returns, self.best = [], [], None
        self.next_due = self.every
        agent_config = config.agent_config()

        @jax.jit
        def one_round(actor_params, obs, state, k):
            action = td3.policy(actor_params, obs, agent_config, env_lib.ACTION_SIZE)
            obs, state, reward, terminated, truncated, _ = env.step(k, state, action, env_params)
            return obs, state, reward, terminated | truncated

        self._reset = jax.jit(env.reset)
        self._round, self._env_params, self._rounds = one_round, env_params, config.rounds

    def episode(self, actor_params, ranges, target: float, key) -> float:
        """The return of one deterministic episode at ``target`` through ``ranges``."""
        k_reset, k_steps = jax.random.split(key)
        obs, state = self._reset(k_reset, self._env_params, target, ranges)
        total = 0.0
        for t in range(self._rounds):
            obs, state, reward, done = self._round(
                actor_params, obs, state, jax.random.fold_in(k_steps, t)
            )
            total += float(reward)
            if bool(done):
                break
        return total

    def watch(self, t: int, carry) -> None:
        if t < self.next_due and t < self.total:
            return
        self.next_due = (t // self.every + 1) * self.every
        ranges = jax.tree.map(np.array, carry.env_state.ranges)  # copies: see host_loop
        params = jax.tree.map(np.array, carry.agent.actor_params)
        mean = float(
            np.mean(
                [
                    self.episode(params, ranges, target, jax.random.fold_in(self.key, i))
                    for i, target in enumerate(self.targets)
                ]
            )
        )
        self.steps.append(int(t))
        self.returns.append(mean)
        if self.best is None or mean > self.best["return"]:
            self.best = {"step": int(t), "return": mean, "params": params, "ranges": ranges}

    def record(self) -> dict:
        """What results.json and the search's record keep: the steps judged, their mean
        returns, the chosen step and the ranges it played through."""
        return {
            "every": self.every,
            "targets": list(self.targets),
            "steps": list(self.steps),
            "mean_returns": list(self.returns),
            "best_step": self.best["step"],
            "best_return": self.best["return"],
            "ranges": {
                "loss": np.asarray(self.best["ranges"].loss).tolist(),
                "grad_norm": np.asarray(self.best["ranges"].grad_norm).tolist(),
            },
        }


episode_returns = loop.episode_returns  # (end steps, returns) of the finished episodes


def final_ranges(metrics) -> Optional[env_lib.Ranges]:
    """The normalisation ranges the search's policy observes through: those after its last
    step (they never shrink), or, with checkpoint selection, those of the chosen step."""
    chosen = metrics.get("selection")
    if chosen is not None:
        r = chosen["ranges"]
        return env_lib.Ranges(jnp.asarray(r["loss"]), jnp.asarray(r["grad_norm"]))
    ranges = np.asarray(metrics["info"]["ranges"])
    if ranges.shape[0] == 0:
        return None
    return env_lib.Ranges(jnp.asarray(ranges[-1, 0]), jnp.asarray(ranges[-1, 1]))


def screen(
    env: env_lib.PanningEnv,
    env_params: env_lib.EnvParams,
    actor_params: PyTree,
    config: RLPanningConfig,
    target: float,
    key: jax.Array,
    *,
    ranges: Optional[env_lib.Ranges] = None,
    collapse_shield: bool = True,
):
    """Screen at ``target`` with a trained policy: T deterministic environment steps.

    Args:
        env, env_params: the environment (its rounds must be the policy's).
        actor_params: the trained actor.
        config: the policy's settings (network sizes).
        target: the sparsity to reach, in (0, 1).
        key: PRNG key (the scoring batch of each round).
        ranges: the normalisation ranges the policy observes through, as the authors screen
            with the environment they trained (:func:`final_ranges`); None: ``env_params``'
            warm-up ranges.
        collapse_shield: on a round whose fusion weights would empty a prunable layer, use
            SynFlow's alone (:func:`jpanning.panning.shield`; jpanning's default, the
            authors' screening has no shield: False).

    Returns:
        ``(masks, trace)``: the final masks, at ``target`` (the last round keeps
        ``int(n (1 − target))``), and a dict of numpy arrays per round: ``weights [T, 3]``
        (those used), ``sparsity``, ``effective``, ``reward``, ``revived``, ``shielded``.

    Raises:
        RunFailed: the policy left no weight alive.
    """
    agent_config = config.agent_config()
    # the shield's fallback: SynFlow's own trajectory (None without the shield)
    synflow_masks = masks_lib.ones_like(env_params.net_params) if collapse_shield else None
    env_params = env_params.replace(
        collapse_shield=bool(collapse_shield), shield_masks=synflow_masks
    )
    k_reset, k_steps = jax.random.split(key)
    obs, state = jax.jit(env.reset)(k_reset, env_params, target, ranges)

    @jax.jit
    def one_round(obs, state, k, env_params, synflow_masks):
        if collapse_shield:
            sparsity = masks_lib.round_sparsity(state.target, state.round, env_params.rounds)
            synflow_masks = env.synflow_alone(env_params.net_params, synflow_masks, sparsity)
            env_params = env_params.replace(shield_masks=synflow_masks)
        action = td3.policy(actor_params, obs, agent_config, env_lib.ACTION_SIZE)
        obs, state, reward, _, _, info = env.step(k, state, action, env_params)
        return obs, state, synflow_masks, info | {"reward": reward, "effective": state.effective}

    trace = []
    for t in range(env_params.rounds):
        k = jax.random.fold_in(k_steps, t)
        obs, state, synflow_masks, info = one_round(obs, state, k, env_params, synflow_masks)
        trace.append(jax.tree.map(np.asarray, info))
        if bool(info["collapsed"]):
            raise RunFailed(
                f"the RL Panning policy left no weight on an input-output path at round {t + 1} "
                f"of {env_params.rounds} (sparsity {float(info['sparsity']):.4f}); train the "
                "policy longer or lower the ratio",
                disconnected=True,
            )
    stacked = {k: np.stack([r[k] for r in trace]) for k in trace[0]}
    stacked.setdefault("shielded", np.zeros(len(trace), bool))
    keep = ("weights", "sparsity", "effective", "reward", "revived", "shielded")
    return state.masks, {k: stacked[k] for k in keep}


# -- the policy file -------------------------------------------------------------------------


def save_policy(
    path: str,
    actor_params: PyTree,
    config: RLPanningConfig,
    meta=None,
    ranges: Optional[env_lib.Ranges] = None,
) -> None:
    """Write the actor and what is needed to use it (msgpack, atomically): its network
    sizes, the environment's options and the normalisation ranges it observed through."""

    td3_fields = {
        f.name: (list(v) if isinstance(v := getattr(config.td3, f.name), tuple) else v)
        for f in dataclasses.fields(config.td3)
    }
    payload = {
        "format": POLICY_FORMAT,
        "version": POLICY_VERSION,
        "actor_params": jax.tree.map(np.asarray, actor_params),
        "env": {k: v for k, v in env_options(config).items()},
        "ranges": None
        if ranges is None
        else {"loss": np.asarray(ranges.loss), "grad_norm": np.asarray(ranges.grad_norm)},
        "td3": td3_fields,
        "obs_size": env_lib.obs_size(config.observe_gap),
        "action_size": env_lib.ACTION_SIZE,
        "meta": meta or {},
    }
    report.atomic_write_bytes(path, serialization.msgpack_serialize(payload))


def load_policy(path: str) -> tuple[PyTree, RLPanningConfig, dict]:
    """Read a policy file written by :func:`save_policy`.

    Returns:
        ``(actor_params, config, meta)``; ``config`` carries the policy's environment options
        and network sizes, ``meta['ranges']`` its :class:`jpanning.env.Ranges` (or None).

    Raises:
        JPanningError: a missing, unreadable or foreign file.
    """

    if not os.path.isfile(path):
        raise JPanningError(f"--policy {path!r} does not exist")
    try:
        with open(path, "rb") as f:
            payload = serialization.msgpack_restore(f.read())
    except Exception as e:  # msgpack raises several types on corrupt input
        raise JPanningError(f"--policy {path!r} is not a jpanning policy file ({e})")
    if not isinstance(payload, dict) or payload.get("format") != POLICY_FORMAT:
        raise JPanningError(f"--policy {path!r} is not a jpanning policy file")
    if payload.get("version") != POLICY_VERSION:
        raise JPanningError(
            f"--policy {path!r} has format version {payload.get('version')}, "
            f"this jpanning reads {POLICY_VERSION}"
        )
    observes = env_lib.obs_size(bool((payload.get("env") or {}).get("observe_gap", False)))
    if payload["obs_size"] != observes or payload["action_size"] != env_lib.ACTION_SIZE:
        raise JPanningError(
            f"--policy {path!r} maps {payload['obs_size']} observations to "
            f"{payload['action_size']} actions; the Panning environment has "
            f"{observes} and {env_lib.ACTION_SIZE}"
        )
    fields = dict(payload["td3"])
    fields["hidden_sizes"] = tuple(fields["hidden_sizes"])
    env = dict(payload["env"])
    config = RLPanningConfig(
        rounds=int(env.pop("rounds")),
        alpha=float(env.pop("alpha")),
        reset_observes_sparsity=bool(env.pop("reset_observes_sparsity")),
        observe_gap=bool(env.pop("observe_gap", False)),  # absent: written before it existed
        **env,
        td3=td3.TD3Config(**fields),
    )
    actor_params = jax.tree.map(jnp.asarray, payload["actor_params"])
    meta = dict(payload.get("meta") or {})
    ranges = payload.get("ranges")
    meta["ranges"] = (
        None
        if ranges is None
        else env_lib.Ranges(jnp.asarray(ranges["loss"]), jnp.asarray(ranges["grad_norm"]))
    )
    return actor_params, config, meta


def policy_from_checkpoint(directory: str) -> tuple[PyTree, Optional[env_lib.Ranges], int, Any]:
    """The actor of a search's newest checkpoint (``OUT/checkpoints/search``), with the
    normalisation ranges it observed through at that step, the step and the search's metrics
    up to it (None if not saved): the policy of a search that is still running or was
    stopped, for :func:`save_policy` (one read of the checkpoint).

    Raises:
        JPanningError: no readable checkpoint in ``directory``.
    """
    if not os.path.isdir(directory):
        raise JPanningError(f"{directory!r} is not a directory")
    with checkpoint_lib.opened(directory) as ckpt:
        step, state, _, extra = ckpt.restore_saved()
    try:
        actor = jax.tree.map(jnp.asarray, state["agent"]["actor_params"])
    except (KeyError, TypeError):
        raise JPanningError(f"the checkpoint in {directory} is not an RL Panning search's")
    ranges = final_ranges(extra) if extra is not None else None
    return actor, ranges, step, extra


# -- the policies that ship with jpanning ----------------------------------------------------

POLICY_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "policies")
# model -> the policy trained for it: POLICY_DIR/<name>.msgpack, its card <name>.md beside it
SHIPPED_POLICIES = {"resnet20": "resnet20-fashion_mnist"}
TRANSFER_MODEL = "resnet20"  # whose policy screens a model that has none of its own


def shipped_policy(model: str) -> tuple[str, str]:
    """The policy file that ships for ``model`` and a line saying which it is.

    A model without one of its own gets :data:`TRANSFER_MODEL`'s policy, unchanged (the
    observation and the action do not depend on the network), and the line says so.

    Raises:
        JPanningError: no policy file ships (for ``model`` nor for :data:`TRANSFER_MODEL`).
    """
    name = SHIPPED_POLICIES.get(model)
    own = name is not None
    name = name or SHIPPED_POLICIES.get(TRANSFER_MODEL)
    path = os.path.join(POLICY_DIR, f"{name}.msgpack") if name else None
    if path is None or not os.path.isfile(path):
        raise JPanningError(
            f"no RL Panning policy ships for {model!r} in {POLICY_DIR}; train one with "
            "--search (the authors' 50,000-step TD3 search; hours on a CPU) or pass --policy FILE"
        )
    meta = load_policy(path)[2]
    steps = f"{meta.get('agent_steps', '?')} agent steps"
    if meta.get("search_steps") not in (None, meta.get("agent_steps")):
        steps = f"{meta['agent_steps']} of {meta['search_steps']} agent steps: an interim policy"
    trained = (
        f"trained on {meta.get('model', '?')} / {meta.get('dataset', '?')}, {steps}; "
        f"card: {os.path.splitext(path)[0]}.md"
    )
    if own:
        return path, f"the policy shipped for {model} ({trained})"
    return path, (
        f"no policy ships for {model}; the {TRANSFER_MODEL} policy, unchanged ({trained}); "
        "--search trains one for this model"
    )


# -- as a pruning method ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RLPanningOptions:
    """RL Panning's options (``run.py --method rlpanning``): screen with a policy (``policy``,
    default the one that ships) or search one (``search``, or a budget: ``preset``,
    ``agent_steps``), and the environment's settings; None: the preset's (the authors'), or
    the policy's (:func:`config_from_options`)."""

    rounds: Optional[int] = shared("rounds")
    temperature: float = shared("temperature")
    chunk_size: Optional[int] = shared("chunk_size")
    scoring: Optional[str] = shared("scoring")
    pool_size: Optional[int] = shared("pool_size")
    fusion: str = shared("fusion")
    collapse_shield: str = shared("collapse_shield")
    preset: Optional[str] = shared("preset")
    agent_steps: Optional[int] = option(
        None, "TD3 environment steps (default: the preset's)", parse=positive(int)
    )
    effective: str = option(
        "authors",
        "effective sparsity in the reward; authors: weights alive in the positive SynFlow "
        "network, bias paths included; paths: weights on an input-output path",
        choices=("authors", "paths"),
    )
    reset_observes_sparsity: bool = flag(
        "the first observation carries the first round's sparsity (the authors' is 0, so the "
        "first action does not know the target)"
    )
    critic_loss: Optional[str] = option(
        None,
        "a search's TD3 critic loss; mse: the authors' (the default); huber: bounded pull of "
        "the rare collapse penalty, after which the authors' critic diverged "
        "(docs/policy.md)",
        choices=("mse", "huber"),
    )
    policy: Optional[str] = option(
        None,
        "screen with this saved policy (a run's policy.msgpack), no search (default: the "
        "policy that ships for --model, see --search)",
        metavar="PATH",
    )
    search: bool = flag(
        "train a new policy (TD3, --preset's budget) instead of screening with the one that "
        "ships with jpanning"
    )


def choose_policy(config, resumed: bool = False):
    """The run's ``config`` with its policy settled (:attr:`jpanning.pruning.Method.prepare`).

    RL Panning screens with ``--policy``, or searches (``--search``, or a search budget:
    ``--preset``, ``--agent-steps``), or else screens with the policy that ships for
    ``--model``: never a silent multi-hour search. A resumed run keeps its recorded choice.
    Screening with a policy, ``--scoring`` defaults to the policy's own.
    """
    method = config.pruning.options
    if not resumed:
        if method.policy is not None and method.search:
            raise JPanningError(
                "--search trains a new policy and --policy screens with a saved one; "
                "give one of them"
            )
        budget = method.preset is not None or method.agent_steps is not None
        searches = method.search or (method.policy is None and budget)
        if method.critic_loss is not None and not searches:
            raise JPanningError(
                f"--critic-loss {method.critic_loss} sets how a search trains its critic; "
                "add --search (or a budget: --preset, --agent-steps), or leave it out to "
                "screen with a trained policy"
            )
        if method.policy is None and budget:
            config = config.replace(search=True)  # a search budget was given
        elif not method.search and method.policy is None:
            path, line = shipped_policy(config.model)
            print(f"rlpanning: {line}")
            config = config.replace(policy=path)
    method = config.pruning.options
    if method.policy is not None and method.scoring is None:
        if os.path.isfile(method.policy):  # else the run says it does not exist
            config = config.replace(scoring=load_policy(method.policy)[1].scoring)
    return config


def _screen(problem: pruning.PruneProblem, context: pruning.ScreenContext):
    """RL Panning in a run: build the pool, search (progress bar, checkpoints) or load the
    policy, and screen; the policy and the learning curve are saved in the run's folder."""
    run_config, method = context.config, pruning.options_of(problem, RLPanningOptions)
    config = load_policy(method.policy)[1] if method.policy else config_from_options(method)
    pool_size = method.pool_size or config.pool_size
    if method.scoring == "pool":
        data = score_pool(
            context.dataset, run_config.data.samples_per_class, pool_size, run_config.seed
        )
        scoring = f"a pool of {pool_size} scoring batches"
    else:
        data = (context.dataset.train_images, context.dataset.train_labels)
        scoring = f"a fresh batch of {run_config.data.samples_per_class} per class every step"
    problem = dataclasses.replace(problem, data=data)
    if method.policy is not None:
        print(f"rlpanning: screening with the policy in {method.policy} (no search), {scoring}")
        result = run(problem)
    else:
        print(
            f"rlpanning: TD3 search, {config.agent_steps} agent steps, T={config.rounds} "
            f"rounds, {scoring} ({method.preset} preset)"
        )
        with (
            context.progress("RL search", config.agent_steps) as progress,
            context.checkpoints() as ckpt,
        ):
            result = run(problem, callback=progress, checkpoints=ckpt, stop=context.stop)
    print(f"rlpanning: {result.shield['summary']}")
    return result.masks, {"rl": _report(context, result)}


def _report(context: pruning.ScreenContext, rl: RLPanningResult) -> dict:
    """Save the policy and the learning curve; the ``rl`` entry of results.json."""

    run_config, method = context.config, context.config.pruning.options
    files = {"policy": None, "rl_curve": None}
    out = {
        "preset": method.preset if method.policy is None else None,
        "policy_loaded_from": method.policy,
        "agent_steps": rl.config.agent_steps if rl.metrics is not None else 0,
        "rounds": rl.config.rounds,
        "td3": {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(rl.config.agent_config()).items()
        },
        "env": rl.env_options,
        "ranges": None
        if rl.ranges is None
        else {"loss": rl.ranges.loss.tolist(), "grad_norm": rl.ranges.grad_norm.tolist()},
        "search_seconds": rl.search_seconds,
        "screen_seconds": rl.screen_seconds,
        "screen": {k: v.tolist() for k, v in rl.trace.items()},
        "shield": rl.shield,
    }
    if rl.metrics is not None:
        files["policy"] = "policy.msgpack"
        save_policy(
            os.path.join(context.out, files["policy"]),
            rl.actor_params,
            rl.config,
            meta={
                "model": run_config.model,
                "dataset": run_config.data.dataset,
                "seed": run_config.seed,
                "agent_steps": rl.config.agent_steps,
            },
            ranges=rl.ranges,
        )
        if "selection" in rl.metrics:  # checkpoint selection: the chosen actor is the policy
            out["selection"] = rl.metrics["selection"]
        steps, returns = episode_returns(rl.metrics)
        out["episode_end_steps"] = steps.tolist()
        out["episode_returns"] = returns.tolist()
        files["rl_curve"] = "rl_curve.png"
        report.plot_learning_curve(
            steps,
            returns,
            os.path.join(context.out, files["rl_curve"]),
            f"RL Panning search: {run_config.model} / {run_config.data.dataset}, T={rl.config.rounds}",
        )
        print(
            f"rlpanning: searched in {rl.search_seconds:.1f}s, {len(returns)} episodes"
            + (f", last return {returns[-1]:.2f}" if len(returns) else "")
            + f"; policy saved to {os.path.join(context.out, files['policy'])}"
        )
    out["files"] = files
    return out


@pruning.register_method(
    "rlpanning",
    presets=tuple(PRESETS),
    options=RLPanningOptions,
    prepare=choose_policy,
    screen=_screen,
)
def rlpanning(problem: pruning.PruneProblem):
    """RL Panning as a ``run.py --method``: train a policy (or load the ``policy`` option,
    a path) and screen at ``problem.sparsity``.

    Options: :class:`RLPanningOptions`. ``problem.data``: ``scoring='pool'``: ``(inputs
    [P, B, ...], labels [P, B])``, default the scoring batch alone; ``'fresh'``: ``(inputs
    [N, ...], labels [N])``. ``run.py`` uses :func:`run` for the learning curve and the
    policy file.
    """
    return run(problem).masks


@dataclasses.dataclass
class RLPanningResult:
    """What :func:`run` produced: the masks and everything the report needs."""

    masks: PyTree
    trace: dict
    config: RLPanningConfig
    actor_params: PyTree
    metrics: Optional[dict]  # None when the policy was loaded
    ranges: Optional[env_lib.Ranges]  # the ranges screening observed through
    env_options: dict
    search_seconds: float
    screen_seconds: float
    shield: dict  # the collapse shield at screening (:func:`jpanning.pruning.shield_record`)


def config_from_options(options) -> RLPanningConfig:
    """The search's settings: the preset named by the ``preset`` option with
    ``agent_steps``, ``rounds``, ``critic_loss`` and the environment's options
    (:data:`ENV_OPTIONS`) overriding it. ``options``: :class:`RLPanningOptions`, or a dict
    (a run.json's settings: the fields it has of them)."""
    options = pruning.as_options(options, RLPanningOptions)
    config = pruning.preset(PRESETS, "rlpanning", options.preset)
    if options.agent_steps:
        config = dataclasses.replace(config, agent_steps=int(options.agent_steps), early_steps=None)
    if options.rounds:
        config = dataclasses.replace(config, rounds=int(options.rounds))
    if options.critic_loss:  # a search setting: a loaded policy is already trained
        config = dataclasses.replace(
            config, td3=config.td3.replace(critic_loss=options.critic_loss)
        )
    return with_env_options(config, options).validate()


ENV_OPTIONS = ("scoring", "effective", "fusion", "reset_observes_sparsity")


def with_env_options(config: RLPanningConfig, options: RLPanningOptions) -> RLPanningConfig:
    """``config`` with the environment options :data:`ENV_OPTIONS` that ``options`` gives
    (not None)."""
    given = {k: getattr(options, k) for k in ENV_OPTIONS if getattr(options, k) is not None}
    return dataclasses.replace(config, **given)


def run(
    problem: pruning.PruneProblem,
    *,
    callback: Optional[Callable] = None,
    checkpoints=None,
    stop: Callable = checkpoint_lib.never,
) -> RLPanningResult:
    """Search (or load) a policy and screen ``problem`` at its sparsity.

    Args:
        problem: as for any method; ``problem.options`` as for :func:`rlpanning`.
        callback, checkpoints, stop: passed to :func:`search` (progress; a search that
            survives interruption).
    """

    options = pruning.options_of(problem, RLPanningOptions)
    k_search, k_screen = jax.random.split(problem.key)
    ranges = None
    if options.policy:
        actor_params, config, meta = load_policy(options.policy)
        ranges = meta["ranges"]
        if options.rounds and int(options.rounds) != config.rounds:
            raise JPanningError(
                f"the policy was trained with {config.rounds} rounds; --rounds "
                f"{options.rounds} differs (leave it out to use the policy's)"
            )
        if options.scoring is not None:  # the policy's own scoring unless given
            config = dataclasses.replace(config, scoring=options.scoring)
        config = config.validate()
    else:
        config = config_from_options(options)
    data = problem.data
    if data is None:
        if config.scoring != "pool":
            raise JPanningError("rlpanning with fresh scoring batches needs options['data']")
        data = tuple(np.asarray(x)[None] for x in problem.batch)
    env, env_params = build_env(problem, data, config, key=jax.random.fold_in(problem.key, 1))
    metrics, search_seconds = None, 0.0
    if not options.policy:
        start = time.perf_counter()
        agent, metrics = search(
            env,
            env_params,
            config,
            k_search,
            callback=callback,
            checkpoints=checkpoints,
            stop=stop,
        )
        search_seconds = time.perf_counter() - start
        actor_params = agent.actor_params
        ranges = final_ranges(metrics)
    start = time.perf_counter()
    shield_setting = options.collapse_shield
    masks, trace = screen(
        env,
        env_params,
        actor_params,
        config,
        problem.sparsity,
        k_screen,
        ranges=ranges,
        collapse_shield=pruning.shield_on(shield_setting),
    )
    masks = jax.block_until_ready(masks)
    return RLPanningResult(
        masks=masks,
        trace=trace,
        config=config,
        actor_params=actor_params,
        metrics=metrics,
        ranges=ranges,
        env_options=env_params.options(),
        search_seconds=search_seconds,
        screen_seconds=time.perf_counter() - start,
        shield=pruning.shield_record(trace["shielded"], shield_setting),
    )
