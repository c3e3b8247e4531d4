"""docs/python.md's snippets that need only numpy and flowtracer run, and do what they say.

(.ci/check_links.py compiles every snippet of the docs; those that need torch, trl or verl
are run by test_docs_torch.py, except the verl recipe, which is only compiled.)
"""

import contextlib
import io
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "python.md"


def snippets():
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    runnable = []
    for c in code:
        imports = set(re.findall(r"^(?:import|from) (\w+)", c, flags=re.M))
        if imports <= {"numpy", "flowtracer"} and "flowtracer.trl" not in c:  # .trl needs torch
            runnable.append(c)
    return runnable


def test_the_page_has_its_numpy_snippets():
    assert len(snippets()) == 3  # ten lines, batches, errors


def test_snippets_run():
    outputs = []
    for code in snippets():
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(DOC), "exec"), {})
        outputs.append(out.getvalue())
    assert outputs[0] == "[1, 2, 4]\n"
    assert outputs[2].splitlines() == [
        "NonFinite 1 2 1",
        "sequence 1: non-finite attention at row 2, column 1",
    ]
