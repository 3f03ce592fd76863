"""The benchmarks' timing (warm-up, alternating calls and windows) and their record of
how PyTorch ran (no PyTorch needed)."""

import numpy as np
import pytest

from benchmarks import timing
from benchmarks.reference import torch_device


class FakeClock:
    """``time.perf_counter`` stand-in that runners advance by their simulated cost."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", fake)
    return fake


def fake_runner(clock, seconds_per_step, calls, name):
    def run(n):
        calls.append((name, n))
        clock.now += n * seconds_per_step

    return run


def test_window_steps_sizes_windows_to_the_requested_seconds(clock):
    calls = []
    fast = fake_runner(clock, 0.01, calls, "fast")  # 10 steps: 0.1 s
    assert timing.window_steps(fast, min_seconds=1.0, at_least=10) == 100
    slow = fake_runner(clock, 0.5, calls, "slow")  # 10 steps: 5 s, already long enough
    assert timing.window_steps(slow, min_seconds=1.0, at_least=10) == 10
    assert calls == [("fast", 10), ("slow", 10)]


def test_alternating_windows_alternates_and_reports_rates(clock):
    calls = []
    runners = {
        "a": fake_runner(clock, 0.02, calls, "a"),  # 50 steps/s
        "b": fake_runner(clock, 0.04, calls, "b"),  # 25 steps/s
    }
    ips, med, steps = timing.alternating_windows(runners, None, repeats=2, batch_size=8)
    assert steps == 50  # about a second of the first runner
    assert calls == [("a", 2), ("b", 2), ("a", 10)] + [("a", 50), ("b", 50)] * 2
    assert ips["a"] == pytest.approx([400.0, 400.0]) and med["a"] == pytest.approx(400.0)
    assert ips["b"] == pytest.approx([200.0, 200.0]) and med["b"] == pytest.approx(200.0)
    calls.clear()
    assert timing.alternating_windows(runners, 3, repeats=1, batch_size=8)[2] == 3
    assert calls == [("a", 2), ("b", 2), ("a", 3), ("b", 3)]


def test_time_all_warms_up_then_alternates(clock):
    calls = []

    def variant(name, seconds):
        def run():
            calls.append(name)
            clock.now += seconds

        return run

    run = {"a": variant("a", 1.0), "b": variant("b", 3.0)}
    assert timing.time_all(run, 2) == {"a": [1.0, 1.0], "b": [3.0, 3.0]}
    assert calls == ["a", "b"] + ["a", "b"] * 2  # one untimed call each, then turns
    calls.clear()
    assert timing.time_calls(run["b"], 1, warmup=2) == [3.0]
    assert calls == ["b"] * 3
    assert timing.medians({"a": [3.0, 1.0, 2.0]}) == {"a": 2.0}


def test_command_records_the_arguments():
    assert timing.command("td3", ["--parts", "search"]) == "python -m benchmarks.td3 --parts search"
    assert timing.command("x", ["--baseline", "trim at 2 GiB"]).endswith("'trim at 2 GiB'")


def test_torch_device_labels_name_device_and_precision():
    cuda = {"version": "2.11.0", "device": "cuda", "name": "NVIDIA H100"}
    tf32 = cuda | {"tf32_matmul": True, "tf32_cudnn": True}
    assert torch_device.label(tf32) == "torch 2.11.0 on NVIDIA H100 (TF32)"
    full = cuda | {"tf32_matmul": False, "tf32_cudnn": False, "jax_matmul_precision": "highest"}
    assert torch_device.label(full) == (
        "torch 2.11.0 on NVIDIA H100 (full float32; JAX's precision setting: highest)"
    )
    unset = tf32 | {"jax_matmul_precision": None}
    assert torch_device.label(unset).endswith("(TF32; JAX's precision setting: default)")
    cpu = {"version": "2.13.0+cpu", "device": "cpu", "threads": 2}
    assert torch_device.label(cpu) == "torch 2.13.0+cpu on the CPU (2 threads)"
    # Results written before the device was recorded hold PyTorch's version alone (CPU runs).
    assert torch_device.label("2.13.0+cpu", 2) == torch_device.label(cpu)


def test_unknown_torch_device_is_refused_before_torch_is_needed():
    with pytest.raises(ValueError, match="'tpu'; choose from: auto, cpu, cuda"):
        torch_device.resolve("tpu")


def test_allocator_summary_pools_the_calls_of_every_child():
    from benchmarks.archive import allocator

    def child(malloc, seconds, faults):
        calls = {"seconds": seconds, "faults": faults, "system_s": [0.0] * len(seconds)}
        return {"malloc": malloc, "programs": {"snip": calls}, "rss_mib": 100.0}

    runs = {
        allocator.JPANNING: [
            child("jpanning: x", [1.0, 3.0], [0, 0]),
            child("jpanning: x", [2.0], [4]),
        ],
        allocator.DEFAULT: [child("user", [6.0, 2.0], [9, 9]), child("user", [4.0], [7])],
    }
    got = allocator.summarize(runs)
    snip = got["median"]["snip"]
    assert snip[allocator.JPANNING] == {"seconds": 2.0, "faults": 0, "system_s": 0.0}
    assert snip[allocator.DEFAULT] == {"seconds": 4.0, "faults": 9, "system_s": 0.0}
    assert snip["speedup"] == 2.0
    assert got["malloc"] == {allocator.JPANNING: "jpanning: x", allocator.DEFAULT: "user"}
    assert got["baseline"] == allocator.DEFAULT


def test_allocator_arms_set_glibc_through_its_environment(monkeypatch):
    """Each baseline child gets exactly its glibc variables (a user's own are dropped), so
    jpanning leaves malloc to them; the jpanning child gets none."""
    from benchmarks.archive import allocator

    monkeypatch.setenv("MALLOC_TOP_PAD_", "1")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "3")
    malloc = lambda env: {k: v for k, v in env.items() if k.startswith("MALLOC_")}  # noqa: E731
    assert malloc(allocator._arm_env(allocator.JPANNING)) == {}
    assert malloc(allocator._arm_env("trim at 2 GiB")) == {
        "MALLOC_ARENA_MAX": "1",
        "MALLOC_MMAP_MAX_": "0",
        "MALLOC_TRIM_THRESHOLD_": "2147483647",
    }
    assert set(malloc(allocator._arm_env(allocator.DEFAULT))) == {"MALLOC_ARENA_MAX"}


def test_reward_signal_splits_a_table_into_its_two_main_effects():
    from benchmarks.reward_signal import two_way

    action = np.array([0.5, -1.0, 0.25, 0.25])  # column effects, mean 0
    batch = np.array([0.1, -0.3, 0.2])  # row effects, mean 0
    table = 2.0 + batch[:, None] + action[None, :]
    split = two_way(table)
    assert split["mean"] == pytest.approx(2.0)
    assert split["std_action"] == pytest.approx(np.std(action))
    assert split["std_batch"] == pytest.approx(np.std(batch))
    assert split["std_rest"] == pytest.approx(0.0, abs=1e-12)
    ss_action, ss_batch = 3 * np.sum(action**2), 4 * np.sum(batch**2)
    assert split["share_action"] == pytest.approx(ss_action / (ss_action + ss_batch))
    # an interaction term goes to the rest, the main effects stay
    bump = np.outer([1.0, -1.0, 0.0], [1.0, -1.0, 0.0, 0.0])
    split = two_way(table + bump)
    assert split["std_action"] == pytest.approx(np.std(action))
    assert split["std_rest"] == pytest.approx(np.sqrt(np.sum(bump**2) / bump.size))


def test_critic_fit_returns_to_go_by_hand():
    from benchmarks import critic_fit

    # G_2 = -3; G_1 = -2 + 0.5 * -3 = -3.5; G_0 = -1 + 0.5 * -3.5 = -2.75
    g = critic_fit.returns_to_go(np.array([-1.0, -2.0, -3.0]), gamma=0.5)
    np.testing.assert_allclose(g, [-2.75, -3.5, -3.0])


def test_critic_fit_trace_windows_the_searchs_metrics():
    from benchmarks import critic_fit

    metrics = {
        "q": np.array([0.0, -1.0, -2.0, 4.0, 6.0]),
        "critic_loss": np.array([9.0, 1.0, 3.0, 5.0, 100.0]),
        "actor_loss": np.array([0.0, 2.0, 0.0, -4.0, -6.0]),
        "actor_updated": np.array([False, True, False, True, True]),
        "reward": np.array([-0.1, -0.2, -174.0, -0.3, -0.1]),
        "updated": np.array([False, True, True, True, True]),  # step 0: warm-up, no update
    }
    first, second, third = critic_fit.search_trace(metrics, window=2)
    assert first["steps"] == [0, 2] and first["q_mean"] == -1.0  # only the updated step
    assert first["critic_loss_median"] == 1.0 and first["actor_loss_mean"] == 2.0
    assert second["q_mean"] == 1.0 and second["critic_loss_median"] == 4.0
    assert second["reward_min"] == -174.0 and second["collapse_penalties"] == 1
    assert third["steps"] == [4, 5] and third["critic_loss_mean"] == 100.0
