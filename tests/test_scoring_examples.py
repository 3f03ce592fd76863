"""The examples of docs/scoring.md, extracted and run as they are written."""

import pathlib
import re

import numpy as np
import pytest

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "scoring.md"
# ```python blocks run; ```python no-test ones (Haiku, Equinox: not installed) do not.
BLOCKS = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), re.DOTALL | re.MULTILINE)


def test_the_doc_has_its_two_examples():
    assert len(BLOCKS) == 2
    assert "flax.linen" in BLOCKS[0] and "nnx.split" in BLOCKS[1]


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=["linen", "nnx"][: len(BLOCKS)])
def test_example_runs_and_prunes_90_percent(index, capsys):
    namespace = {"__name__": f"scoring_md_{index}"}
    exec(compile(BLOCKS[index], f"{DOC}:block{index}", "exec"), namespace)
    mask, prunable = namespace["mask"], namespace["prunable"]
    from jpanning import masks

    report = masks.sparsity_report(mask, prunable)
    assert report["total"] == 784 * 64 + 64 * 10
    assert abs(report["sparsity"] - 0.9) < 1e-4
    assert float(capsys.readouterr().out) == pytest.approx(report["sparsity"])
    if index == 1:  # the NNX model itself now holds the pruned kernels
        kernel = np.asarray(namespace["model"].hidden.kernel.value)
        np.testing.assert_array_equal(kernel == 0, np.asarray(mask["hidden"]["kernel"]) == 0)
