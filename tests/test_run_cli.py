"""icl.run.cli: the key=value style of the tools over folders (types checked, --help lists keys, one-line errors)."""

from dataclasses import dataclass, field

import pytest
from omegaconf import MISSING

from icl.run.cli import parse, usage


@dataclass
class Options:
    folders: list[str] = field(default=MISSING, metadata={"help": "where to look"})
    seeds: int = field(default=8, metadata={"help": "how many"})
    out: str | None = None
    keep: bool = False


def test_key_values_are_typed_and_defaults_fill_the_rest():
    args = parse(Options, ["folders=[a,b/c]", "seeds=3", "keep=true"], "tool", "A tool.")
    assert args == Options(folders=["a", "b/c"], seeds=3, out=None, keep=True)


@pytest.mark.parametrize(("argv", "message"), [
    (["folders=[a]", "seeds=x"], "could not be converted to Integer"),
    (["folders=[a]", "nope=1"], "nope"),
    (["folders=[a]", "--keep"], "expected key=value, got '--keep'"),
    (["seeds=2"], "folders=… is required"),
])
def test_a_bad_word_is_one_line_naming_it(argv, message):
    with pytest.raises(SystemExit) as info:
        parse(Options, argv, "tool", "A tool.")
    text = str(info.value.code)
    assert message in text and text.startswith("error: tool: ") and "tool --help" in text and "\n" not in text


def test_help_lists_every_key_with_its_default(capsys):
    with pytest.raises(SystemExit) as info:
        parse(Options, ["--help"], "tool", "A tool.\n\nMore.")
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out == usage(Options, "tool", "A tool.") + "\n"
    assert "folders=???    where to look" in out and "seeds=8    how many" in out and "out=null" in out
    assert "keep=false" in out
