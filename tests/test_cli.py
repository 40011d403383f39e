"""The command line: a real generation with the default pair, and clear errors."""
import pytest

from fastdecode.cli import main


def test_generate_prints_text_and_summary(capsys):
    assert main(["generate", "--prompt", "def parse(line):\n    ", "--max-new-tokens", "8", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("def parse(line):")
    assert "tok/s" in out and "alpha=" in out and "tau=" in out


def test_generate_multi_draft_with_verifier(capsys):
    assert main(["generate", "--method", "multi_draft", "--num-drafts", "2", "--verifier", "spectr",
                 "--max-new-tokens", "8", "--temperature", "1"]) == 0
    assert "method=multi_draft" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--temperature", "-1"], "temperature must be"),
    (["--top-p", "0"], "top_p must be"),
    (["--method", "multi_draft", "--num-drafts", "0"], "num_drafts must be"),
    (["--method", "speculative", "--num-drafts", "3"], "--num-drafts applies"),
    (["--verifier", "bogus"], "verifier"),
    (["--prompt-file", "/nonexistent.txt"], "no such file"),
    (["--prompt", ""], "prompt is empty"),
    (["--draft", "none", "--method", "speculative"], "needs a draft"),
    (["--target", "/nonexistent"], "no such model folder"),
])
def test_user_mistakes_are_one_line_errors(capsys, args, message):
    assert main(["generate", "--prompt", "x", "--max-new-tokens", "3", *args]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # model loading may print progress bars before it
    assert last.startswith("fastdecode generate: error: ") and message in last and "Traceback" not in err


def test_unknown_method_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--method", "beam", "--max-new-tokens", "4"])
    assert e.value.code == 2 and "invalid choice: 'beam'" in capsys.readouterr().err


def test_compare_with_nothing_generated(capsys):
    assert main(["generate", "--prompt", "x", "--max-new-tokens", "0", "--compare"]) == 0
    assert "nothing was generated" in capsys.readouterr().out
