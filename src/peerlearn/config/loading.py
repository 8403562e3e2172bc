"""Reading a run configuration: YAML (1.2 scalars), dotted overrides, validation into ``RunConfig``.

Overrides use dotted paths into the YAML tree; list items are addressed by index, and the next index
(or ``+``) appends an item::

    optim.lr=0.05  members.0.model=resnet32  mutual.update=sequential  members.+={name: c, model: mlp}

Reading is bounded: a config file must be UTF-8 text of at most 1 MiB without NUL bytes, its YAML may
nest at most ``MAX_DEPTH`` levels, and aliases may not expand it beyond ``MAX_NODES`` nodes (an alias
bomb is refused after composing, before anything is built from it). Every failure is a
``ConfigError`` (exit 2) naming the file.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from types import UnionType
from typing import Any, Optional, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from peerlearn.config.schema import RECIPE_SECTIONS, RunConfig
from peerlearn.errors import ConfigError


MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_NODES = 100_000


class _YamlLoader(yaml.SafeLoader):
    """Safe YAML loader with YAML 1.2 scalars: ``1e-3`` is a float, and only true/false are booleans
    (YAML 1.1 would read ``progress: off`` or ``yes`` as booleans). Nesting deeper than ``MAX_DEPTH`` is
    refused while composing; a document whose aliases expand to more than ``MAX_NODES`` nodes (or refer
    to themselves) is refused before it is constructed."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ConfigError(f"the YAML nests deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node


def _check_expansion(root) -> None:
    """Count the nodes and depth of the document as aliases would expand it (memoised on shared nodes)."""
    sizes: dict[int, tuple[int, int]] = {}
    open_nodes: set[int] = set()

    def measure(node) -> tuple[int, int]:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError("a YAML alias refers to a node that contains it (a recursive structure)")
        open_nodes.add(key)
        children = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [item for pair in node.value for item in pair]
        count, depth = 1, 1
        for child in children:
            child_count, child_depth = measure(child)
            count, depth = count + child_count, max(depth, child_depth + 1)
            if count > MAX_NODES:
                raise ConfigError(f"its aliases expand it to more than {MAX_NODES} nodes (an alias bomb?)")
            if depth > MAX_DEPTH:
                raise ConfigError(f"its aliases expand it deeper than {MAX_DEPTH} levels")
        open_nodes.discard(key)
        sizes[key] = (count, depth)
        return count, depth

    try:
        measure(root)
    except RecursionError:
        raise ConfigError(f"its aliases expand it deeper than {MAX_DEPTH} levels") from None


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping at the top of a YAML config file; ``ConfigError`` naming the file otherwise."""
    where = f"Config file {str(path)!r}"
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{where} has {size} bytes; a config may have at most {MAX_CONFIG_BYTES} (1 MiB).")
        data = path.read_bytes()[: MAX_CONFIG_BYTES + 1]
    except OSError as error:
        raise ConfigError(f"{where} cannot be read: {error.strerror or error}.") from None
    if b"\0" in data:
        raise ConfigError(f"{where} is a binary file (it holds NUL bytes), not YAML text.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{where} is not UTF-8 text: byte 0x{data[error.start]:02x} at offset {error.start} "
                          "cannot be decoded. Save it as UTF-8.") from None
    try:
        tree = read_yaml(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{where} is not valid YAML: {error}") from None
    except ConfigError as error:
        raise ConfigError(f"{where} is refused: {error}.") from None
    except RecursionError:
        raise ConfigError(f"{where} is refused: it nests too deeply.") from None
    if tree is None:
        raise ConfigError(f"{where} is empty; it must hold a mapping of keys (e.g. `train: {{epochs: 5}}`).")
    if not isinstance(tree, dict):
        raise ConfigError(f"{where} must hold a mapping of keys at its top level, not a "
                          f"{type(tree).__name__} ({str(tree)[:40]!r}).")
    bad = [key for key in tree if not isinstance(key, str)]
    if bad:
        raise ConfigError(f"{where}: top-level key {bad[0]!r} is not a name; keys are section names like 'train'.")
    return tree


APPEND = "+"  # the list index that appends a new item: members.+={name: c, model: mlp}


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.0.c=value`` into its path and its YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(
            f"Override {text!r} has no '='. Overrides are written key=value with a dotted key, "
            "e.g. optim.lr=0.05 or members.0.model=resnet32."
        )
    key, raw = text.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or any(not part for part in parts):
        raise ConfigError(f"Override {text!r} has an empty key part; write e.g. optim.lr=0.05.")
    try:
        value = read_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"Override {text!r}: the value {raw!r} is not valid YAML ({error.problem}).") from None
    except (ConfigError, RecursionError) as error:
        raise ConfigError(f"Override {text!r}: the value is refused ({error or 'nested too deeply'}).") from None
    return parts, value


def _is_index(part: str) -> bool:
    return part.isdigit() or part == APPEND


def _without_none(annotation: Any) -> Any:
    """``Optional[X]`` -> X; any other annotation unchanged."""
    if get_origin(annotation) in (Union, UnionType):
        kept = [arg for arg in get_args(annotation) if arg is not type(None)]
        return kept[0] if len(kept) == 1 else annotation
    return annotation


def schema_container(parts: list[str]) -> Optional[type]:
    """``dict`` or ``list``: what the schema says the key ``parts`` (a dotted path) holds, or None when it does
    not say (an unknown key, a free-form value). ``greedy.stages`` is a mapping (stage number -> settings), so
    ``greedy.stages.2.epochs=1`` names its key 2, while ``members.1`` is item 1 of a list."""
    current: Any = RunConfig
    for part in parts:
        current = _without_none(current)
        origin = get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part)
            if field is None and current is RunConfig and part in RECIPE_SECTIONS:
                current = RECIPE_SECTIONS[part]
                continue
            if field is None:
                return None
            current = field.annotation
        elif origin is dict:
            current = get_args(current)[1]
        elif origin is list:
            current = get_args(current)[0]
        else:
            return None
    current = _without_none(current)
    if get_origin(current) is dict or (isinstance(current, type) and issubclass(current, BaseModel)):
        return dict
    return list if get_origin(current) is list else None


def apply_override(tree: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set ``tree[parts[0]][parts[1]]... = value``.

    List items are addressed by integer index; the index equal to the list's length, or ``+``, appends a new
    item (``members.2.model=mlp`` on a two-member cohort, ``members.+={name: c, model: mlp}``). A key that is
    absent becomes what the schema says it holds (``schema_container``: ``greedy.stages.2.epochs=1`` makes the
    mapping ``{2: {epochs: 1}}``), else a mapping, or a list when the next part is an index
    (``transfer.backbones.0.source=X``). A number names an existing integer key of a mapping.
    """
    node: Any = tree
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        kind = None if last else schema_container(parts[: depth + 1])
        fresh: Any = None if last else ({} if kind is dict else [] if kind is list or _is_index(parts[depth + 1])
                                        else {})
        if isinstance(node, list):
            if part == APPEND:
                part = str(len(node))
            if not part.isdigit() or int(part) > len(node):
                raise ConfigError(
                    f"Override key {'.'.join(parts)!r}: {where!r} is a list index, but {part!r} is not an index "
                    f"below its length {len(node)}, nor {len(node)} or '+' (which append an item)."
                )
            index = int(part)
            if index == len(node):
                node.append(fresh)
            if last:
                node[index] = value
            else:
                if node[index] is None:
                    node[index] = fresh
                node = node[index]
        elif isinstance(node, dict):
            if part == APPEND:
                raise ConfigError(f"Override key {'.'.join(parts)!r}: '+' appends to a list, but "
                                  f"{'.'.join(parts[:depth]) or 'the top level'!r} is a mapping.")
            if part.isdigit() and part not in node and int(part) in node:
                part = int(part)  # a YAML mapping with number keys (greedy: {stages: {2: {...}}})
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = fresh
                node = node[part]
        else:
            raise ConfigError(
                f"Override key {'.'.join(parts)!r}: {'.'.join(parts[:depth])!r} holds the value {node!r}, "
                "which has no sub-keys."
            )


def _format_validation_error(error: ValidationError, tree: dict[str, Any]) -> str:
    lines = []
    for item in error.errors():
        loc = [str(p) for p in item["loc"]]
        key = ".".join(loc)
        message = item["msg"].removeprefix("Value error, ")
        if not loc or message.startswith("key '"):  # the message already names its key
            lines.append(message + ".")
            continue
        if item["type"] == "extra_forbidden":
            parent = _section_at(RunConfig, loc[:-1])
            allowed = ", ".join(parent.model_fields) if parent else "see docs/config.md"
            lines.append(f"key '{key}' is not a known key; allowed here: {allowed}.")
            continue
        value = item.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        lines.append(f"key '{key}' has the value {shown}: {message}.")
    return "Invalid config: " + " ".join(lines) + " See docs/config.md for every key."


def _section_at(model: type[BaseModel], loc: list[str]) -> Optional[type[BaseModel]]:
    current: Any = model
    for part in loc:
        if part.isdigit():
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return None
        annotation = field.annotation
        for candidate in getattr(annotation, "__args__", (annotation,)):
            inner = getattr(candidate, "__args__", (candidate,))
            found = next((c for c in inner if isinstance(c, type) and issubclass(c, BaseModel)), None)
            if found is not None:
                current = found
                break
        else:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def build_config(tree: dict[str, Any], import_code: bool = True) -> RunConfig:
    """Validate a config tree (already parsed YAML) into a ``RunConfig``.

    ``import_code`` false: a recipe named by reference (``package.module:Class``) is not imported (a run read
    back); see ``RunConfig._recipe_owns_its_keys``."""
    if not isinstance(tree, dict):
        raise ConfigError(f"Invalid config: the top level must be a mapping of keys, got {type(tree).__name__}.")
    try:
        return RunConfig.model_validate(tree, context={"import_code": import_code})
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, tree)) from None
    except TypeError as error:
        raise ConfigError(f"Invalid config: {error}.") from None


def load_config(
    source: Union[str, Path, dict[str, Any], RunConfig, None] = None,
    overrides: Union[list[str], dict[str, Any], None] = None,
    *,
    import_code: bool = True,
) -> RunConfig:
    """Read a config from a YAML path, a dict or a ``RunConfig``, apply overrides, validate.

    ``overrides`` is a list of ``"dotted.key=value"`` strings or a dict ``{"dotted.key": value}``.
    A recipe named by reference (``recipe: package.module:Class``) is imported: the config is the user's own.
    Code that reads another run's config.yaml passes ``import_code=False``: the reference is then not
    imported, and its section is left out unless the recipe is already loaded (reading is not running).
    """
    if source is None:
        tree: dict[str, Any] = {}
    elif isinstance(source, RunConfig):
        tree = source.model_dump(mode="json")
    elif isinstance(source, dict):
        tree = copy.deepcopy(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"Config file {str(path)!r} does not exist.")
        tree = read_config_file(path)
    items: list[tuple[list[str], Any]] = []
    if isinstance(overrides, dict):
        items = [(str(k).split("."), v) for k, v in overrides.items()]
    elif overrides:
        items = [parse_override(text) for text in overrides]
    for parts, value in items:
        _fill_default(tree, parts[0], import_code)
        apply_override(tree, parts, value)
    return build_config(tree, import_code)


def _fill_default(tree: dict[str, Any], key: str, import_code: bool = True) -> None:
    """Before overriding inside a top-level key the file left out, start from that key's default
    (so ``members.0.model=mlp`` edits the default cohort instead of replacing it). The members left out are
    the recipe's (``Recipe.defaults``)."""
    if key in tree:
        return
    if key == "members":
        _fill_recipe_defaults(tree, import_code)
        if key in tree:
            return
    field = RunConfig.model_fields.get(key)
    if field is None:
        return
    default = field.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        tree[key] = default.model_dump(mode="json", exclude_unset=True)
    elif isinstance(default, list):
        tree[key] = [item.model_dump(mode="json", exclude_unset=True) if isinstance(item, BaseModel) else item
                     for item in default]


def _fill_recipe_defaults(tree: dict[str, Any], import_code: bool) -> None:
    """Write the members the recipe gives ``tree`` (``Recipe.defaults``) into it. Nothing when the tree is not
    valid yet (a later override may fix it): the field's default applies then."""
    try:
        built = build_config(copy.deepcopy(tree), import_code)
    except ConfigError:
        return
    tree["members"] = [member.model_dump(mode="json", exclude_unset=True) for member in built.members]


def config_yaml(config: RunConfig) -> str:
    """The resolved config as YAML (what a run really uses, defaults included); ``engine.run_dir.save_config``
    writes it into a run directory."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
