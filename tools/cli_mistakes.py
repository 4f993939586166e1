"""The command line's parser mistakes as one line each: a config file that is missing or not
YAML, an unknown key with the valid keys nearest to it, a value of the wrong type, an unknown
command. jsonargparse reports these over several nested lines; ``main.py`` raises the line as a
``ConfigError`` (``error: <line>``, exit status 1)."""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml
from jsonargparse import ArgumentParser

from srmcr.errors import ConfigError, MissingFileError


def check_config_files(args: Sequence[str]) -> None:
    """Every ``-c``/``--config`` file exists and is valid YAML (jsonargparse reports neither
    with the file's name)."""
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag not in ("-c", "--config"):
            continue
        if not eq:
            if i + 1 == len(args):
                raise ConfigError(f"{flag} needs a config file: {flag} configs/tiny.yaml")
            value = args[i + 1]
        path = Path(value)
        if not path.is_file():
            if ":" in value or value.lstrip().startswith("{"):  # a config given inline
                continue
            raise MissingFileError(f"{flag} {value}: no such config file")
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ConfigError(f"{flag} {value}: not valid YAML ({_yaml_problem(error)})") \
                from error


def _yaml_problem(error: yaml.YAMLError) -> str:
    """``while parsing a flow sequence at line 2, column 14: expected ',' or ']' ...``."""
    parts = []
    for text, mark in ((getattr(error, "context", None), getattr(error, "context_mark", None)),
                       (getattr(error, "problem", None), getattr(error, "problem_mark", None))):
        if text:
            parts.append(text + (f" at line {mark.line + 1}, column {mark.column + 1}"
                                 if mark is not None else ""))
    return ": ".join(parts) or str(error).splitlines()[0]


def plain_key(key: str) -> str:
    """A key as users write it: ``model.sampling.group_size``, not ``model.init_args...``."""
    return key.replace(".init_args.", ".").removesuffix(".init_args")


def class_keys(class_path: str, prefix: str) -> list[str] | None:
    """The keys ``class_path``'s arguments give under ``prefix``; None if it does not import."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls)
    except (ImportError, AttributeError, ValueError):
        return None
    return [plain_key(f"{prefix}.{k}" if prefix else k) for k in parser.get_defaults().keys()]


def nearest_keys(key: str, known: Sequence[str]) -> str:
    """What to write instead of the unknown ``key``: the valid keys nearest to its first wrong
    part (``difflib``), else every valid key at that level."""
    parts = key.split(".")
    for depth, part in enumerate(parts):
        head = parts[:depth]
        children = sorted({k.split(".")[depth] for k in known
                           if k.split(".")[:depth] == head and len(k.split(".")) > depth})
        if part in children or not children:
            continue
        close = difflib.get_close_matches(part, children, n=3, cutoff=0.6)
        named = [".".join([*head, c]) for c in close or children]
        shown = ", ".join(named[:12]) + (", ..." if len(named) > 12 else "")
        return f"did you mean {' or '.join(named)}?" if close else f"valid keys: {shown}"
    return "check its spelling"


def _innermost(message: str) -> tuple[list[str], str]:
    """The nested ``Parser key "..."`` names of a jsonargparse report, outermost first (each
    relative to the class of the one before), and the text under the innermost."""
    lines, keys, start, indent = message.splitlines(), [], None, -1
    for i, line in enumerate(lines):
        if found := re.match(r'(\s*)Parser key "([^"]+)":(.*)', line):
            keys.append(found[2])
            start, indent, first = i, len(found[1]), found[3]
    if start is None:
        return [], message
    block = [first] if first.strip() else []
    for line in lines[start + 1:]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        block.append(line)
    return keys, "\n".join(block)


def parser_mistake(message: str, known: Callable[[], list[str]], commands: Sequence[str]) -> str:
    """jsonargparse's report of a mistake (several nested lines) as one line that names the key:
    an unknown key with the nearest valid ones, a value of the wrong type, an unknown command."""
    if "subcommand" in message:
        given = re.search(r"invalid choice: '([^']+)'", message)
        close = difflib.get_close_matches(given[1], commands, n=1) if given else []
        hint = f"did you mean {close[0]}?" if close else f"use one of {', '.join(commands)}"
        return f"unknown command {given[1]!r}: {hint}" if given else \
            f"no command: use one of {', '.join(commands)} (python main.py fit -c <config>)"
    keys, block = _innermost(message)
    prefix = plain_key(".".join(keys))
    classes = re.findall(r"class_path\W+'([\w.]+)'", block)
    unknown = (re.search(r"Group '([^']+)' does not accept option '([^']+)'", block)
               or re.search(r"Option '([^']+)' is not accepted", block)
               or re.search(r"unrecognized arguments: (?:\w+ )?--([\w.]+)", block))
    if unknown is not None:
        key = plain_key(".".join([*filter(None, [prefix]), *unknown.groups()]))
        candidates = (class_keys(classes[-1], prefix) if classes else None) or known()
        where = f" ({classes[-1]})" if classes and prefix.endswith("callbacks") else ""
        return f"unknown key {key!r}{where}: {nearest_keys(key, candidates)}"
    value = re.search(r"(?:Got|Given) value: (.*)", block)
    literal = re.search(r"Expected a typing\.Literal\[(.*?)\]", block)
    types = [t.replace("NoneType", "null")
             for t in re.findall(r"Expected a <class '([\w.]+)'>", block)]
    if (literal or types) and value is not None:
        expected = f"one of {literal[1]}" if literal else " or ".join(dict.fromkeys(types))
        return f"{prefix}: expected {expected}, got {value[1].strip()}"
    detail = next((line.strip() for line in block.splitlines() if line.strip()), "invalid")
    return f"{prefix}: {detail}" if prefix else detail
