"""RunConfig: one typed, validated config per run, and run.json's flat keys both ways."""

import json
import os

import pytest

from jpanning import cli
from jpanning.config import (
    FIELDS,
    NOT_SAVED,
    DataConfig,
    PruningConfig,
    RunConfig,
    TrainingConfig,
    option_fields,
    order,
)
from jpanning.pruning import PanningOptions
from jpanning.errors import JPanningError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"model": "resnet7"}, "unknown model 'resnet7'; choose from: "),
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet'; choose from: cifar10, "),
        ({"method": "lottery"}, "unknown method 'lottery'; choose from: dense, random, "),
        ({"ratio": 0.0}, "ratio: 0.0 is outside (0, 1): it is the fraction of prunable"),
        ({"ratio": 1.5}, "ratio: 1.5 is outside (0, 1)"),
        ({"ratio": "half"}, "ratio: 'half' is not a number; give a fraction in (0, 1)"),
        ({"epochs": 0}, "epochs: 0 must be positive"),
        ({"epochs": 1.5}, "epochs: 1.5 is not an integer"),
        (
            {"method": "panning", "panning_weights": [[1, 2]]},
            "'1,2' is not three non-negative numbers",
        ),
        ({"scope": "net"}, "unknown scope 'net'; choose from: global, layer"),
        ({"search": 1}, "search: 1 is not True or False"),
        ({"method": "snip", "policy": "p.msgpack"}, "--policy is for --method rlpanning, not"),
        ({"method": "snip", "search": True}, "--search is for --method rlpanning, not 'snip'"),
        (
            {"method": "snip", "pretrained": "m.npz"},
            "--pretrained is for the methods that prune a trained network (purl, uniform), not",
        ),
        ({"lr": 0.1, "momentum_x": 1}, "unknown run setting(s) momentum_x"),
        # a method's option for another method: refused, not ignored
        (
            {"method": "snip", "rounds": 5},
            "--rounds is for the methods synflow, iter_snip, force, panning, rlpanning, not",
        ),
        ({"method": "panning", "agent_steps": 9}, "--agent-steps is for --method rlpanning"),
    ],
)
def test_bad_settings_are_one_line_naming_the_value_and_what_is_allowed(settings, message):
    with pytest.raises(JPanningError) as e:
        RunConfig.from_flat(settings)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_parts_are_typed_and_frozen_and_replace_checks_again():
    config = RunConfig(
        model="lenet5",
        data=DataConfig(dataset="synthetic"),
        pruning=PruningConfig(method="snip", ratio=0.9),
        training=TrainingConfig(epochs=1),
    )
    assert config.pruning.ratio == 0.9 and config.training.lr == 0.1
    with pytest.raises(AttributeError):
        config.model = "resnet20"
    assert config.replace(ratio=0.5).pruning.ratio == 0.5 and config.pruning.ratio == 0.9
    with pytest.raises(JPanningError, match="ratio: 2 is outside"):
        config.replace(ratio=2)
    with pytest.raises(JPanningError, match="RunConfig.data must be a DataConfig"):
        RunConfig(data={"dataset": "synthetic"})
    # the method's options: its own dataclass, typed (a dict of its fields becomes one)
    panning = PruningConfig(method="panning", options={"rounds": 7})
    assert panning.options == PanningOptions(rounds=7) and panning.option("policy") is None
    with pytest.raises(JPanningError, match="--method snip has no option.s. rounds"):
        PruningConfig(method="snip", options={"rounds": 7})
    with pytest.raises(JPanningError, match="takes its options as a SNIPOptions, not a Panning"):
        PruningConfig(method="snip", options=PanningOptions())


def test_the_command_line_and_the_config_are_the_same_settings():
    defaults = vars(cli.build_parser().parse_args([]))
    assert list(defaults) == list(order())
    # the config holds its method's options only (rlpanning's by default)
    own = {k: v for k, v in defaults.items() if k in FIELDS or k in option_fields("rlpanning")}
    assert RunConfig().flat() == own | {"run_id": None}
    argv = ["--model", "lenet5", "--method", "panning", "--panning-weights", ".2,.5,.3"]
    argv += ["--panning-thresholds", "0.9", "--rounds", "7", "--ratio", "0.8"]
    config = cli.config_of(cli.build_parser().parse_args(argv))
    assert config.pruning.options == PanningOptions(
        rounds=7, panning_weights=((0.2, 0.5, 0.3),), panning_thresholds=(0.9,)
    )
    assert config.pruning.option("search") is None and "search" not in config.flat()
    assert cli.settings_of(cli.argv_of(cli.settings_of(argv))) == cli.settings_of(argv)
    # the run.py line of a config (compare logs it) gives that config back
    again = cli.build_parser().parse_args(cli.argv_of_config(config.replace(scoring="pool")))
    assert cli.config_of(again) == config.replace(scoring="pool")
    search = cli.config_of(cli.build_parser().parse_args(["--search", "--rounds", "7"]))
    assert search.pruning.options.search and search.pruning.options.rounds == 7
    # a new method keeps the options it reads too
    assert config.replace(method="synflow").pruning.options.rounds == 7
    assert "panning_weights" not in config.replace(method="synflow").flat()


def test_run_json_round_trips_and_an_old_run_folder_still_reads(tmp_path):
    config = RunConfig.from_flat(
        {"model": "lenet5", "dataset": "synthetic", "method": "panning", "ratio": 0.8}
        | {"panning_weights": [[0.2, 0.5, 0.3]] * 5, "epochs": 2, "run_id": "abc", "out": "x"}
    )
    saved = config.saved()
    assert not set(NOT_SAVED) & set(saved) and saved["run_id"] == "abc"
    text = json.dumps(saved)
    again = RunConfig.from_flat(json.loads(text) | {"out": "x"})
    assert again == config and json.dumps(again.saved()) == text
    # a run.json written before RunConfig existed (the RL search of runs/policy-resnet20-fmnist)
    old = {
        "model": "resnet20", "dataset": "fashion_mnist", "ratio": 0.95, "method": "rlpanning",
        "scope": "global", "rounds": None, "temperature": 200.0, "panning_thresholds": None,
        "panning_weights": None, "chunk_size": None, "preset": "paper", "agent_steps": None,
        "scoring": "pool", "pool_size": None, "fusion": "add", "effective": "authors",
        "reset_observes_sparsity": False, "policy": None, "search": True,
        "purl_episodes": None, "purl_alpha_step": None, "purl_state": None,
        "purl_collapse": None, "pretrained": None, "pretrain_epochs": None, "epochs": 1,
        "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0005, "seed": 0,
        "samples_per_class": 10, "train_limit": None, "test_limit": None, "data_dir": None,
        "checkpoint_every": 1000, "devices": None, "allow_collapsed": False,
        "run_id": "dcf3118a8a2d4d4b830115e7e33cefcc",
    }  # fmt: skip
    out = tmp_path / "old"
    out.mkdir()
    (out / "run.json").write_text(json.dumps(old))
    resumed = cli._resumed_config(
        cli.build_parser().parse_args(["--resume", str(out), "--devices", "1"])
    )
    args = resumed.flat()
    assert {k: v for k, v in args.items() if k in old and k != "devices"} == {
        k: v for k, v in old.items() if k != "devices" and k in args
    }
    assert args["devices"] == 1 and args["out"] == args["resume"] == str(out)
    assert not args["overwrite"]
    # a field added since (config.ADDED_LATER) reads as what that run used: the authors' critic
    # loss, and no collapse shield (it screened without one); the other methods' options go
    others = {"panning_thresholds", "panning_weights", "purl_episodes", "purl_alpha_step",
              "purl_state", "purl_collapse", "pretrained", "pretrain_epochs"}  # fmt: skip
    kept = {k: v for k, v in old.items() if k not in others}
    assert resumed.saved() == kept | {"devices": 1, "critic_loss": None, "collapse_shield": "off"}
