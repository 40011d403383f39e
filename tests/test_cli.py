"""The command line: a real generation with the default pair, and clear errors."""
from pathlib import Path

import pytest

from fastdecode.cli import main
from fastdecode.kernels import cpu_linear

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # a real generation with the code pair
def test_generate_stream_prints_the_same_text(capsys):
    """--stream prints the text as it is committed (TextStreamer): the same text as the printout at the end."""
    common = ["generate", "--prompt", "def parse(line):\n    ", "--max-new-tokens", "24", "--temperature", "0"]
    texts = []
    for extra in ([], ["--stream"]):
        assert main(common + extra) == 0
        lines = capsys.readouterr().out.splitlines()
        texts.append(lines[1 : lines.index("-" * 60)])
    assert texts[0] == texts[1] and len("".join(texts[0])) > len("def parse(line):    [>>]")


@pytest.mark.slow  # a real generation with the code pair
def test_generate_prints_text_and_summary(capsys):
    assert main(["generate", "--prompt", "def parse(line):\n    ", "--max-new-tokens", "8", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("--- the prompt (") and "[>>]" in lines[0]
    assert lines[1] == "def parse(line):" and lines[2].startswith("    [>>]")  # the generation starts at [>>]
    assert "tok/s" in out and "alpha=" in out and "tau=" in out
    assert "alpha = accepted / drafted" in out and "tau = tokens emitted per target forward pass" in out
    assert ("packed linear layers=" in out) == cpu_linear.packing_available()   # the default on the CPU


@pytest.mark.slow  # a real generation with the code pair
def test_generate_stops_at_a_stop_text(capsys):
    """--stop '\\n\\n': the generation ends with the blank line (greedy; this prompt's function ends early)."""
    prompt = "import os\n\ndef walk(root):\n    "
    assert main(["generate", "--prompt", prompt, "--max-new-tokens", "80", "--stop", "\\n\\n", "--compare"]) == 0
    out = capsys.readouterr().out
    text = out.split("[>>]", 2)[2].split("-" * 60)[0]
    assert text.rstrip(" ").endswith("\n\n\n") and text.count("\n\n") == 1, text  # (the print adds one newline)
    assert "speed-up of speculative" in out and "HF assisted generation is left out: with stop_strings" in out


@pytest.mark.slow  # a real generation with the code pair
def test_generate_without_packed_weights(capsys):
    assert main(["generate", "--prompt", "def f(x):", "--max-new-tokens", "8", "--no-pack-weights"]) == 0
    out = capsys.readouterr().out
    assert "method=speculative" in out and "packed linear layers" not in out


@pytest.mark.slow  # a real generation with the code pair
def test_generate_multi_draft_with_verifier(capsys):
    assert main(["generate", "--method", "multi_draft", "--num-drafts", "2", "--verifier", "spectr",
                 "--max-new-tokens", "8", "--temperature", "1"]) == 0
    assert "method=multi_draft" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--temperature", "-1"], "temperature must be"),
    (["--top-p", "0"], "top_p must be"),
    (["--min-p", "2"], "min_p must be"),
    (["--repetition-penalty", "0"], "--repetition-penalty must be"),
    (["--no-repeat-ngram-size", "-1"], "--no-repeat-ngram-size must be"),
    (["--stop", ""], "--stop needs a non-empty TEXT"),
    (["--method", "multi_draft", "--num-drafts", "0"], "num_drafts must be"),
    (["--method", "speculative", "--num-drafts", "3"], "--num-drafts applies"),
    (["--verifier", "bogus"], "verifier"),
    (["--prompt-file", "/nonexistent.txt"], "no such file"),
    (["--prompt-file", "/"], "a folder, not a file"),
    (["--device", "bogus"], "--device bogus: not a device name torch knows"),
    (["--device", "meta"], "--device meta: the meta device holds no data"),
    (["--prompt", ""], "prompt is empty"),
    (["--draft", "none", "--method", "speculative"], "needs a draft"),
    (["--target", "/nonexistent"], "no such model folder"),
    (["--target", "models/code-pairs/target"], "no such model folder"),
    (["--target", "models/code-pair"], "is a model pair, not a model: pass models/code-pair/target"),
    (["--max-new-tokens", "-5"], "--max-new-tokens must be >= 0"),
    (["--method", "autoregressive", "--draft-length", "3"], "draft_length applies to speculative and multi_draft"),
    (["--method", "speculative", "--entropy-threshold", "2"], "unexpected arguments for method 'speculative'"),
    (["--method", "entropy_switch", "--verifier", "rrs"], "verifier= applies"),
    (["--method", "entropy_switch", "--draft-length", "8"], "draft_length applies to entropy_switch only with"),
    (["--compare", "--repeats", "0"], "--repeats must be >= 1"),
    (["--method", "entropy_switch", "--speculative-length", "3"], "speculate_when_large=True"),
    (["--method", "entropy_switch", "--speculate-when-large", "--draft-length", "0"], "draft_length must be"),
    (["--compile", "cudagraphs"], "--compile applies to --cache-implementation static"),
    (["--cache-implementation", "static", "--compile", "cudagraphs"], "needs a model on a CUDA device"),
    (["--cache-implementation", "static", "--compile", "inductor", "--pack-weights"], "does not combine with"),
])
def test_user_mistakes_are_one_line_errors(capsys, monkeypatch, args, message):
    monkeypatch.chdir(REPO)
    assert main(["generate", "--prompt", "x", "--max-new-tokens", "3", *args]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # model loading may print progress bars before it
    assert last.startswith("fastdecode generate: error: ") and message in last and "Traceback" not in err


def test_unknown_method_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--method", "beam", "--max-new-tokens", "4"])
    assert e.value.code == 2 and "invalid choice: 'beam'" in capsys.readouterr().err


@pytest.mark.slow  # a real generation with the code pair
def test_generate_on_the_static_engine(capsys):
    assert main(["generate", "--prompt", "def f(x):", "--max-new-tokens", "8", "--cache-implementation", "static"]) == 0
    assert "method=speculative" in capsys.readouterr().out


@pytest.mark.slow  # a real generation with the code pair
def test_compare_with_nothing_generated(capsys):
    assert main(["generate", "--prompt", "x", "--max-new-tokens", "0", "--compare"]) == 0
    assert "nothing was generated" in capsys.readouterr().out


def test_argument_errors_come_before_loading_weights(capsys, monkeypatch):
    import fastdecode.models

    def no_loading(*a, **k):
        raise AssertionError("weights were loaded before the arguments were checked")
    monkeypatch.setattr(fastdecode.models, "load_model", no_loading)
    for bad in (["--max-new-tokens", "-5"], ["--temperature", "-1"], ["--method", "multi_draft", "--num-drafts", "0"],
                ["--draft-length", "0"], ["--target", "/nonexistent"]):
        assert main(["generate", "--prompt", "x", *bad]) == 2, bad
        assert "error: " in capsys.readouterr().err


@pytest.mark.slow  # a real generation with the code pair
def test_compare_repeats_and_prints_median_and_spread(capsys):
    assert main(["generate", "--prompt", "def f(x):\n    ", "--max-new-tokens", "4", "--compare", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "median of 2 run(s) after a warm-up [min - max]" in out
    assert "fastdecode autoregressive" in out and "HF generate" in out and "x over HF generate [" in out
    assert "x over HF assisted [" in out   # the default method drafts with a model: HF's own speculation too


def test_load_pair_typo_says_the_folder_does_not_exist(monkeypatch):
    from fastdecode.models import load_pair
    monkeypatch.chdir(REPO)
    with pytest.raises(FileNotFoundError, match="models/code-pairs: no such folder \\(did you mean models/code-pair\\?\\)"):
        load_pair("models/code-pairs")
    with pytest.raises(ValueError, match="no target/ or draft/ in this folder"):
        load_pair("models")


def _save_tiny(folder, tokenizer=None):
    from tiny_models import tiny_llama
    tiny_llama(0).save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def test_model_folder_without_tokenizer_is_one_line(tmp_path, capsys):
    from fastdecode.models import load_model
    folder = _save_tiny(tmp_path / "m")
    with pytest.raises(ValueError, match=f"{folder}: no tokenizer in this model folder"):
        load_model(folder)
    capsys.readouterr()
    assert main(["generate", "--target", str(folder), "--draft", "none", "--prompt", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(folder) in err


def test_tokenizer_larger_than_the_model_is_a_value_error(tmp_path):
    from transformers import AutoTokenizer

    from fastdecode.models import DEFAULT_PAIR, load_model
    folder = _save_tiny(tmp_path / "m", AutoTokenizer.from_pretrained(DEFAULT_PAIR / "target"))
    with pytest.raises(ValueError, match="the tokenizer has 8192 tokens but the model only 6 embeddings"):
        load_model(folder)


def test_generate_rejects_token_ids_past_the_embedding(tiny_pair):
    import torch

    import fastdecode
    with pytest.raises(ValueError, match="token id 9, but the target .* has 6 input embeddings"):
        fastdecode.generate(tiny_pair[0], torch.tensor([[1, 9]]), max_new_tokens=2)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("command,module,want", [
    (["bench", "--quick"], "e2e", "bench/results/tmp/e2e_core.json"),
    (["bench", "--suite", "multi", "--quick"], "e2e", "bench/results/tmp/e2e_multi.json"),
    (["bench", "--quick", "--out", "x/e.json"], "e2e", "x/e.json"),
    (["acceptance", "--quick"], "acceptance", "bench/results/tmp/acceptance.json"),
    (["acceptance"], "acceptance", "bench/results/acceptance.json"),
    (["long-context", "--quick"], "long_context", "bench/results/tmp"),
    (["long-context"], "long_context", "bench/results"),
    (["optimal-cost", "--quick"], "optimal_cost", "bench/results/tmp/optimal_cost.json"),
    (["bench-batch", "--quick"], "batch", "bench/results/tmp/batch.json"),
    (["bench-batch"], "batch", "bench/results/batch.json"),
])
def test_quick_runs_never_write_into_the_published_results(monkeypatch, command, module, want):
    """--quick writes under bench/results/tmp/ (git-ignored), never over the committed figures; the CLI passes
    its arguments on to the script bench/<module>.py."""
    import importlib

    import fastdecode.models
    seen = {}

    def stop(*a, **k):
        raise _Stop

    mod = importlib.import_module(f"bench.{module}")  # what `fastdecode <command>` runs: bench/<module>.py
    real_run = mod.run

    def spy(args):
        seen["args"] = args
        return real_run(args)
    monkeypatch.setattr(fastdecode.models, "load_pair", stop)
    monkeypatch.setattr(fastdecode.models, "load_model", stop)
    monkeypatch.setattr(mod, "run", spy)
    if module == "optimal_cost":
        monkeypatch.setattr(mod, "_measure", stop)
        monkeypatch.setattr("torch.set_num_threads", lambda n: None)
        command = [*command, "--device", "cpu"]
    with pytest.raises(_Stop):
        main(command)
    args = seen["args"]
    assert str(args.out) == want
    if command[:3] == ["bench", "--suite", "multi"]:
        from bench.e2e import multi_configs
        configs = multi_configs([float(t) for t in args.temperatures.split(",")], [int(k) for k in args.ks.split(",")],
                                [int(x) for x in args.lengths.split(",")], args.verifiers.split(","))
        assert len(configs) <= 10  # a smoke run, not the 43 configurations of the full suite


def test_benchmark_help_is_the_scripts_own(capsys):
    """`fastdecode bench --help` is bench/e2e.py's help, under the subcommand's name."""
    with pytest.raises(SystemExit) as e:  # argparse exits after the help; main() turns it into a return code
        raise SystemExit(main(["bench", "--help"]))
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage: fastdecode bench [-h]") and "--suite" in out and "--quick" in out
    assert main(["optimal-cost", "--bogus"]) == 2
    assert "fastdecode optimal-cost: error: unrecognized arguments: --bogus" in capsys.readouterr().err


def test_benchmarks_need_the_repository(capsys, monkeypatch):
    """An installed package has no bench/: the benchmark subcommands say so in one line; generate is unaffected."""
    import fastdecode.cli as cli
    monkeypatch.setattr(cli, "bench_dir", lambda: None)
    assert main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("fastdecode bench: ") and "bench/e2e.py" in err and "source checkout" in err
    assert main(["generate", "--prompt", "x", "--max-new-tokens", "-5"]) == 2  # still parsed and checked


def test_benchmarks_are_not_in_the_package():
    import fastdecode
    import fastdecode.cli as cli
    package = Path(fastdecode.__file__).parent
    assert not (package / "benchmarks").exists() and cli.bench_dir() == package.parent / "bench"


def test_benchmark_runs_as_a_script():
    """python bench/<name>.py from the repository root, with no PYTHONPATH: it finds bench.common itself."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "bench/batch.py", "--help"], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: batch.py") and "--batch" in r.stdout


def test_python_dash_m_fastdecode_runs_the_command_line():
    """python -m fastdecode is the fastdecode script (before, Python found no fastdecode.__main__); a user mistake is
    still one line with exit status 2."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "fastdecode", "--help"], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: fastdecode") and "generate" in r.stdout
    r = subprocess.run([sys.executable, "-m", "fastdecode", "generate", "--max-new-tokens", "-5"], cwd=REPO, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "fastdecode generate: error: --max-new-tokens must be >= 0, got -5"]
