"""The grids of ``python -m benchmarks.compare --preset NAME`` (the ones the README quotes).

A grid is one model on one dataset: every method at every ratio for every seed, plus dense
training once per seed, all with the same training recipe (``run.py``'s defaults unless
``run_args`` says otherwise). Command-line flags of ``benchmarks.compare`` override a preset's
fields, so a preset is also a starting point for your own grid.
"""

from __future__ import annotations

import dataclasses

# Pruning at initialization: every method screens the untrained network, then trains it.
AT_INIT = (
    "dense",
    "random",
    "magnitude",
    "snip",
    "grasp",
    "synflow",
    "iter_snip",
    "force",
    "panning",
    "rlpanning",
)
# PuRL prunes a trained network (the seed's dense cell) and fine-tunes it for the grid's epochs,
# so it gets twice the training; uniform per-layer magnitude at PuRL's sparsity is its baseline.
ALL_METHODS = AT_INIT + ("purl", "uniform")


@dataclasses.dataclass(frozen=True)
class Grid:
    """One benchmark grid.

    Attributes:
        model, dataset: as ``run.py --model/--dataset``.
        ratios: sparsities (fractions of prunable weights removed).
        methods: ``run.py --method`` names; ``dense`` runs once per seed, not per ratio.
        seeds: how many seeds (0, 1, ...): each seeds the init, the mask and the training.
        epochs, train_limit, test_limit: the training budget, the same for every cell.
        run_args: further ``run.py`` arguments given to every cell (e.g. ``--preset quick``).
        density_ratio: the ratio whose per-layer densities are plotted (default: the middle).
        about: one line for the README and ``--list``.
    """

    model: str
    dataset: str
    ratios: tuple[float, ...]
    methods: tuple[str, ...] = ALL_METHODS
    seeds: int = 3
    epochs: int = 1
    train_limit: int | None = None
    test_limit: int | None = None
    run_args: tuple[str, ...] = ()
    density_ratio: float | None = None
    about: str = ""


def _transfer_grid(model: str, name: str, run_args: tuple[str, ...] = ()) -> Grid:
    """The shipped ResNet-20 policy on ``model`` against SynFlow and hand Panning."""
    return Grid(
        model=model,
        dataset="fashion_mnist",
        ratios=(0.95, 0.99),
        methods=("dense", "synflow", "panning", "rlpanning"),
        seeds=3,
        epochs=8,
        train_limit=20000,
        run_args=run_args,
        density_ratio=0.99,
        about=f"{name} / Fashion-MNIST (20k): the ResNet-20 policy transferred, 8 epochs",
    )


PRESETS: dict[str, Grid] = {
    # Every method, four ratios, three seeds, on the real offline data, within an hour on the
    # 2-core CPU this project is developed on. LeNet-5 (61k prunable weights) because a
    # ResNet-20 cell costs 3-4 minutes there (results/resnet20-*): 111 cells would take hours.
    # lr 0.03, not run.py's 0.1 (made for BatchNorm networks): LeNet-5 has no BatchNorm, and
    # at 0.1 GraSP's 90% mask diverged to chance (train loss 2.78) while at 0.01 random's 90%
    # mask reached 0.40 in 2 epochs; 0.03 trains dense to 0.867 (seed 0).
    "cpu-hour": Grid(
        model="lenet5",
        dataset="fashion_mnist",
        ratios=(0.9, 0.95, 0.98, 0.99),
        methods=AT_INIT,
        seeds=3,
        epochs=2,
        run_args=("--lr", "0.03", "--preset", "quick"),
        density_ratio=0.98,
        about="LeNet-5 / Fashion-MNIST, 10 methods x 4 ratios x 3 seeds, 2 epochs; "
        "about an hour on 2 CPU cores",
    ),
    # PuRL against its baseline, uniform per-layer magnitude pruning at the sparsity PuRL
    # reaches, on the same trained ResNet-20 and with the same fine-tuning, over 3 seeds.
    "purl-resnet20": Grid(
        model="resnet20",
        dataset="fashion_mnist",
        ratios=(0.8,),
        methods=("dense", "purl", "uniform"),
        seeds=3,
        epochs=1,
        train_limit=20000,
        run_args=("--preset", "quick"),
        density_ratio=0.8,
        about="ResNet-20 / Fashion-MNIST (20k), PuRL vs uniform at 0.8, 3 seeds, 1+1 epochs",
    ),
    # The same grid on ResNet-20, one epoch on all 60k images: several hours on 2 CPU cores.
    "cpu-resnet20": Grid(
        model="resnet20",
        dataset="fashion_mnist",
        ratios=(0.9, 0.95, 0.98, 0.99),
        seeds=3,
        epochs=1,
        run_args=("--preset", "quick"),
        density_ratio=0.95,
        about="ResNet-20 / Fashion-MNIST, 12 methods x 4 ratios x 3 seeds, 1 epoch; "
        "hours on a CPU, minutes on a GPU",
    ),
    # Paper scale: CIFAR-10 with the Panning authors' recipe (configs.py: 180 epochs, batch
    # 128, lr 0.1 cosine, weight decay 5e-4, 10 scoring examples per class) and RL Panning
    # budget (50k agent steps, fresh scoring batches). For a GPU; days on a CPU.
    "paper-resnet20": Grid(
        model="resnet20",
        dataset="cifar10",
        ratios=(0.8, 0.9, 0.95, 0.98, 0.99),
        seeds=3,
        epochs=180,
        run_args=("--preset", "paper"),
        density_ratio=0.95,
        about="ResNet-20 / CIFAR-10, 180 epochs, the Panning authors' recipe; for a GPU",
    ),
    "paper-vgg19": Grid(
        model="vgg19",
        dataset="cifar10",
        ratios=(0.8, 0.9, 0.95, 0.98, 0.99),
        seeds=3,
        epochs=180,
        run_args=("--preset", "paper"),
        density_ratio=0.95,
        about="VGG-19 (BN) / CIFAR-10, 180 epochs, the Panning authors' recipe; for a GPU",
    ),
    # Issue 29's screening-quality table: every at-init method at extreme sparsities, RL
    # Panning screening with the policy jpanning ships (no search in the grid), one training
    # budget for all (20k images, 8 epochs). 37 cells per seed, ~4 minutes each on 2 CPU
    # cores: run it seed by seed over sessions (it resumes), or on a GPU, where
    # scripts/device_compare.sh ran them with 8 workers on one H200 (docs/benchmarks.md).
    "screening-resnet20": Grid(
        model="resnet20",
        dataset="fashion_mnist",
        ratios=(0.95, 0.99, 0.995, 0.998),
        methods=AT_INIT,
        seeds=5,
        epochs=8,
        train_limit=20000,
        density_ratio=0.99,
        about="ResNet-20 / Fashion-MNIST (20k), at-init methods at 0.95-0.998, 5 seeds, "
        "8 epochs; the shipped RL Panning policy",
    ),
    # The ablation of that table: hand Panning with SynFlow alone in every band (fusion weights
    # 1,0,0) keeps Panning's rounds and revival and drops the fusion, so against "panning"
    # (fused) and "synflow" (no revival) it says which of the two moves the accuracy.
    "screening-resnet20-synflow-only": Grid(
        model="resnet20",
        dataset="fashion_mnist",
        ratios=(0.95, 0.99, 0.995, 0.998),
        methods=("panning",),
        seeds=3,
        epochs=8,
        train_limit=20000,
        run_args=("--panning-weights",) + ("1,0,0",) * 5 + ("--collapse-shield", "off"),
        density_ratio=0.99,
        about="ablation: hand Panning with SynFlow alone (weights 1,0,0), the table's budget",
    ),
    # The collapse shield's ablation: Panning and RL Panning as the authors screen (no shield),
    # the table's budget; where the shield never acted, the masks and results are the same.
    "screening-resnet20-no-shield": Grid(
        model="resnet20",
        dataset="fashion_mnist",
        ratios=(0.95, 0.99, 0.995, 0.998),
        methods=("panning", "rlpanning"),
        seeds=5,
        epochs=8,
        train_limit=20000,
        run_args=("--collapse-shield", "off"),
        density_ratio=0.99,
        about="ablation: Panning and RL Panning without the collapse shield (the authors')",
    ),
    # Does the ResNet-20 policy transfer? Unchanged, on networks it never saw, against hand
    # Panning and SynFlow with the same budget (issue 29, part 3).
    "transfer-vgg11": _transfer_grid("vgg11", "VGG-11"),
    "transfer-lenet5": _transfer_grid("lenet5", "LeNet-5", ("--lr", "0.03")),  # no BatchNorm
    # What the tests run: seconds, synthetic data.
    "tiny": Grid(
        model="lenet5",
        dataset="synthetic",
        ratios=(0.5, 0.8),
        methods=("dense", "random", "snip", "rlpanning"),
        seeds=2,
        epochs=1,
        run_args=("--preset", "quick", "--agent-steps", "20", "--samples-per-class", "2"),
        about="LeNet-5 / synthetic data, 4 methods x 2 ratios x 2 seeds: a smoke test",
    ),
}
