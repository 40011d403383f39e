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


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown method"):
        main(["generate", "--method", "beam", "--max-new-tokens", "4"])
