"""Strict config: YAML syntax errors with file, line and column; unknown keys and bad values
named by their key path and the file that set them, on one line (issue 19).

Used by the workflow (Snakefile, rules/common.smk) before any job is planned, and by every
CLI command that reads a config.yaml (merge, predict/serve, synth, gate, report-paths,
check-images)."""

from __future__ import annotations

import difflib
import functools
import reprlib
from pathlib import Path
from typing import NamedTuple

import yaml

from vmpower.paths import SCHEMAS
from vmpower.errors import InputError

SCHEMA_DIR = SCHEMAS
CONFIG_SCHEMA = "config.schema.yaml"
_LOADER_BASE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_DEPTH = 64  # config.yaml nests 6 levels deep (a bound on reading the config, so not set in it)


class Problem(NamedTuple):
    path: tuple  # key path into the config, e.g. ("train", "params", "XGBRegressor", "n_estimators")
    message: str

    def text(self) -> str:
        return f"{key_path(self.path)}: {self.message}" if self.path else self.message


class _StrictLoader(_LOADER_BASE):
    """Safe YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last
    silently: a second `train:` section would replace the first without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def key_path(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _check_depth(text: str, path) -> None:
    """Refuse deep nesting before composing: the composer recurses in C and a 100,000-level file
    crashes the interpreter (segfault); the event parser keeps its own stack."""
    depth = 0
    for event in yaml.parse(text, Loader=_LOADER_BASE):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                raise InputError(path, f"YAML nested deeper than {MAX_DEPTH} levels at line {mark.line + 1}, "
                                       f"column {mark.column + 1}")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def read_yaml(path) -> dict:
    """A YAML mapping from a file; one-line InputError naming file, line and column otherwise."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, "config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read config ({exc})") from None
    try:
        _check_depth(text, path)
        doc = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a safe loader)
    except yaml.MarkedYAMLError as exc:
        mark, start = exc.problem_mark or exc.context_mark, exc.context_mark
        where = f"at line {mark.line + 1}, column {mark.column + 1}: " if mark else ": "
        context = f" ({exc.context}" if exc.context else ""
        if context and start is not None and (start.line, start.column) != (mark.line, mark.column):
            context += f" at line {start.line + 1}, column {start.column + 1}"
        context += ")" if context else ""
        raise InputError(path, f"YAML syntax error {where}{exc.problem}{context}") from None
    except yaml.YAMLError as exc:
        raise InputError(path, f"YAML syntax error: {exc}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise InputError(path, f"not a YAML mapping of keys (a {type(doc).__name__})")
    return doc


@functools.cache
def _validator(name: str):
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    docs = {p.name: yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(SCHEMA_DIR.glob("*.schema.yaml"))}
    registry = Registry().with_resources(
        (n, Resource.from_contents(d, default_specification=DRAFT202012)) for n, d in docs.items())
    return Draft202012Validator(docs[name], registry=registry)


def _unknown_key(err) -> Problem:
    known = sorted(err.schema.get("properties", {}))
    extra = [k for k in err.instance if k not in known]
    key = extra[0]
    near = difflib.get_close_matches(str(key), known, n=1)
    hint = f"did you mean {near[0]}?" if near else f"known keys: {', '.join(known)}"
    return Problem((*err.absolute_path, key), f"unknown key ({hint})")


def _problem(err) -> Problem:
    path = tuple(err.absolute_path)
    if err.validator == "additionalProperties" and err.schema.get("additionalProperties") is False:
        return _unknown_key(err)
    if err.validator == "required":
        missing = [k for k in err.validator_value if k not in err.instance]
        return Problem((*path, missing[0]), "required key missing")
    if err.validator == "type":
        return Problem(path, f"must be of type {err.validator_value}, got {reprlib.repr(err.instance)}")
    message = " ".join(err.message.split())
    return Problem(path, message if len(message) <= 200 else message[:197] + "...")


def schema_problem(doc: dict, schema: str = CONFIG_SCHEMA, partial: bool = False) -> Problem | None:
    """The most relevant schema violation of doc, or None. partial: a file holding only some
    sections (an overlay, or a config a command reads a few sections of): missing required keys
    are not problems, unknown keys and bad values are."""
    from jsonschema.exceptions import best_match

    errors = (e for e in _validator(schema).iter_errors(doc) if not (partial and e.validator == "required"))
    err = best_match(errors)
    return None if err is None else _problem(err)


def _has(doc, path) -> int:
    """How many leading keys of path exist in doc."""
    depth = 0
    for part in path:
        try:
            doc = doc[part]
        except (KeyError, IndexError, TypeError):
            break
        depth += 1
    return depth


def blame(path, sources) -> str:
    """The label of the source (in increasing precedence) that set path: the last one holding
    it, else the last one holding most of it."""
    best, best_depth = sources[-1][0] if sources else "config", -1
    for label, doc in sources:
        depth = _has(doc, path)
        if depth >= best_depth:
            best, best_depth = label, depth
    return best


def check_file(path, schema: str = CONFIG_SCHEMA) -> dict:
    """A config file (or an overlay) a command reads: syntax, unknown keys and values checked.
    Returns its mapping. Without the schemas (an installed wheel) only the syntax is checked."""
    doc = read_yaml(path)
    if (SCHEMA_DIR / schema).is_file():
        problem = schema_problem(doc, schema, partial=True)
        if problem is not None:
            raise InputError(path, problem.text())
    return doc


def config_problem(config: dict, checks=()) -> Problem | None:
    """The first problem of a whole, merged workflow config: the schema, then each of ``checks``
    (callables config -> Problem | None that a layer passes in, e.g. the trainers' parameters:
    vmpower.pipeline.paramcheck.config_problem; a base module imports no layer)."""
    problem = schema_problem(config)
    for check in checks:
        if problem is not None:
            break
        problem = check(config)
    return problem


# ---------------------------------------------------------------- Snakemake entry points
# They return the one-line message; the workflow raises it as a WorkflowError itself, so that
# Snakemake's error shows no frame of this module.


def yaml_problem(path) -> str | None:
    """Before `configfile:` parses path: Snakemake's parser says only "not valid JSON or YAML"."""
    if not Path(path).is_file():
        return None
    try:
        read_yaml(path)
    except InputError as err:
        return str(err)
    return None


def workflow_problem(workflow, config: dict, checks=()) -> str | None:
    """The workflow's merged config, strictly, naming the file (or --config) that set the key.
    ``checks`` (see config_problem: the trainers' parameters) run in the main process only (not
    again in every job of a cluster build, where each job plans the workflow anew)."""
    cli_files = [str(p) for p in workflow.overwrite_configfiles or []]
    files = [str(p) for p in workflow.configfiles if str(p) not in cli_files] + cli_files
    try:
        sources = [(f, read_yaml(f)) for f in dict.fromkeys(files)]
    except InputError as err:
        return str(err)
    sources.append(("--config", dict(workflow.config_settings.config or {})))
    problem = config_problem(config, checks if workflow.is_main_process else ())
    return None if problem is None else str(InputError(blame(problem.path, sources), problem.text()))
