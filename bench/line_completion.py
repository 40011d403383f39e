"""Line-completion tasks cut from the Python standard library (never seen by the code pair in training).

A task is a real single-line statement inside a function body, cut just after the line's first word
(the identifier that starts it): the prompt is the source text before the cut (whole lines of
context, left-truncated to a token budget), the reference is the rest of that line. Prompts never end
at a line break: the byte-level BPE merges a newline with the following indentation, so a prompt that
ends in a bare newline is out of distribution for both models.

Scoring: the completion is the generated text up to the first newline; ``exact`` when it equals the
reference (trailing whitespace ignored), ``similarity`` = difflib.SequenceMatcher ratio of the two
(2 * matched characters / total characters, 1.0 = identical).
"""
from __future__ import annotations

import ast
import difflib
import random
import re
from dataclasses import dataclass

from bench.common import stdlib_sources

# simple statements that carry text after their first word (pass / break / continue do not)
_SIMPLE = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Return, ast.Expr, ast.Raise, ast.Assert,
           ast.Delete, ast.Import, ast.ImportFrom, ast.Global, ast.Nonlocal)
_FIRST_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class LineTask:
    file: str        # standard-library path, relative
    lineno: int      # 1-based line of the statement
    prompt: str      # source text up to and including the line's first word
    reference: str   # the rest of the line (no newline)


def _function_statements(tree: ast.AST) -> list[ast.stmt]:
    """Simple statements whose nearest enclosing scope is a function body, in source order."""
    out, stack = [], [(tree, False)]
    while stack:
        node, in_function = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                stack.append((child, True))
            elif isinstance(child, ast.ClassDef):
                stack.append((child, False))
            elif isinstance(child, _SIMPLE):
                if in_function:
                    out.append(child)
            elif isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)):  # statements live only here
                stack.append((child, in_function))
    return sorted(out, key=lambda st: (st.lineno, st.col_offset))


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def line_candidates(rel: str, text: str, max_rest_chars: int = 100) -> list[tuple[int, int]]:
    """(line index, cut column) of every usable line of one source file."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    lines = text.split("\n")
    out = []
    for st in _function_statements(tree):
        if st.lineno != st.end_lineno or _is_docstring(st):
            continue
        line = lines[st.lineno - 1]
        if not line.isascii():  # ast columns are UTF-8 byte offsets; keep them equal to str offsets
            continue
        indent = len(line) - len(line.lstrip(" "))
        # the statement must be the whole line: no trailing comment, no ``a; b``, no tabs
        if st.col_offset != indent or st.end_col_offset != len(line.rstrip()) or "\t" in line[:indent]:
            continue
        m = _FIRST_WORD.match(line, indent)
        if m is None:
            continue
        rest = line[m.end():].rstrip()
        if not rest.strip() or len(rest) > max_rest_chars:
            continue
        out.append((st.lineno - 1, m.end()))
    return out


def line_tasks(tokenizer, n: int = 500, max_prompt_tokens: int = 160, seed: int = 0,
               max_rest_chars: int = 100, max_files: int | None = None) -> list[LineTask]:
    """``n`` tasks, drawn round-robin over the standard-library files (each file's lines shuffled, seeded);
    ``max_files`` keeps only the first files of ``STDLIB_FILES`` in bench/common.py."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(seed)
    pools = []
    for rel, text in stdlib_sources(max_files):
        cands = line_candidates(rel, text, max_rest_chars)
        rng.shuffle(cands)
        if cands:
            pools.append((rel, text.split("\n"), cands))
    rng.shuffle(pools)
    tasks: list[LineTask] = []
    while len(tasks) < n and any(c for _, _, c in pools):
        for rel, lines, cands in pools:
            if not cands or len(tasks) >= n:
                continue
            i, col = cands.pop()
            prompt = _context(tokenizer, lines, i, col, max_prompt_tokens)
            if prompt is not None:
                tasks.append(LineTask(rel, i + 1, prompt, lines[i][col:].rstrip()))
    if len(tasks) < n:
        raise ValueError(f"only {len(tasks)} line-completion tasks available, fewer than {n}")
    return tasks


def _context(tokenizer, lines: list[str], i: int, col: int, max_tokens: int) -> str | None:
    """Whole preceding lines plus the cut line's head, as many as fit in ``max_tokens`` tokens."""
    head = lines[i][:col]
    start = i
    while start > 0 and i - start < 200 and sum(len(x) + 1 for x in lines[start - 1:i]) < max_tokens * 4.5:
        start -= 1
    while start < i:
        text = "\n".join(lines[start:i]) + "\n" + head
        if len(tokenizer(text)["input_ids"]) <= max_tokens:
            return text if start < i - 1 or lines[start].strip() else None
        start += 1
    return None  # not even one line of context fits


def completion_text(generated: str) -> str:
    """The generated continuation up to (not including) the first newline."""
    return generated.split("\n", 1)[0]


def score(completion: str, reference: str) -> tuple[bool, float]:
    """(exact match, difflib similarity ratio in [0, 1]) of one completion against its reference."""
    a, b = completion.rstrip(), reference.rstrip()
    return a == b, difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def newline_token_ids(tokenizer) -> list[int]:
    """Every token whose text contains a newline: generation stops right after one of them."""
    return [i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i])]
