"""The README's quickstart runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

README = Path(__file__).parent.parent / "README.md"


def test_quickstart_runs() -> None:
    text = README.read_text()
    section = text[text.index("## Quickstart") :]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    namespace: dict[str, object] = {}
    exec(compile(code.group(1), str(README), "exec"), namespace)
    assert int(namespace["adamx"].iterations(namespace["state"])) == 1  # type: ignore[attr-defined]
    assert np.isfinite(namespace["params"]["dense"]["kernel"]).all()  # type: ignore[index]
