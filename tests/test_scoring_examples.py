"""The examples of README.md and docs/scoring.md, extracted and run as they are written."""

import pathlib
import re

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = {"readme": ROOT / "README.md", "scoring": ROOT / "docs" / "scoring.md"}


def python_blocks(path):
    """```python blocks run; ```python no-test ones (Haiku, Equinox: not installed) do not."""
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), re.DOTALL | re.MULTILINE)


BLOCKS = {name: python_blocks(path) for name, path in DOCS.items()}
CASES = [(name, i) for name, blocks in BLOCKS.items() for i in range(len(blocks))]


@pytest.mark.parametrize("name", list(DOCS))
def test_the_doc_has_its_two_examples(name):
    """Each page has exactly the linen and the NNX example, so no Python block goes untested."""
    blocks = BLOCKS[name]
    assert len(blocks) == 2
    assert "flax.linen" in blocks[0] and "nnx.split" in blocks[1]


def test_readme_shows_the_examples_of_docs_scoring():
    assert BLOCKS["readme"] == BLOCKS["scoring"]


@pytest.mark.parametrize(
    "name,index", CASES, ids=[f"{name}-{('linen', 'nnx')[i] if i < 2 else i}" for name, i in CASES]
)
def test_example_runs_and_prunes_90_percent(name, index, capsys):
    namespace = {"__name__": f"{name}_md_{index}"}
    exec(compile(BLOCKS[name][index], f"{DOCS[name]}:block{index}", "exec"), namespace)
    mask, prunable = namespace["mask"], namespace["prunable"]
    from jpanning import masks

    report = masks.sparsity_report(mask, prunable)
    assert report["total"] == 784 * 64 + 64 * 10
    assert abs(report["sparsity"] - 0.9) < 1e-4
    assert float(capsys.readouterr().out) == pytest.approx(report["sparsity"])
    if index == 1:  # the NNX model itself now holds the pruned kernels
        kernel = np.asarray(namespace["model"].hidden.kernel.value)
        np.testing.assert_array_equal(kernel == 0, np.asarray(mask["hidden"]["kernel"]) == 0)
