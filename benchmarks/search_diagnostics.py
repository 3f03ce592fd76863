"""Cheap diagnostics of an RL Panning search, from its per-step metrics (minutes each).

        python -m benchmarks.search_diagnostics --search runs/proxy/proxy-mse-s0 --name proxy-5k

Reads a search's metrics (``metrics.npz`` of ``benchmarks.proxy_search``, or the newest
checkpoint in ``--checkpoint DIR``, whose metrics hold every step so far) and writes
``benchmarks/results/search_diagnostics/<name>/`` (``table.md``, ``diagnostics.json``):

(a) **coverage**: how many of the search's transitions have an action within ``--radius``
    (L∞, in action units) of each fixed controller's action (``benchmarks.policy_eval``:
    SynFlow, SNIP or GraSP alone, the corners ``(1, −1, −1)`` and so on; the staircase's
    rows), in the uniform warm-up and after it;
(b) **predictability**: whether the reward and each of its terms (``r_sparsity``,
    ``r_loss``, ``r_gtg``, ``r_done``) can be predicted from ``(s, a)``, the observation the
    agent acted on and its action: held-out R² (episodes split 80/20 at random) of ridge
    regression and of a small MLP, with today's 7 observations and with the gap feature
    ``100·(ρe − ρt)`` added (observations 4 and 5). Ridge sees the gap as a linear combination
    of two inputs it already has; the MLP sees its scale;
(c) **ranges**: the normalisation ranges of the loss and ``‖g‖²`` at steps through the search
    (they only widen), and the observed ``N(L)``, ``N(G)`` per window.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "search_diagnostics")
TERMS = ("reward", "r_sparsity", "r_loss", "r_gtg", "r_done")
RANGE_STEPS = (0, 100, 1000, 2000, 5000, 10_000, 20_000, 30_000, 40_000, 50_000)


# -- (a) coverage ------------------------------------------------------------------------------


def controller_actions(rounds: int = 100, targets=(0.9, 0.95, 0.98, 0.99, 0.995)) -> dict:
    """Each fixed controller's actions ``[K, 3]`` (distinct rows): each metric alone, and the
    staircase's rows over ``targets``."""
    from benchmarks import policy_eval

    out = {m: policy_eval.single_metric_actions(m, 1) for m in ("synflow", "snip", "grasp")}
    stairs = np.concatenate([policy_eval.staircase_actions(s, rounds, "add") for s in targets])
    out["staircase"] = np.unique(stairs.round(6), axis=0)
    return out


def near_counts(actions: np.ndarray, points: np.ndarray, radius: float) -> int:
    """How many rows of ``actions [N, A]`` lie within ``radius`` (L∞) of any row of
    ``points [K, A]``."""
    actions, points = np.asarray(actions, np.float64), np.asarray(points, np.float64)
    dist = np.max(np.abs(actions[:, None, :] - points[None, :, :]), axis=-1)  # [N, K]
    return int(np.sum(np.min(dist, axis=1) <= radius))


def uniform_expected(points: np.ndarray, radius: float, n: int) -> float:
    """Expected count of ``n`` uniform actions in ``[−1, 1]^A`` within ``radius`` (L∞) of one
    of ``points`` (boxes clipped to the cube; overlaps between points not removed)."""
    points = np.asarray(points, np.float64)
    side = np.minimum(points + radius, 1.0) - np.maximum(points - radius, -1.0)
    return float(n * np.sum(np.prod(side / 2.0, axis=1)))


COVERAGE_EDGES = (10_000, 20_000, 30_000, 40_000)  # windows after the warm-up


def windows_after(warmup_steps: int, steps: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` from the warm-up's end to ``steps``, cut at
    :data:`COVERAGE_EDGES`."""
    edges = [warmup_steps, *(e for e in COVERAGE_EDGES if warmup_steps < e < steps), steps]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def coverage(metrics: dict, warmup_steps: int, radius: float) -> dict:
    """Per fixed controller: transitions near its actions in the warm-up, after it, and in
    each window after it (``by_window``: ``"start-end"`` to a count)."""
    actions = np.asarray(metrics["action"])
    parts = {"warm-up": actions[:warmup_steps], "after warm-up": actions[warmup_steps:]}
    windows = windows_after(warmup_steps, len(actions))
    out = {}
    for name, points in controller_actions().items():
        out[name] = {
            "points": len(points),
            **{part: near_counts(a, points, radius) for part, a in parts.items()},
            "by_window": {
                f"{a}-{b}": near_counts(actions[a:b], points, radius) for a, b in windows
            },
            "uniform_expected_per_2000": uniform_expected(points, radius, 2000),
        }
    return out


# -- (b) predictability ------------------------------------------------------------------------


def features(obs: np.ndarray, action: np.ndarray, gap: bool) -> np.ndarray:
    """``[N, 10]`` (observation, action), and ``100·(ρe − ρt)`` as an 11th column with ``gap``."""
    obs, action = np.asarray(obs, np.float64), np.asarray(action, np.float64)
    cols = [obs, action]
    if gap:
        cols.append(100.0 * (obs[:, 4:5] - obs[:, 5:6]))
    return np.concatenate(cols, axis=1)


def r2(y: np.ndarray, prediction: np.ndarray) -> float:
    """``1 − Σ(y − ŷ)² / Σ(y − ȳ)²`` (0 for the mean; 1 for an exact fit; nan if y is constant)."""
    y, prediction = np.asarray(y, np.float64), np.asarray(prediction, np.float64)
    total = np.sum((y - y.mean()) ** 2)
    return float(1.0 - np.sum((y - prediction) ** 2) / total) if total > 0 else float("nan")


CLIP_SD = 5.0  # N(G) is ~1e-4 but for the first steps of a search, where it reaches ~1


def standardiser(x: np.ndarray, clip: float | None = CLIP_SD):
    """``z(x_new)``: standardised by ``x``'s mean and std, clipped to ``±clip`` standard
    deviations, so one early outlier of an input does not decide a fit's extrapolation."""
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 0, std, 1.0)
    if clip is None:
        return lambda x_new: (x_new - mean) / std
    return lambda x_new: np.clip((x_new - mean) / std, -clip, clip)


def ridge_fit(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, clip: float | None = CLIP_SD):
    """Ridge regression on standardised inputs (:func:`standardiser`; intercept not
    penalised); returns ``predict(x)``."""
    scale = standardiser(x, clip)
    z = scale(x)
    y_mean = y.mean()
    w = np.linalg.solve(z.T @ z + l2 * len(z) * np.eye(z.shape[1]), z.T @ (y - y_mean))
    return lambda x_new: scale(x_new) @ w + y_mean


def mlp_fit(x: np.ndarray, y: np.ndarray, *, hidden: int = 64, steps: int = 3000, seed: int = 0):
    """A 2-layer ReLU MLP (Adam 1e-3, full batch, squared error) on standardised inputs and
    target; returns ``predict(x)``."""
    import jax
    import jax.numpy as jnp
    import optax

    scale = standardiser(x)
    y_mean, y_std = float(y.mean()), float(y.std()) or 1.0
    z = jnp.asarray(scale(x), jnp.float32)
    t = jnp.asarray((y - y_mean) / y_std, jnp.float32)
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    d = z.shape[1]
    params = {
        "w1": jax.random.normal(k1, (d, hidden)) * np.sqrt(2.0 / d),
        "b1": jnp.zeros(hidden),
        "w2": jax.random.normal(k2, (hidden, hidden)) * np.sqrt(2.0 / hidden),
        "b2": jnp.zeros(hidden),
        "w3": jax.random.normal(k3, (hidden,)) * np.sqrt(1.0 / hidden),
        "b3": jnp.zeros(()),
    }

    def apply(p, z):
        h = jax.nn.relu(z @ p["w1"] + p["b1"])
        h = jax.nn.relu(h @ p["w2"] + p["b2"])
        return h @ p["w3"] + p["b3"]

    opt = optax.adam(1e-3)

    def train(params):
        def body(carry, _):
            params, state = carry
            loss, grads = jax.value_and_grad(lambda p: jnp.mean((apply(p, z) - t) ** 2))(params)
            updates, state = opt.update(grads, state)
            return (optax.apply_updates(params, updates), state), loss

        (params, _), _ = jax.lax.scan(body, (params, opt.init(params)), None, length=steps)
        return params

    params = jax.jit(train)(params)
    return lambda x_new: (
        np.asarray(apply(params, jnp.asarray(scale(x_new), jnp.float32))) * y_std + y_mean
    )


def episode_split(done: np.ndarray, held_out: float = 0.2, seed: int = 0) -> np.ndarray:
    """A boolean ``[N]`` mask of the held-out steps: whole episodes (ended by ``done``),
    a ``held_out`` fraction of them drawn at random."""
    done = np.asarray(done, bool)
    episode = np.concatenate([[0], np.cumsum(done)[:-1]])
    ids = np.unique(episode)
    rng = np.random.default_rng(seed)
    test = rng.choice(ids, size=max(1, int(round(held_out * len(ids)))), replace=False)
    return np.isin(episode, test)


def predictability(metrics: dict, warmup_steps: int, mlp_steps: int) -> dict:
    """Held-out R² per term and model, on the steps that did not collapse (a collapse's
    reward, up to ``−T``, is a rare outlier three orders of magnitude beyond the rest: it
    would decide a least-squares fit alone); ``r_done`` is reported as the collapse count."""
    obs = np.asarray(metrics["obs"])
    action = np.asarray(metrics["action"])
    collapsed = np.asarray(metrics["info"]["collapsed"], bool)
    targets = {"reward": np.asarray(metrics["reward"], np.float64)} | {
        term: np.asarray(metrics["info"][term], np.float64) for term in TERMS[1:-1]
    }
    test = episode_split(metrics["done"])
    train, test = ~test & ~collapsed, test & ~collapsed
    out = {}
    for gap in (False, True):
        x = features(obs, action, gap)
        row = {}
        for term, y in targets.items():
            cell = {}
            for model, fit in (
                ("ridge", ridge_fit),
                ("mlp", lambda a, b: mlp_fit(a, b, steps=mlp_steps)),
            ):
                if model == "mlp" and not mlp_steps:  # --mlp-steps 0: ridge alone
                    cell[model] = float("nan")
                    continue
                predict = fit(x[train], y[train])
                cell[model] = r2(y[test], predict(x[test]))
            row[term] = cell
        out["obs + action + gap" if gap else "obs + action"] = row
    out["held_out_steps"] = int(test.sum())
    out["train_steps"] = int(train.sum())
    out["collapsed_steps"] = int(collapsed.sum())
    return out


# -- (c) ranges --------------------------------------------------------------------------------


def range_trace(metrics: dict, window: int = 2000) -> dict:
    """The ranges after chosen steps, and per window the observed N(L), N(G) (median, max)."""
    ranges = np.asarray(metrics["info"]["ranges"], np.float64)  # [N, 2, 2]
    obs = np.asarray(metrics["obs"], np.float64)
    n = len(ranges)
    at = {}
    for s in RANGE_STEPS:
        if s < n:
            r = ranges[max(s - 1, 0)] if s else ranges[0]
            at[str(s)] = {"loss": r[0].tolist(), "grad_norm": r[1].tolist()}
    at[str(n)] = {"loss": ranges[-1, 0].tolist(), "grad_norm": ranges[-1, 1].tolist()}
    windows = []
    for start in range(0, n, window):
        sl = slice(start, min(start + window, n))
        windows.append(
            {
                "steps": [start, sl.stop],
                "N(L) median": float(np.median(obs[sl, 0])),
                "N(L) max": float(obs[sl, 0].max()),
                "N(G) median": float(np.median(obs[sl, 1])),
                "N(G) max": float(obs[sl, 1].max()),
            }
        )
    return {"after_step": at, "windows": windows}


# -- the report --------------------------------------------------------------------------------


def load_metrics(search: str | None, checkpoint: str | None) -> dict:
    """A search's per-step metrics as nested numpy arrays."""
    if checkpoint:
        from jpanning import rlpanning

        return rlpanning.policy_from_checkpoint(checkpoint)[3]
    with np.load(os.path.join(search, "metrics.npz")) as f:
        flat = {k: f[k] for k in f.files}
    metrics = {k: v for k, v in flat.items() if not k.startswith("info/")}
    metrics["info"] = {k[5:]: v for k, v in flat.items() if k.startswith("info/")}
    return metrics


def _r2_text(value: float) -> str:
    return "not fitted" if np.isnan(value) else f"{value:.3f}"


def markdown(result: dict, command: str, env: dict) -> str:
    from benchmarks import timing

    cov, pred, rng = result["coverage"], result["predictability"], result["ranges"]
    lines = [
        f"# Diagnostics of the search in `{result['source']}` ({result['steps']:,} agent steps)",
        "",
        *timing.header(command, env, ("jax",)),
        "",
        f"## (a) Transitions near each fixed controller's action (L∞ ≤ {result['radius']})",
        "",
        f"Warm-up: the first {result['warmup_steps']:,} steps (uniform actions). Expected "
        "under uniform actions: per 2,000 steps.",
        "",
        "| controller | its actions | in the warm-up | after it | expected per 2,000 uniform |",
        "|---|---|---|---|---|",
    ]
    for name, c in cov.items():
        lines.append(
            f"| {name} | {c['points']} | {c['warm-up']} | {c['after warm-up']} | "
            f"{c['uniform_expected_per_2000']:.1f} |"
        )
    windows = list(next(iter(cov.values())).get("by_window", {}))
    if len(windows) > 1:
        spans = [tuple(int(x) for x in w.split("-")) for w in windows]
        lines += [
            "",
            "After the warm-up, by window of the search: transitions near each controller per "
            "2,000 steps (uniform actions would give the last column above).",
            "",
            "| controller | " + " | ".join(f"{a:,}-{b:,}" for a, b in spans) + " |",
            "|---|" + "---|" * len(spans),
        ]
        for name, c in cov.items():
            per = [c["by_window"][w] * 2000 / (b - a) for w, (a, b) in zip(windows, spans)]
            lines.append(f"| {name} | " + " | ".join(f"{x:.1f}" for x in per) + " |")
    lines += [
        "",
        "## (b) Held-out R² of the reward and its terms from (s, a)",
        "",
        f"{pred['train_steps']:,} training and {pred['held_out_steps']:,} held-out steps "
        "(whole episodes, 20% at random), the steps that collapsed left out "
        f"({pred['collapsed_steps']} in the search: `r_done` is nonzero only there). Ridge: "
        "standardised inputs clipped at ±5 sd, λ = 1e-3; MLP: the same inputs, 64-64 ReLU, "
        "Adam 1e-3, full batch.",
        "",
        "| inputs | " + " | ".join(f"{t} ridge | {t} MLP" for t in TERMS[:-1]) + " |",
        "|---|" + "---|---|" * (len(TERMS) - 1),
    ]
    for inputs in ("obs + action", "obs + action + gap"):
        row = pred[inputs]
        lines.append(
            f"| {inputs} | "
            + " | ".join(f"{row[t]['ridge']:.3f} | {_r2_text(row[t]['mlp'])}" for t in TERMS[:-1])
            + " |"
        )
    lines += [
        "",
        "## (c) The normalisation ranges during the search",
        "",
        "| after step | loss lo | loss hi | ‖g‖² lo | ‖g‖² hi |",
        "|---|---|---|---|---|",
    ]
    for step, r in rng["after_step"].items():
        lines.append(
            f"| {int(step):,} | {r['loss'][0]:.5g} | {r['loss'][1]:.5g} | "
            f"{r['grad_norm'][0]:.5g} | {r['grad_norm'][1]:.5g} |"
        )
    lines += [
        "",
        "| steps | N(L) median | N(L) max | N(G) median | N(G) max |",
        "|---|---|---|---|---|",
    ]
    for w in rng["windows"]:
        lines.append(
            f"| {w['steps'][0]:,}-{w['steps'][1]:,} | {w['N(L) median']:.3g} | "
            f"{w['N(L) max']:.3g} | {w['N(G) median']:.3g} | {w['N(G) max']:.3g} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from benchmarks import timing
    from jpanning import cpu, report

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--search", help="a benchmarks.proxy_search output folder (metrics.npz)")
    src.add_argument("--checkpoint", help="a search's checkpoints folder (its newest step)")
    p.add_argument("--name", required=True)
    p.add_argument("--warmup-steps", type=int, default=2000)
    p.add_argument("--radius", type=float, default=0.2)
    p.add_argument(
        "--mlp-steps",
        type=int,
        default=3000,
        help="full-batch Adam steps of each MLP fit; 0: ridge alone (a 50k-step search's "
        "eight fits take ~20 min on 2 busy cores)",
    )
    args = p.parse_args(argv)
    cpu.configure()
    metrics = load_metrics(args.search, args.checkpoint)
    result = {
        "source": args.search or args.checkpoint,
        "steps": int(len(metrics["reward"])),
        "warmup_steps": args.warmup_steps,
        "radius": args.radius,
        "coverage": coverage(metrics, args.warmup_steps, args.radius),
        "predictability": predictability(metrics, args.warmup_steps, args.mlp_steps),
        "ranges": range_trace(metrics),
    }
    env = report.environment()
    command = timing.command("search_diagnostics", argv if argv is not None else sys.argv[1:])
    out = os.path.join(RESULTS, args.name)
    os.makedirs(out, exist_ok=True)
    report.write_json(os.path.join(out, "diagnostics.json"), {"command": command, **env, **result})
    text = markdown(result, command, env)
    report.atomic_write_bytes(os.path.join(out, "table.md"), text.encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
