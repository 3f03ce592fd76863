"""The benchmark harness: a tiny grid end to end, reuse of finished cells, the table's maths."""

import csv
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from benchmarks import compare
from benchmarks.presets import PRESETS, Grid

PNG = b"\x89PNG\r\n\x1a\n"


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def cell_text(table: str, method: str, column: int) -> str:
    """The text in ``method``'s row of the accuracy table, ``column`` counted from 0."""
    for line in table.splitlines():
        parts = [p.strip() for p in line.strip("|").split("|")]
        if parts[0] == method and "±" in line:
            return parts[1 + column]
    raise AssertionError(f"no row {method!r}")


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):  # used by slow tests only
    """The 'tiny' preset (LeNet-5, synthetic data, 14 cells) run once for this module."""
    os.environ["JPANNING_COMPILATION_CACHE"] = "off"
    root = tmp_path_factory.mktemp("bench")
    assert compare.main(["--preset", "tiny", "--out-root", str(root)]) == 0
    return root / "tiny"


@pytest.mark.slow  # the 14-cell grid takes about a minute
def test_tiny_grid_writes_consistent_csv_table_and_plots(tiny_grid):
    grid = PRESETS["tiny"]
    rows = read_csv(tiny_grid / "runs.csv")
    # dense once per seed, every other method once per ratio and seed
    assert len(rows) == grid.seeds * (1 + 3 * len(grid.ratios)) == 14
    assert all(r["status"] == "ok" for r in rows)
    for r in rows:
        if r["method"] == "dense":
            assert r["ratio"] == "" and float(r["sparsity"]) == 0.0
            assert float(r["flops_fraction"]) == 1.0
        else:
            # exact sparsity: LeNet-5 on 16x16x3 synthetic images has 21,150 prunable weights
            assert int(r["total"]) == 21_150
            if r["method"] in ("panning", "rlpanning"):
                # the Panning authors' int(n * (1 - s)): 4,229 at 0.8, as (1 - 0.8) * n < 4,230
                kept = max(int(21_150 * (1 - float(r["ratio"]))), 1)
            else:
                kept = 21_150 - round(float(r["ratio"]) * 21_150)
            assert int(r["kept"]) == kept, r
            assert 0 < float(r["flops_fraction"]) < 1

    table = (tiny_grid / "table.md").read_text()
    for method in ("random", "snip", "rlpanning"):
        for col, ratio in enumerate(grid.ratios):
            acc = [
                float(r["test_accuracy"])
                for r in rows
                if r["method"] == method and r["ratio"] == str(ratio)
            ]
            expected = f"{np.mean(acc):.4f} ± {np.std(acc, ddof=1):.4f}"
            assert cell_text(table, method, col).strip("*") == expected
    dense = [float(r["test_accuracy"]) for r in rows if r["method"] == "dense"]
    assert (
        cell_text(table, "dense (reference)", 0)
        == f"{np.mean(dense):.4f} ± {np.std(dense, ddof=1):.4f}"
    )
    # exactly one bold cell per ratio, on the method with the best mean
    for col, ratio in enumerate(grid.ratios):
        means = {
            m: np.mean(
                [
                    float(r["test_accuracy"])
                    for r in rows
                    if r["method"] == m and r["ratio"] == str(ratio)
                ]
            )
            for m in ("random", "snip", "rlpanning")
        }
        bold = [m for m in means if cell_text(table, m, col).startswith("**")]
        assert bold == [max(means, key=means.get)]
    assert "| 0.5 | rlpanning |" in table and "| 0.8 | rlpanning |" in table
    for png in ("accuracy.png", "density.png", "screen_time.png", "fusion_weights.png"):
        assert (tiny_grid / png).read_bytes()[:8] == PNG
    record = json.loads((tiny_grid / "table.json").read_text())
    assert record["grid"]["seeds"] == 2 and record["cells"] == {"finished": 14, "in_grid": 14}
    snip = next(s for s in record["stats"] if s["method"] == "snip" and s["ratio"] == 0.8)
    assert sorted(snip["accuracy"]) == sorted(
        float(r["test_accuracy"]) for r in rows if r["method"] == "snip" and r["ratio"] == "0.8"
    )
    assert snip["accuracy_mean"] == pytest.approx(np.mean(snip["accuracy"]))
    assert {(v["ratio"], v["method"]) for v in record["verdicts"]} == {
        (0.5, "rlpanning"),
        (0.8, "rlpanning"),
    }


def test_without_a_search_budget_every_rlpanning_cell_screens_with_the_shipped_policy():
    grid = PRESETS["screening-resnet20"]
    assert not any(a in grid.run_args for a in compare.SEARCH_FLAGS)
    rl = [c for c in compare.cells_of(grid) if c.method == "rlpanning"]
    assert len(rl) == len(grid.ratios) * grid.seeds == 20
    assert all(c.policy_from is None and "--policy" not in c.argv for c in rl)
    searching = compare.cells_of(dataclasses.replace(grid, run_args=("--search",)))
    rl = [c for c in searching if c.method == "rlpanning" and c.seed == 0]
    assert rl[0].policy_from is None and all(c.policy_from == rl[0] for c in rl[1:])


@pytest.mark.slow  # the 14-cell grid takes about a minute
def test_rlpanning_searches_once_per_seed_and_screens_other_ratios_with_its_policy(tiny_grid):
    cells = compare.cells_of(PRESETS["tiny"])
    rl = [c for c in cells if c.method == "rlpanning"]
    for seed in (0, 1):
        search, screen = [c for c in rl if c.seed == seed]
        assert search.policy_from is None and screen.policy_from == search
        with open(tiny_grid / "cells" / screen.dirname / "results.json") as f:
            r = json.load(f)
        assert r["rl"]["policy_loaded_from"] == str(
            tiny_grid / "cells" / search.dirname / "policy.msgpack"
        )
        assert r["rl"]["agent_steps"] == 0


@pytest.mark.slow  # the 14-cell grid takes about a minute
def test_deleting_one_cell_recomputes_only_that_cell(tiny_grid, monkeypatch):
    rows = {r["cell"]: r for r in read_csv(tiny_grid / "runs.csv")}
    victim = next(c for c in rows if c.startswith("snip-0.8-seed1"))
    shutil.rmtree(tiny_grid / "cells" / victim)
    ran = []
    real = compare.run_cell
    monkeypatch.setattr(
        compare, "run_cell", lambda cell, *a: ran.append(cell.dirname) or real(cell, *a)
    )
    assert compare.main(["--preset", "tiny", "--out-root", str(tiny_grid.parent)]) == 0
    assert ran == [victim]
    again = {r["cell"]: r for r in read_csv(tiny_grid / "runs.csv")}
    # same seed, same machine: the recomputed cell gives the same mask and accuracy
    for field in ("kept", "test_accuracy", "flops_remaining"):
        assert again[victim][field] == rows[victim][field]


def test_method_failures_are_results_and_other_errors_stop_the_harness(tmp_path, monkeypatch):
    from jpanning import experiment
    from jpanning.errors import JPanningError, RunFailed

    cell = compare.cells_of(PRESETS["tiny"])[1]

    class Data:
        def get(self, config):
            return None

    def cut(config, dataset=None):
        print("screening")
        raise RunFailed("method 'random' pruned every weight of layer(s) X: the network is cut")

    monkeypatch.setattr(experiment, "run", cut)
    assert compare.run_cell(cell, str(tmp_path), Data(), None) == "failed"
    assert compare.cell_status(cell, str(tmp_path)) == "failed"
    row = compare.load_row(cell, str(tmp_path))
    assert row["status"] == "failed" and row["error"].endswith("the network is cut")
    assert (tmp_path / cell.dirname / "log.txt").read_text().endswith("screening\n")

    class Missing:
        def get(self, config):
            raise JPanningError("fashion_mnist cannot be loaded: no data")

    other = compare.cells_of(PRESETS["tiny"])[2]
    with pytest.raises(JPanningError, match="cannot be loaded"):
        compare.run_cell(other, str(tmp_path), Missing(), None)
    assert compare.cell_status(other, str(tmp_path)) is None


def test_cells_are_run_configs_and_their_keys_stay_those_of_their_run_py_arguments():
    """A cell runs a RunConfig; its folder's name hashes the run.py arguments that define it,
    as it did when cells ran command lines, so finished cells of earlier grids are reused."""
    import hashlib

    def sha(parts):
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]

    cells = compare.cells_of(PRESETS["screening-resnet20"])
    for cell in cells:
        # the methods with a collapse shield screen with it (new cells); the others as before
        shield = ["--collapse-shield", "synflow"] if cell.method in compare.OURS else []
        assert cell.key == sha(list(cell.argv) + shield)
    # without the shield (the authors'), Panning's cells are those screened before it existed
    for cell in compare.cells_of(PRESETS["screening-resnet20-no-shield"]):
        i = cell.argv.index("--collapse-shield")
        assert cell.argv[i + 1] == "off" and cell.config.pruning.option("collapse_shield") == "off"
        assert cell.key == sha(cell.argv[:i] + cell.argv[i + 2 :])
    snip = next(c for c in cells if c.method == "snip" and c.seed == 1)
    assert snip.argv[-4:] == ("--method", "snip", "--ratio", repr(snip.ratio))
    assert (snip.config.model, snip.config.seed) == ("resnet20", 1)
    assert (snip.config.pruning.method, snip.config.pruning.ratio) == ("snip", snip.ratio)
    grid = dataclasses.replace(PRESETS["tiny"], run_args=("--search", "--lr", "0.03"))
    by_method = {c.method: c.config for c in compare.cells_of(grid)}
    assert by_method["rlpanning"].pruning.options.search
    assert by_method["snip"].pruning.option("search") is None
    assert by_method["snip"].training.lr == 0.03


def test_cell_keys_follow_the_config():
    grid = PRESETS["tiny"]
    keys = {c.key for c in compare.cells_of(grid)}
    assert len(keys) == 14
    longer = compare.cells_of(Grid(**{**grid.__dict__, "epochs": 2}))
    assert not keys & {c.key for c in longer}
    more_seeds = compare.cells_of(Grid(**{**grid.__dict__, "seeds": 3}))
    assert keys < {c.key for c in more_seeds}


CUT = (
    "method 'snip' at ratio 0.99 pruned every weight of layer(s) Dense_2/kernel: the network is cut"
)


def _row(method, ratio, seed, acc, status="ok", error=""):
    row = dict.fromkeys(compare.CSV_FIELDS, "")
    row |= {"method": method, "ratio": ratio, "seed": seed, "status": status, "error": error}
    if status == "ok":
        row |= {
            "test_accuracy": acc,
            "sparsity": 0.0 if method == "dense" else ratio,
            "effective_sparsity": 0.0 if method == "dense" else ratio,
            "flops_fraction": 1.0,
            "screen_seconds": 1.0,
            "search_seconds": 0.0,
            "train_seconds": 2.0,
        }
    return row


def test_table_marks_best_says_where_panning_loses_and_reports_cut_cells():
    grid = Grid(
        model="lenet5",
        dataset="synthetic",
        ratios=(0.9, 0.99),
        methods=("dense", "random", "snip", "panning"),
        seeds=2,
    )
    rows = [
        _row("dense", "", 0, 0.90),
        _row("dense", "", 1, 0.92),
        _row("snip", 0.9, 0, 0.85),
        _row("snip", 0.9, 1, 0.86),
        _row("panning", 0.9, 0, 0.80),
        _row("panning", 0.9, 1, 0.82),
        _row("snip", 0.99, 0, None, "failed", CUT),
        _row("snip", 0.99, 1, None, "failed", CUT),
        _row("panning", 0.99, 0, 0.50),
        _row("panning", 0.99, 1, 0.70),
        _row("random", 0.9, 0, 0.10),
        _row("random", 0.9, 1, 0.12),
        _row("random", 0.99, 0, 0.90),  # higher than panning, but the other seed was cut
        _row("random", 0.99, 1, None, "failed", CUT),
    ]
    table = compare.render_table("t", grid, rows, [], "python -m benchmarks.compare ...")
    assert cell_text(table, "dense (reference)", 1) == "0.9100 ± 0.0141"
    assert cell_text(table, "snip", 0) == "**0.8550 ± 0.0071**"
    assert cell_text(table, "panning", 0) == "0.8100 ± 0.0141"
    assert "| snip | 0.8550 ± 0.0071 |" not in table  # bold, not plain
    assert "cut (2/2)" in table
    assert cell_text(table, "panning", 1) == "**0.6000 ± 0.1414**"
    assert cell_text(table, "random", 1) == "0.9000 (1 seed, 1 cut)"
    assert "| 0.9 | panning | snip 0.8550 | loses to snip: -0.0450 |" in table
    assert "| 0.99 | panning | - | no result |" in table  # no baseline trained in every seed
    assert f"- snip at 0.99: {CUT}" in table


def test_verdicts_say_win_tie_or_lose_and_a_cut_network_loses():
    grid = Grid(model="lenet5", dataset="synthetic", ratios=(0.9, 0.99, 0.995),
                methods=("synflow", "panning", "rlpanning"), seeds=3)  # fmt: skip
    rows = []
    for seed, (syn, pan, rl) in enumerate(
        [(0.80, 0.81, 0.90), (0.82, 0.79, 0.91), (0.84, 0.83, 0.92)]
    ):
        rows += [_row("synflow", 0.9, seed, syn), _row("panning", 0.9, seed, pan),
                 _row("rlpanning", 0.9, seed, rl)]  # fmt: skip
        rows += [
            _row("synflow", 0.99, seed, 0.5),
            _row("rlpanning", 0.99, seed, None, "failed", CUT),
        ]
        rows.append(_row("panning", 0.99, seed, 0.4 if seed else None, "ok" if seed else "failed",
                         "" if seed else CUT))  # fmt: skip
    got = {(r, m): v for r, m, _, v in compare.verdicts(compare.aggregate(rows), grid)}
    # synflow 0.82 ± 0.02; panning 0.81 ± 0.02: a gap of one hundredth is within one std
    assert got[(0.9, "panning")] == "ties with synflow: -0.0100 (within one std)"
    assert got[(0.9, "rlpanning")] == "beats synflow: +0.0900"  # 0.91 - 0.82
    assert got[(0.99, "rlpanning")] == "loses: cut in 3/3 seeds"
    assert got[(0.99, "panning")] == "loses to synflow: -0.1000; cut in 1 of 3 seeds"
    assert got[(0.995, "panning")] == "no result"  # nothing ran there
    partial = [r for r in rows if not (r["method"] == "rlpanning" and r["seed"] == 2)]
    partial = [r for r in partial if not (r["method"] == "synflow" and r["seed"] == 1)]
    got = {(r, m): v for r, m, _, v in compare.verdicts(compare.aggregate(partial), grid)}
    assert got[(0.9, "rlpanning")].endswith("; so far rlpanning 2/3 seeds, synflow 2/3 seeds")
    assert got[(0.99, "panning")].endswith("; so far synflow 2/3 seeds")


def test_a_cells_error_names_its_folder_relative_to_the_grid(tmp_path):
    cell = compare.cells_of(PRESETS["tiny"])[1]
    folder = tmp_path / "cells" / cell.dirname
    folder.mkdir(parents=True)
    error = f"cut; train it anyway with --resume /tmp/elsewhere/tiny/cells/{cell.dirname} --x"
    (folder / "failed.json").write_text(json.dumps({"error": error}))
    row = compare.load_row(cell, str(tmp_path / "cells"))
    assert row["error"] == f"cut; train it anyway with --resume cells/{cell.dirname} --x"


def test_bad_grids_get_one_line_errors(tmp_path, capsys):
    cases = [
        (
            ["--model", "resnet99", "--dataset", "synthetic", "--ratios", "0.5", "--name", "x"],
            "unknown model 'resnet99'",
        ),
        (["--preset", "tiny", "--methods", "snip", "prune_all"], "unknown method(s) prune_all"),
        (["--model", "lenet5", "--dataset", "synthetic"], "--ratios"),
        (["--preset", "tiny", "--run-args", "--seed 3"], "--run-args may not set --seed"),
    ]
    for argv, message in cases:
        assert compare.main(argv + ["--out-root", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        compare.main(["--preset", "tiny", "--ratios", "1.5"])
    assert "outside (0, 1)" in capsys.readouterr().err


@pytest.mark.slow  # 12 s: a dense cell trained, then PuRL and uniform on it
def test_purl_prunes_the_dense_cells_network_and_uniform_matches_its_sparsity(tmp_path):
    os.environ["JPANNING_COMPILATION_CACHE"] = "off"
    argv = ["--model", "tinycnn", "--dataset", "synthetic", "--ratios", "0.5", "--seeds", "1"]
    argv += ["--methods", "uniform", "purl", "dense", "--epochs", "1", "--name", "p"]
    argv += ["--run-args", "--preset quick --purl-episodes 1", "--out-root", str(tmp_path)]
    assert compare.main(argv) == 0
    grid = compare.grid_from_args(compare.build_parser().parse_args(argv))[1]
    order = compare.cells_of(grid)
    assert [c.method for c in order] == ["dense", "purl", "uniform"]  # uniform after purl
    cells = {c.method: c for c in order}
    results = {}
    for method, cell in cells.items():
        with open(tmp_path / "p" / "cells" / cell.dirname / "results.json") as f:
            results[method] = json.load(f)
    dense_npz = str(tmp_path / "p" / "cells" / cells["dense"].dirname / "model.npz")
    assert results["purl"]["pretrained"]["from"] == dense_npz
    assert results["uniform"]["pretrained"]["from"] == dense_npz
    achieved = results["purl"]["sparsity"]["sparsity"]
    assert results["uniform"]["config"]["ratio"] == achieved
    assert abs(results["uniform"]["sparsity"]["sparsity"] - achieved) < 1e-3
    table = (tmp_path / "p" / "table.md").read_text()
    assert "| 0.5 | purl | uniform " in table
    assert (tmp_path / "p" / "purl_alphas.png").read_bytes()[:8] == PNG


def test_shards_split_the_cells_once_each_and_keep_dependent_cells_together():
    searching = dataclasses.replace(PRESETS["tiny"], run_args=("--search", "--preset", "quick"))
    for grid in (searching, PRESETS["purl-resnet20"], PRESETS["screening-resnet20"]):
        cells = compare.cells_of(grid)
        for n in (1, 2, 3, 5):
            shares = [compare.shard(cells, k, n) for k in range(n)]
            names = [c.dirname for share in shares for c in share]
            assert sorted(names) == sorted(c.dirname for c in cells)  # each cell exactly once
            for share in shares:
                mine = {c.dirname for c in share}
                for c in share:  # a cell runs in the share of the cells it needs
                    for dep in (c.policy_from, c.ratio_from, c.pretrained_from):
                        assert dep is None or dep.dirname in mine
            if n > 1 and grid is PRESETS["screening-resnet20"]:  # independent cells: dealt evenly
                assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(SystemExit):
        compare.main(["--preset", "tiny", "--shard", "2/2"])


@pytest.mark.slow  # 14 s: two workers' grids
def test_a_grid_reads_a_carried_data_file_and_workers_share_it(tmp_path, capsys):
    """--data-file (a .npz of raw splits, as carried to the GPU machine) feeds the cells; two
    shares run side by side cover the grid, then --report-only writes the table."""
    rng = np.random.default_rng(0)
    arrays = {
        f"{s}_{k}": v
        for s, n in (("train", 200), ("test", 100))
        for k, v in (
            ("images", rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)),
            ("labels", rng.integers(0, 10, n)),
        )
    }
    path = tmp_path / "fmnist.npz"
    np.savez(path, name="fashion_mnist", num_classes=10, source="test arrays", **arrays)
    argv = ["--model", "lenet5", "--dataset", "fashion_mnist", "--ratios", "0.5",
            "--methods", "dense", "magnitude", "random", "--seeds", "1", "--name", "g",
            "--run-args", "--batch-size 50", "--out-root", str(tmp_path)]  # fmt: skip
    for k in (1, 0):
        assert compare.main(argv + ["--data-file", str(path), "--shard", f"{k}/2"]) == 0
        assert "done; --report-only writes the report" in capsys.readouterr().out
    assert not (tmp_path / "g" / "runs.csv").exists()
    assert compare.main(argv + ["--report-only"]) == 0
    rows = read_csv(tmp_path / "g" / "runs.csv")
    assert [r["status"] for r in rows] == ["ok"] * 3
    log = (tmp_path / "g" / "cells" / rows[0]["cell"] / "log.txt").read_text()
    assert "200 train / 100 test" in log and "test arrays" in log  # the file's splits
    wrong = tmp_path / "other.npz"
    np.savez(wrong, **{**arrays, "name": "mnist", "num_classes": 10, "source": "x"})
    argv[argv.index("--name") + 1] = "h"
    assert compare.main(argv + ["--data-file", str(wrong)]) == 1
    assert "--data-file holds mnist, the grid needs fashion_mnist" in capsys.readouterr().err


def test_readme_block_links_every_plot_and_leaves_the_costs_in_table_md(tmp_path):
    readme = tmp_path / "docs" / "page.md"
    readme.parent.mkdir()
    readme.write_text("intro\n<!-- benchmark:g:start -->\nold\n<!-- benchmark:g:end -->\nrest\n")
    out = tmp_path / "benchmarks" / "results" / "g"
    table = (
        f"| method | acc |\n\n{compare.COSTS}\n| cost table |\n"
        "\n![accuracy](accuracy.png)\n\n![fusion_weights](fusion_weights.png)\n"
    )
    compare.update_readme(str(readme), "g", table, str(out))
    text = readme.read_text()
    assert text.startswith("intro\n<!-- benchmark:g:start -->\n| method | acc |")
    assert "old" not in text and "| cost table |" not in text and text.endswith("rest\n")
    for png in ("accuracy.png", "fusion_weights.png"):
        assert f"(../benchmarks/results/g/{png})" in text
    assert "[../benchmarks/results/g/table.md](../benchmarks/results/g/table.md)" in text


def test_a_disconnected_seed_counts_at_chance_and_the_table_says_how_many():
    grid = Grid(model="lenet5", dataset="synthetic", ratios=(0.99,),
                methods=("synflow", "panning", "rlpanning"), seeds=2)  # fmt: skip
    chance = _row("rlpanning", 0.99, 1, None, "chance", "no input-output path")
    chance |= {"test_accuracy": 0.1, "effective_sparsity": 1.0}
    rows = [
        _row("synflow", 0.99, 0, 0.80),
        _row("synflow", 0.99, 1, 0.82),
        _row("panning", 0.99, 0, 0.84),
        _row("panning", 0.99, 1, 0.86),
        _row("rlpanning", 0.99, 0, 0.70),
        chance,
    ]
    stats = compare.aggregate(rows)
    rl = stats[("rlpanning", 0.99)]
    assert rl.values == [0.70, 0.1] and rl.chance == 1 and rl.failed == 0  # counted, as published
    table = compare.render_table("t", grid, rows, [], "python -m benchmarks.compare ...")
    assert cell_text(table, "rlpanning", 0) == "0.4000 ± 0.4243 (1 disconnected)"
    got = {(r, m): v for r, m, _, v in compare.verdicts(stats, grid)}
    assert got[(0.99, "rlpanning")] == (
        "ties with synflow: -0.4100 (within one std); rlpanning disconnected in 1 of 2 seeds "
        "(at chance accuracy, counted)"
    )
    # the best method at each sparsity, ours among the candidates, and our gaps to it
    assert "| best | panning 0.8500 |" in table
    assert "| panning − best | best |" in table
    assert "| rlpanning − best | -0.4500 |" in table


def test_cells_refused_by_the_old_rule_run_again_and_disconnected_ones_load_at_chance(tmp_path):
    cells = compare.cells_of(PRESETS["tiny"])
    old, new, diverged = cells[1], cells[2], cells[3]
    for cell, record in [
        (old, {"error": CUT}),  # before the rule: a routed-around mask was refused too
        (
            new,
            {"error": "left no input-output path", "disconnected": True, "chance_accuracy": 0.1},
        ),  # fmt: skip
        (diverged, {"error": "the loss diverged (NaN) at step 3"}),
    ]:
        (tmp_path / cell.dirname).mkdir()
        (tmp_path / cell.dirname / "failed.json").write_text(json.dumps(record))
    assert compare.cell_status(old, str(tmp_path)) is None  # runs again
    # until it has, the table says so and counts no value for it
    assert compare.load_row(old, str(tmp_path))["status"] == "old_rule"
    stats = compare.aggregate([compare.load_row(old, str(tmp_path))])
    assert compare._fmt(stats[(old.method, old.ratio)]) == "old-rule cut (1), not rerun"
    assert not stats[(old.method, old.ratio)].failed and not stats[(old.method, old.ratio)].n
    assert compare.cell_status(new, str(tmp_path)) == "failed"
    assert compare.cell_status(diverged, str(tmp_path)) == "failed"
    row = compare.load_row(new, str(tmp_path))
    assert (row["status"], row["test_accuracy"], row["effective_sparsity"]) == ("chance", 0.1, 1.0)
    assert compare.load_row(diverged, str(tmp_path))["status"] == "failed"


def test_a_cell_refused_by_the_old_rule_that_trains_now_keeps_only_its_new_record(
    tmp_path, monkeypatch
):
    from jpanning import experiment

    cell = compare.cells_of(PRESETS["tiny"])[1]
    (tmp_path / cell.dirname).mkdir()
    (tmp_path / cell.dirname / "failed.json").write_text(json.dumps({"error": CUT}))

    def trains(config, dataset=None):
        (tmp_path / cell.dirname / "results.json").write_text(json.dumps({"date": "d2"}))

    class Data:
        def get(self, config):
            return None

    monkeypatch.setattr(experiment, "run", trains)
    assert compare.run_cell(cell, str(tmp_path), Data(), None) == "ok"
    assert sorted(p.name for p in (tmp_path / cell.dirname).iterdir()) == [
        "log.txt",
        "results.json",
    ]
    # one record per cell in the report's count, not the old refusal beside the new result
    assert [m["date"] for m in compare._cell_meta([cell], str(tmp_path))] == ["d2"]


def test_a_results_root_inside_the_repository_is_recorded_relative_and_names_its_markers():
    inside = os.path.join(compare.RESULTS, "cpu")
    argv = compare._grid_argv(["--out-root", inside, "--preset", "tiny", "--readme", "R.md"])
    assert argv == ["--out-root", "benchmarks/results/cpu", "--preset", "tiny"]
    assert compare._grid_argv(["--out-root", "/elsewhere/x"]) == ["--out-root", "/elsewhere/x"]
    assert compare.marker_name(os.path.join(inside, "tiny"), "tiny") == "cpu/tiny"
    assert compare.marker_name(os.path.join(compare.RESULTS, "tiny"), "tiny") == "tiny"
    assert compare.marker_name("/elsewhere/x/tiny", "tiny") == "tiny"


def test_a_grid_run_on_two_machines_says_where_each_cell_ran():
    grid = Grid(model="lenet5", dataset="synthetic", ratios=(0.9,),
                methods=("synflow", "panning"), seeds=2)  # fmt: skip
    rows = [_row("synflow", 0.9, s, 0.8) | {"device": "gpu"} for s in (0, 1)]
    rows += [_row("panning", 0.9, 0, 0.8) | {"device": "gpu"}]
    rows += [_row("panning", 0.9, 1, 0.7) | {"device": "cpu"}]
    table = compare.render_table("t", grid, rows, [], "python -m benchmarks.compare ...")
    assert cell_text(table, "synflow", 0).endswith(" [gpu]")
    assert cell_text(table, "panning", 0).endswith(" [cpu+gpu]")
    assert "*[cpu/gpu]*: where the cell's seeds ran" in table
    one = compare.render_table("t", grid, rows[:3], [], "python -m benchmarks.compare ...")
    assert "[gpu]" not in one  # one machine: no marks
