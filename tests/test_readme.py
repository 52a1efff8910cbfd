"""Every Python snippet in the README runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).parent.parent / "README.md"
TEXT = README.read_text()
SNIPPETS = {
    # The heading above each snippet names it.
    re.findall(r"^#+ (.+)$", TEXT[: match.start()], re.MULTILINE)[-1]: match.group(1)
    for match in re.finditer(r"```python\n(.*?)```", TEXT, re.DOTALL)
}
NEEDS = {"Flax NNX": "flax", "Flax linen": "flax", "Haiku": "haiku", "Checkpoints": "orbax"}


def run(heading: str) -> dict[str, object]:
    for prefix, module in NEEDS.items():
        if heading.startswith(prefix):
            pytest.importorskip(module)
    namespace: dict[str, object] = {}
    exec(compile(SNIPPETS[heading], f"README.md ({heading})", "exec"), namespace)
    return namespace


def test_every_section_with_code_is_found() -> None:
    assert len(SNIPPETS) == len(re.findall(r"```python\n", TEXT)) >= 8


@pytest.mark.parametrize("heading", list(SNIPPETS))
def test_snippet_runs(heading: str) -> None:
    run(heading)


def test_quickstart_results() -> None:
    namespace = run("Quickstart")
    assert int(namespace["adamx"].iterations(namespace["state"])) == 1  # type: ignore[attr-defined]
    assert np.isfinite(namespace["params"]["dense"]["kernel"]).all()  # type: ignore[index]


def test_mixed_precision_snippet_skipped_overflows_and_trained() -> None:
    namespace = run("Mixed precision with dynamic loss scaling")
    assert float(namespace["state"].loss_scale) < 2.0**15  # type: ignore[attr-defined]
    assert float(namespace["loss"]) < 1e-3  # type: ignore[arg-type]
