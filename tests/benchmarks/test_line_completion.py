"""Line-completion tasks of the quality benchmark (bench/line_completion.py)."""
from __future__ import annotations

import pytest

from bench.line_completion import completion_text, line_candidates, line_tasks, score
from fastdecode.models import DEFAULT_PAIR
from prompts import stdlib_dir

SOURCE = '''\
import os
TOP = compute()


class A:
    attr = 1

    def method(self, x):
        """Docstring line."""
        value = x + 1  # trailing comment
        total = (x +
                 1)
        pass
        self.y = value
        return self.y


def f(a):
    if a:
        return a.strip()
    print(a); print(a)
'''


def test_candidates_are_whole_simple_lines_inside_functions():
    lines = SOURCE.split("\n")
    got = {(lines[i][:col], lines[i][col:]) for i, col in line_candidates("x.py", SOURCE)}
    assert got == {("        self", ".y = value"), ("        return", " self.y"), ("        return", " a.strip()")}


def test_tasks_cut_real_lines_after_the_first_word():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(DEFAULT_PAIR / "target"))
    tasks = line_tasks(tok, n=12, max_prompt_tokens=96, seed=1, max_files=8)
    assert len({t.file for t in tasks}) == 8  # round-robin over the files
    for t in tasks:
        assert not t.prompt.endswith(("\n", " ")) and t.reference.strip()
        assert len(tok(t.prompt)["input_ids"]) <= 96
        line = (stdlib_dir() / t.file).read_text(encoding="utf-8").split("\n")[t.lineno - 1]
        head = t.prompt.rsplit("\n", 1)[-1]
        assert head + t.reference == line.rstrip() and head.strip().isidentifier()
    assert line_tasks(tok, n=12, max_prompt_tokens=96, seed=1, max_files=8) == tasks  # seeded


def test_scoring():
    assert completion_text(" = 1\n        y") == " = 1"
    assert score(" = 1  ", " = 1") == (True, 1.0)
    exact, sim = score(" = foo(x)", " = foo(y)")
    assert not exact and sim == pytest.approx(2 * 8 / 18)
    assert score("", " = 1") == (False, 0.0)
