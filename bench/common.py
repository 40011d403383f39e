"""What the benchmarks in bench/ share: output paths, the machine's description, and prompts and corpora
from the Python standard library (never seen by the code pair in training).

The benchmarks keep their results (JSON, PNG) in bench/results/. A smoke run (``--quick``) never replaces
those published results: without ``--out`` it writes under ``bench/results/tmp/``, which git ignores.
Paths are relative to the repository root, where the scripts are run from (``python bench/e2e.py``).
"""
from __future__ import annotations

import json
import os
import platform
import random
import sysconfig
from pathlib import Path

RESULTS_DIR = Path("bench/results")
QUICK_DIR = RESULTS_DIR / "tmp"


def output_path(out, default: Path, quick: bool) -> Path:
    """Where a benchmark writes: ``out`` when given, else ``default``, or for a quick run the same name
    under ``bench/results/tmp/``."""
    if out is not None:
        return Path(out)
    return QUICK_DIR / Path(default).name if quick else Path(default)


def write_json(path, data) -> Path:
    """Write ``data`` as indented JSON to ``path`` (folders created; values JSON cannot hold become strings)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return path


def script_args(args) -> dict:
    """The command-line arguments a result file records (argparse's namespace, private entries left out)."""
    return {k: v for k, v in vars(args).items() if not k.startswith("_")}


def script_main(doc: str, add_arguments, run, argv: list[str] | None = None) -> int:
    """``main()`` of a benchmark script: its parser (described by the first line of ``doc``), then ``run``."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def machine_description(device) -> str:
    import torch

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads (torch {torch.__version__})"


# well-known, stable modules present in every CPython install
STDLIB_FILES = [
    "json/decoder.py", "json/encoder.py", "argparse.py", "textwrap.py", "shutil.py", "tempfile.py",
    "csv.py", "fractions.py", "dataclasses.py", "functools.py", "heapq.py", "bisect.py", "string.py",
    "calendar.py", "difflib.py", "glob.py", "fnmatch.py", "pprint.py", "queue.py", "statistics.py",
    "contextlib.py", "abc.py", "base64.py", "configparser.py", "copy.py", "enum.py", "gettext.py",
    "inspect.py", "ipaddress.py", "locale.py", "logging/__init__.py", "mimetypes.py", "netrc.py",
    "operator.py", "optparse.py", "pathlib.py", "pickle.py", "platform.py", "plistlib.py", "random.py",
    "sched.py", "secrets.py", "selectors.py", "shlex.py", "smtplib.py", "socket.py", "subprocess.py",
    "tarfile.py", "threading.py", "tokenize.py", "trace.py", "traceback.py", "typing.py", "uuid.py",
    "warnings.py", "weakref.py", "zipfile/__init__.py", "zipfile.py", "ast.py", "codecs.py", "colorsys.py",
    "datetime.py", "decimal.py", "filecmp.py", "getopt.py", "hashlib.py", "hmac.py", "imaplib.py",
]


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_sources(limit: int | None = None) -> list[tuple[str, str]]:
    """(relative path, source text) of the standard-library files above that exist on this machine."""
    root, out = stdlib_dir(), []
    for rel in STDLIB_FILES:
        f = root / rel
        if f.is_file():
            out.append((rel, f.read_text(encoding="utf-8", errors="replace")))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise FileNotFoundError(f"no standard-library sources found under {root}")
    return out


def stdlib_prompts(tokenizer, n: int = 8, prompt_tokens: int = 64, seed: int = 0) -> list[list[int]]:
    """n prompts of ``prompt_tokens`` tokens, each a window of a different standard-library file,
    starting at a line boundary chosen at random (seeded) past the module docstring region."""
    rng = random.Random(seed)
    prompts = []
    for rel, text in stdlib_sources():
        lines = text.splitlines(keepends=True)
        if len(lines) < 60:
            continue
        start = rng.randrange(20, len(lines) - 30)
        ids = tokenizer("".join(lines[start:]))["input_ids"]
        if len(ids) >= prompt_tokens:
            prompts.append(ids[:prompt_tokens])
        if len(prompts) == n:
            break
    if len(prompts) < n:
        raise ValueError(f"only {len(prompts)} standard-library prompts of {prompt_tokens} tokens available")
    return prompts


def stdlib_corpus(tokenizer, num_tokens: int) -> list[int]:
    """Concatenated standard-library sources (files joined by the tokenizer's eos), ``num_tokens`` long."""
    ids: list[int] = []
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for _, text in stdlib_sources():
        ids += tokenizer(text)["input_ids"] + sep
        if len(ids) >= num_tokens:
            return ids[:num_tokens]
    raise ValueError(f"the standard library gives only {len(ids)} tokens, fewer than {num_tokens}")
