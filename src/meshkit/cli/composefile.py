"""Compose files as YAML with lines (pure): reading one file into a tree that knows the file
and line of every path, `${VAR}` interpolation as docker stack deploy does it, and the merge of
several `-c` files (later ones win; maps merge by key, lists of ports append).

meshkit.cli.stackfile translates the merged tree into a stack's networks and service specs;
both raise StackError naming the file, the line and the path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from meshkit.base.errors import MeshkitError

__all__ = [
    "Doc",
    "Path",
    "StackError",
    "interpolate",
    "interpolate_tree",
    "label_map",
    "merge",
    "normalise_service",
    "parse_compose",
]

Path = tuple[str | int, ...]


class StackError(MeshkitError):
    """A compose file that cannot be deployed; the message names the file, line and path."""

    exit_code = 2


# -- YAML with lines -------------------------------------------------------------------------

_INT = re.compile(
    r"""^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$""", re.X
)
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _Loader(yaml.SafeLoader):  # type: ignore[misc]
    """YAML 1.1 as PyYAML reads it, minus base-60 numbers: `8080:80` stays text (Docker's
    YAML reader never made it 484880), and duplicate keys are errors."""


_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, rx)
        for tag, rx in resolvers
        if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


@dataclass
class Doc:
    """One parsed file: its data and, for each path in it, the line it starts on."""

    name: str
    data: dict[str, Any]
    lines: dict[Path, int]


def _walk_lines(node: yaml.Node, path: Path, out: dict[Path, int], name: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key, value in node.value:
            k = key.value if isinstance(key, yaml.ScalarNode) else str(key.value)
            if k == "<<":
                continue
            if k in seen:
                where = ".".join(str(p) for p in (*path, k))
                raise StackError(f"{name}:{key.start_mark.line + 1}: {where}: duplicate key")
            seen.add(k)
            here = (*path, k)
            out[here] = key.start_mark.line + 1
            _walk_lines(value, here, out, name)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            here = (*path, i)
            out[here] = value.start_mark.line + 1
            _walk_lines(value, here, out, name)


def parse_compose(name: str, text: str) -> Doc:
    """One compose file's text -> Doc; StackError with the line when it is not YAML."""
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            lines: dict[Path, int] = {}
            if node is not None:
                _walk_lines(node, (), lines, name)
                data = loader.construct_document(node)
            else:
                data = None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise StackError(f"{name}{line}: not a YAML file: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise StackError(f"{name}: not a YAML file: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise StackError(f"{name}:1: a compose file is a mapping of keys (version, services...)")
    return Doc(name, data, lines)


# -- interpolation ---------------------------------------------------------------------------

_VAR = re.compile(r"\$(?:(?P<esc>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*)|)")
_BRACED = re.compile(
    r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?$", re.S
)


def interpolate(text: str, env: Mapping[str, str], warn: Callable[[str], None]) -> str:
    """`${VAR}`, `$VAR`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`,
    `${VAR:+alt}`, `${VAR+alt}`, and `$$` for a `$`, as compose does. ValueError when a
    `${...}` is malformed or a required variable is missing."""

    def one(m: re.Match[str]) -> str:
        if m.group("esc"):
            return "$"
        name = m.group("named")
        if name is not None:
            return _lookup(name, env, warn)
        braced = m.group("braced")
        if braced is None:
            raise ValueError(f"invalid interpolation format in {text!r}: a lone '$' (write $$)")
        b = _BRACED.match(braced)
        if b is None:
            raise ValueError(f"invalid interpolation format in {text!r}: ${{{braced}}}")
        name, op, arg = b.group("name"), b.group("op"), b.group("arg") or ""
        value = env.get(name)
        if op is None:
            return _lookup(name, env, warn)
        if op in (":-", "-"):
            unset = value is None or (op == ":-" and value == "")
            return arg if unset else str(value)
        if op in (":?", "?"):
            unset = value is None or (op == ":?" and value == "")
            if unset:
                raise ValueError(f"required variable {name} is missing a value: {arg}")
            return str(value)
        setv = value is not None and (op == "+" or value != "")
        return arg if setv else ""

    return _VAR.sub(one, text)


def _lookup(name: str, env: Mapping[str, str], warn: Callable[[str], None]) -> str:
    if name in env:
        return str(env[name])
    warn(f"The {name} variable is not set. Defaulting to a blank string.")
    return ""


def interpolate_tree(
    value: Any, path: Path, env: Mapping[str, str], where: Callable[[Path], str],
    warnings: list[str],
) -> Any:  # fmt: skip
    if isinstance(value, str):
        try:
            return interpolate(value, env, lambda w: warnings.append(f"{where(path)}: {w}"))
        except ValueError as exc:
            raise StackError(f"{where(path)}: {exc}") from None
    if isinstance(value, dict):
        return {k: interpolate_tree(v, (*path, k), env, where, warnings) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate_tree(v, (*path, i), env, where, warnings) for i, v in enumerate(value)]
    return value


# -- merging several files (later files override, as docker stack deploy -c A -c B) ----------


def merge(base: Any, over: Any, path: Path) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base[k], v, (*path, k)) if k in base else v
        return out
    if (
        isinstance(base, list)
        and isinstance(over, list)
        and len(path) == 3
        and path[0] == "services"
        and path[2] in ("ports", "expose", "secrets", "configs", "volumes", "dns")
    ):
        # lists Docker merges by entry: the base's entries the override does not repeat
        return [b for b in base if b not in over] + list(over)
    return over


def normalise_service(svc: Any) -> Any:
    """Lists that are really maps (environment, labels, networks) as maps, so that merging
    works per key."""
    if not isinstance(svc, dict):
        return svc
    out = dict(svc)
    if isinstance(out.get("environment"), list):
        env: dict[str, Any] = {}
        for item in out["environment"]:
            k, eq, v = str(item).partition("=")
            env[k] = v if eq else None
        out["environment"] = env
    if isinstance(out.get("networks"), list):
        out["networks"] = {str(n): None for n in out["networks"]}
    deploy = out.get("deploy")
    if isinstance(deploy, dict) and isinstance(deploy.get("labels"), list):
        deploy = dict(deploy)
        deploy["labels"] = label_map(deploy["labels"])
        out["deploy"] = deploy
    return out


def label_map(items: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        k, _, v = str(item).partition("=")
        out[k] = v
    return out
