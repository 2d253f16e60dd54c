"""The documentation keeps up with the code: the README's length, every flag in docs/cli.md, every config field in
docs/configuration.md, and the README's code snippets, executed."""

import argparse
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from marsseg.cli import build_parser, main
from marsseg.config import Config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CLI_DOC = ROOT / "docs" / "cli.md"
CONFIG_DOC = ROOT / "docs" / "configuration.md"
README_MAX_LINES = 200


def long_flags(parser: argparse.ArgumentParser, command: str = "marsseg") -> dict[str, list[str]]:
    """Every long option string (`--xyz`) that `COMMAND --help` prints, for the parser and all its subcommands:
    {flag: [commands that take it]}. --help itself and suppressed flags are left out."""
    found: dict[str, list[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                for flag, commands in long_flags(subparser, f"{command} {name}").items():
                    found.setdefault(flag, []).extend(commands)
            continue
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        for option in action.option_strings:
            if option.startswith("--"):
                found.setdefault(option, []).append(command)
    return found


def mentions(text: str, flag: str) -> bool:
    """`flag` appears as a whole flag: --tta is not found inside --tta-scales."""
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def config_fields(config: object, prefix: str = "") -> list[str]:
    """Dotted names of every field of the config dataclasses: "seed", "optim.lr", "data.frame_size", ..."""
    names = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            names.extend(config_fields(value, f"{prefix}{field.name}."))
        else:
            names.append(f"{prefix}{field.name}")
    return names


def snippet_after(marker: str) -> str:
    """The ```python block that follows `marker` in the README."""
    text = README.read_text()
    start = text.find(marker)
    assert start >= 0, f"README.md has no {marker}"
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert match, f"README.md: no ```python block after {marker}"
    return match.group(1)


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, expected at most {README_MAX_LINES}"


def test_the_flag_walk_finds_flags_of_nested_subcommands():
    flags = long_flags(build_parser())
    assert "marsseg data merge" in flags["--drop-test"]
    assert "marsseg predict" in flags["--tta-scales"]
    assert "--help" not in flags and "--heartbeat" not in flags  # help and suppressed flags are left out


def test_every_flag_is_in_cli_reference():
    text = CLI_DOC.read_text()
    missing = {flag: commands for flag, commands in long_flags(build_parser()).items() if not mentions(text, flag)}
    listed = ", ".join(f"{flag} ({', '.join(commands)})" for flag, commands in missing.items())
    assert not missing, f"docs/cli.md lacks: {listed}"


def test_every_config_field_is_in_configuration_reference():
    text = CONFIG_DOC.read_text()
    names = config_fields(Config())
    assert {"seed", "precision", "optim.lr", "data.frame_size", "semi.loss"} <= set(names)
    missing = [name for name in names if f"`{name}`" not in text]
    assert not missing, "docs/configuration.md lacks (as `section.field`): " + ", ".join(missing)


def test_readme_onnx_snippet_runs(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from PIL import Image

    data, run, onnx_path = tmp_path / "synth.npz", tmp_path / "run", tmp_path / "model.onnx"
    assert main(["data", "synth", "--out", str(data), "--n-train", "240", "--n-test", "16", "--seed", "3"]) == 0
    train = ["train", "--data", str(data), "--out", str(run), "--width", "8", "--batch-size", "32", "--epochs", "1"]
    assert main([*train, "--members", "1"]) == 0
    assert main(["export", str(run), "--out", str(onnx_path)]) == 0

    frame = np.load(data)["test_set"][:2].reshape(128, 128)  # two crops as one frame
    image_path = tmp_path / "frame.jpg"
    Image.fromarray(frame).resize((300, 200)).save(image_path)  # any size: the snippet resizes to 85 x 128

    code = snippet_after("<!-- test: onnx -->")
    for literal, path in (('"model.onnx"', onnx_path), ('"frame.jpg"', image_path)):
        assert literal in code, f"the README's ONNX snippet no longer reads its file from {literal}"
        code = code.replace(literal, repr(str(path)))
    namespace: dict = {}
    exec(compile(code, "README.md (onnx snippet)", "exec"), namespace)
    labels = namespace["labels"]
    assert labels.shape == (85, 128)
    assert np.issubdtype(labels.dtype, np.integer)
    assert 1 <= labels.min() and labels.max() <= 4


def test_readme_python_api_snippet_runs():
    namespace: dict = {}
    exec(compile(snippet_after("<!-- test: python-api -->"), "README.md (python-api snippet)", "exec"), namespace)
    labels = np.asarray(namespace["labels"])
    assert labels.shape == (64, 128)
    assert 1 <= labels.min() and labels.max() <= 4


def test_every_flag_with_a_default_shows_it_in_help():
    def parsers(parser, name="marsseg"):
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, subparser in action.choices.items():
                    yield from parsers(subparser, f"{name} {sub}")

    missing = []
    for name, parser in parsers(build_parser()):
        text = " ".join(parser.format_help().split())  # the help as one line, whatever the wrapping
        for action in parser._actions:
            default = action.default
            hidden = action.help == argparse.SUPPRESS
            if (
                hidden
                or not action.option_strings
                or default is None
                or default is False
                or default == argparse.SUPPRESS
            ):
                continue
            if f"default: {default})" not in text and f"default {default}" not in text:
                missing.append(f"{name} {action.option_strings[0]}")
    assert not missing, "flags whose --help does not show their default: " + ", ".join(missing)
