"""A proxy of the RL Panning environment: the same network, cheap scoring batches.

A search on ResNet-20 costs 0.26 s per agent step on a 2-core CPU with a pool of 100-image
batches at full resolution, 3.6 h for the authors' 50,000 steps: too slow to try a variant.
What decides the pruning regime is the network (its topology, its prunable weights, where it
collapses); what only costs time is the data the losses, SNIP and GraSP are scored on. A
proxy keeps the first and shrinks the second::

    proxy = PROXIES["proxy"]
    env, env_params = build_env(problem, dataset, config, proxy, seed)   # then rlpanning.search

* the network is the run's own (its initialization and prunable set, 268,048 weights for
  ResNet-20 on Fashion-MNIST: nothing is resized);
* the scoring batches are average-pooled by ``downsample`` in height and width (28x28 to
  7x7 for Fashion-MNIST with the default 4; the network ends in a global average pool, so the
  same weights apply), with ``samples_per_class`` images of each class, in a pool of
  ``pool_size`` batches scored once (``scoring='pool'``);
* SynFlow, and with it the effective sparsity ρe and the collapse, runs on the all-ones input
  at the network's real input shape (``synflow='full'``, default): it is data-free, so the
  proxy's collapse is the real network's for the same masks. ``synflow='proxy'`` runs it at
  the pooled shape instead (cheaper, but its border effects differ).

Step times beside the real environment's: ``python -m benchmarks.proxy steps``; whether the
fixed controllers rank the same on both: ``python -m benchmarks.proxy faithful``
(``docs/policy.md``). A policy trained on the proxy observes through the proxy's
normalisation ranges; judged on the real network, its ranges are first widened there
(``benchmarks.policy_eval --widen-episodes``), as the authors' environment widens its
ranges on the network it screens.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jpanning import panning, pruning, rlpanning
from jpanning.errors import JPanningError

SYNFLOWS = ("full", "proxy")


@dataclasses.dataclass(frozen=True)
class ProxyConfig:
    """How a proxy environment's scoring batches are made cheaper.

    Attributes:
        downsample: average-pooling factor of the scoring images' height and width (1: the
            real resolution); it must divide both.
        samples_per_class: images of each class in a scoring batch (the authors' 10).
        pool_size: scoring batches in the pool (each step draws one).
        synflow: ``'full'``: SynFlow and the effective sparsity on the network's real input
            shape; ``'proxy'``: on the pooled shape.
    """

    downsample: int = 4
    samples_per_class: int = 2
    pool_size: int = 10
    synflow: str = "full"

    def validate(self) -> ProxyConfig:
        for name in ("downsample", "samples_per_class", "pool_size"):
            if int(getattr(self, name)) < 1:
                raise JPanningError(f"proxy {name} must be >= 1, got {getattr(self, name)}")
        if self.synflow not in SYNFLOWS:
            raise JPanningError(
                f"proxy synflow {self.synflow!r}; choose from: {', '.join(SYNFLOWS)}"
            )
        return self


# Settings picked by name (``benchmarks.policy_eval --proxy``, ``benchmarks.proxy``).
# ``proxy``: aimed at 50,000 agent steps in <= 40 min on a 2-core CPU; its agent step was 6.4x
# the real environment's speed in the same (loaded) run, benchmarks/results/proxy/steps_cpu.md;
# ``real``: the real environment's scoring (the shipped policy's search: a pool of 10 batches
# of 10 per class at full resolution), for comparisons made by the same code.
PROXIES = {
    "proxy": ProxyConfig(),
    "proxy-lowres-synflow": ProxyConfig(synflow="proxy"),
    "proxy-half": ProxyConfig(downsample=2, samples_per_class=2),
    "real": ProxyConfig(downsample=1, samples_per_class=10),
}


def proxy(name: str) -> ProxyConfig:
    """The proxy setting called ``name`` (:data:`PROXIES`)."""
    if name not in PROXIES:
        raise JPanningError(f"unknown proxy {name!r}; choose from: {', '.join(PROXIES)}")
    return PROXIES[name]


def downsample(images: np.ndarray, factor: int) -> np.ndarray:
    """Average-pool ``[..., H, W, C]`` images by ``factor`` in H and W.

    Raises:
        JPanningError: ``factor`` does not divide H and W.
    """
    images = np.asarray(images)
    factor = int(factor)
    if factor == 1:
        return images
    *lead, h, w, c = images.shape
    if h % factor or w % factor:
        raise JPanningError(f"proxy downsample {factor} does not divide the images' {h}x{w}")
    blocks = images.reshape(*lead, h // factor, factor, w // factor, factor, c)
    return blocks.mean(axis=(-4, -2)).astype(images.dtype)


def proxy_pool(dataset, config: ProxyConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The proxy's scoring pool: ``(inputs [P, B, H/d, W/d, C], labels [P, B])``, the
    class-balanced batches of :func:`jpanning.panning.score_pool` (same seeds), pooled."""
    config.validate()
    inputs, labels = panning.score_pool(
        dataset, int(config.samples_per_class), int(config.pool_size), seed
    )
    return downsample(inputs, config.downsample), labels


def env_config(config: rlpanning.RLPanningConfig, proxy_config: ProxyConfig):
    """``config`` with the proxy's scoring: a pool of ``proxy_config.pool_size`` batches."""
    return dataclasses.replace(config, scoring="pool", pool_size=int(proxy_config.pool_size))


def build_env(
    problem: pruning.PruneProblem,
    dataset,
    config: rlpanning.RLPanningConfig,
    proxy_config: ProxyConfig,
    seed: int,
    *,
    key=None,
):
    """The proxy environment of ``problem``'s network (:func:`jpanning.rlpanning.build_env`
    on :func:`proxy_pool`'s batches).

    Returns:
        ``(env, env_params)``; ``env.input_shape`` (SynFlow's input) is the network's real
        input shape with ``synflow='full'``, the pooled one with ``'proxy'``.
    """
    proxy_config.validate()
    pool = proxy_pool(dataset, proxy_config, seed)
    synflow_shape = tuple(dataset.input_shape) if proxy_config.synflow == "full" else None
    return rlpanning.build_env(
        problem, pool, env_config(config, proxy_config), key=key, synflow_shape=synflow_shape
    )
