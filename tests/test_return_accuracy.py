"""benchmarks.return_accuracy: each controller's masks trained, its return as policy_eval's,
and the rank correlations by hand."""

import json
import os

import jax
import pytest

from benchmarks import policy_eval, return_accuracy
from jpanning import data, rlpanning
from jpanning.agents import td3

CONFIG = rlpanning.RLPanningConfig(rounds=3, scoring="pool", pool_size=2)


def item(controller, target, seed, ret, acc, **extra):
    terms = {t: extra.pop(t, 0.0) for t in return_accuracy.TERMS}
    return {"controller": controller, "target": target, "seed": seed, "return": ret,
            "accuracy": acc, "effective": target, "chance": False} | terms | extra  # fmt: skip


def test_summary_ranks_returns_against_accuracies_by_hand():
    items = [  # at 0.9 the return orders the accuracies; at 0.99 it reverses them
        item("a", 0.9, 0, -1.0, 0.80, r_loss=3.0),
        item("b", 0.9, 0, -2.0, 0.70, r_loss=2.0),
        item("c", 0.9, 0, -3.0, 0.60, r_loss=1.0),
        item("a", 0.99, 0, -1.0, 0.10, chance=True),
        item("b", 0.99, 0, -2.0, 0.50),
        item("c", 0.99, 0, -3.0, 0.55),
        item("c", 0.99, 1, -5.0, 0.65),
    ]
    text, stats = return_accuracy.summarise(items, ["a", "b", "c"], [0.9, 0.99])
    assert stats["0.9"]["spearman_means"] == pytest.approx(1.0)
    assert stats["0.9"]["spearman_episodes"] == pytest.approx(1.0)
    assert stats["0.9"]["spearman_r_loss"] == pytest.approx(1.0)
    assert stats["0.9"]["spearman_r_gtg"] is None  # constant: undefined, not NaN
    assert stats["0.9"]["best_return"] == stats["0.9"]["best_accuracy"] == "a"
    # at 0.99: c's mean over its two seeds is return -4, accuracy 0.60
    assert stats["0.99"]["spearman_means"] == pytest.approx(-1.0)
    # four episodes: returns -1, -2, -3, -5 against accuracies 0.10, 0.50, 0.55, 0.65
    assert stats["0.99"]["spearman_episodes"] == pytest.approx(-1.0)
    assert stats["0.99"]["episodes"] == 4 and stats["0.99"]["best_accuracy"] == "c"
    assert "| 0.99 | c | 2 | -4.00 ± 1.4142 | 0.6000 ± 0.0707 |" in text
    assert "0.1000 (1 at chance)" in text


@pytest.mark.slow  # three runs of the benchmark on LeNet-5: ~45 s on 2 cores
def test_items_train_each_controllers_masks_and_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(return_accuracy, "RESULTS", str(tmp_path))
    actor = td3.init_agent(jax.random.key(5), CONFIG.td3, 7, 3).actor_params
    policy = str(tmp_path / "policy.msgpack")
    rlpanning.save_policy(policy, actor, CONFIG, meta={"model": "lenet5", "dataset": "synthetic"})
    argv = ["--policy", policy, "--preset", "tiny", "--targets", "0.8", "--seeds", "0",
            "--controllers", "synflow", "greedy", "--name", "t"]  # fmt: skip
    assert return_accuracy.main(argv) == 0
    out = tmp_path / "t"
    items = {i["controller"]: i for i in return_accuracy.load_items(str(out))}
    assert sorted(items) == ["greedy", "synflow"]
    for i in items.values():  # trained one epoch (the tiny preset's), the last epoch's accuracy
        assert len(i["history"]) == 1 and i["accuracy"] == i["history"][0]["test_accuracy"]
        assert os.path.isfile(out / "items" / f"{i['controller']}-0.8-s0.npz")
        assert not i["chance"] and 0.0 < i["effective"] < 1.0
    assert sum(items["greedy"]["picks"].values()) == CONFIG.rounds
    # synflow's return is policy_eval's for the same episode (its environment, keys, ranges)
    _, config, _ = rlpanning.load_policy(policy)  # as saved: the environment the items played
    env, env_params, key = policy_eval.build(
        "lenet5", data.load_dataset("synthetic"), config, 0, 10
    )
    k_episode = jax.random.fold_in(key, int(round(0.8 * 1e4)))
    act = policy_eval.controller("synflow", None, None, 0.8, CONFIG.rounds, CONFIG.fusion, None)
    played = policy_eval.play(
        env, env_params, jax.jit(env.step), jax.jit(env.reset), act, 0.8, k_episode, None
    )
    assert items["synflow"]["return"] == pytest.approx(played["return"], rel=1e-6)
    assert items["synflow"]["effective"] == pytest.approx(played["effective"])
    table = (out / "table.md").read_text()
    assert "| 0.8 | synflow | 1 |" in table and "| 0.8 | greedy | 1 |" in table
    # resumed: finished items are neither played nor trained again
    monkeypatch.setattr(return_accuracy, "episode", lambda *a: pytest.fail("played again"))
    monkeypatch.setattr(return_accuracy.train, "train", lambda *a, **k: pytest.fail("trained"))
    assert return_accuracy.main(argv) == 0
    # an item whose masks were saved trains them without playing its episode again
    saved = json.loads((out / "items" / "synflow-0.8-s0.json").read_text())
    os.remove(out / "items" / "synflow-0.8-s0.json")
    episode = {k: saved[k] for k in ("return", "effective", "collapsed", *return_accuracy.TERMS)}
    (out / "items" / "synflow-0.8-s0.episode.json").write_text(json.dumps(episode))
    monkeypatch.undo()
    monkeypatch.setattr(return_accuracy, "RESULTS", str(tmp_path))
    monkeypatch.setattr(return_accuracy, "episode", lambda *a: pytest.fail("played again"))
    assert return_accuracy.main(argv) == 0
    again = json.loads((out / "items" / "synflow-0.8-s0.json").read_text())
    assert again["accuracy"] == pytest.approx(saved["accuracy"])  # the same masks, same key
    assert not (out / "items" / "synflow-0.8-s0.episode.json").exists()
