"""Shape check: walk decoded JSON against a msgspec Struct type and report every mismatch.

msgspec stops at the first error; a client fixing a spec wants them all at once, so this walks
the model's fields itself and converts each leaf with `msgspec.convert`, collecting problems
with their JSON paths.
"""

from __future__ import annotations

import re
import types
from typing import Annotated, Any, Union, get_args, get_origin

import msgspec

from controlplane.spec.paths import Problem, field_path, item_path, problem

_AT_PATH = re.compile(r" - at `\$[^`]*`$")


def shape_errors(value: object, model: type[msgspec.Struct]) -> list[Problem]:
    """Every shape problem of `value` (decoded JSON) against `model`, in document order."""
    check = _ShapeCheck()
    check.value(value, model, "")
    return check.errors


def validation_message(exc: msgspec.ValidationError) -> str:
    """msgspec's message without its `- at $...` suffix, starting lowercase."""
    # The models' patterns end in a newline guard (see models.py) that only confuses a reader.
    text = _AT_PATH.sub("", str(exc)).replace("$(?!\\\\n)", "$")
    return text[:1].lower() + text[1:]


def json_type(value: object) -> str:
    """The JSON type name of a decoded value, spelled the way msgspec spells it."""
    names: tuple[tuple[type, str], ...] = (
        (bool, "bool"),
        (int, "int"),
        (float, "float"),
        (str, "str"),
        (list, "array"),
        (dict, "object"),
    )
    for kind, name in names:
        if isinstance(value, kind):
            return name
    return "null"


def _unwrap(tp: Any) -> tuple[Any, tuple[Any, ...]]:
    if get_origin(tp) is Annotated:
        base, *metas = get_args(tp)
        return base, tuple(metas)
    return tp, ()


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _counted(count: int, noun: str) -> str:
    if count == 1:
        return f"1 {noun}"
    return f"{count} entries" if noun == "entry" else f"{count} {noun}s"


class _ShapeCheck:
    """One walk: the problems found so far and the field lists already resolved."""

    def __init__(self) -> None:
        self.errors: list[Problem] = []
        # Resolving a Struct's fields evaluates its annotations; do it once per class per walk.
        self._fields: dict[type[msgspec.Struct], tuple[msgspec.structs.FieldInfo, ...]] = {}

    def value(self, value: object, tp: Any, path: str) -> None:
        base, metas = _unwrap(tp)
        origin = get_origin(base)
        if _is_struct(base):
            self.struct(value, base, path)
        elif origin in (Union, types.UnionType) and not metas:
            self.union(value, tp, path)
        elif origin is list:
            self.list(value, base, metas, path)
        elif origin is dict:
            self.dict(value, base, metas, path)
        else:
            self.leaf(value, tp, path)

    def leaf(self, value: object, tp: Any, path: str) -> None:
        # Scalars (and unions of scalars) are left to msgspec, keeping its message.
        try:
            msgspec.convert(value, tp)
        except msgspec.ValidationError as exc:
            self.errors.append(problem(path, validation_message(exc)))

    def struct(self, value: object, cls: type[msgspec.Struct], path: str) -> None:
        if not isinstance(value, dict):
            self.errors.append(problem(path, f"expected `object`, got `{json_type(value)}`"))
            return
        if cls not in self._fields:
            self._fields[cls] = msgspec.structs.fields(cls)
        fields = self._fields[cls]
        # The tag is consumed by the union dispatch, so it is not an unknown field here.
        known = {f.encode_name for f in fields} | {cls.__struct_config__.tag_field}
        for key in value:
            if key not in known:
                self.errors.append(problem(field_path(path, key), "unknown field"))
        for info in fields:
            sub_path = field_path(path, info.encode_name)
            if info.encode_name in value:
                self.value(value[info.encode_name], info.type, sub_path)
            elif info.required:
                self.errors.append(problem(sub_path, "required field"))

    def union(self, value: object, tp: Any, path: str) -> None:
        members = [m for m in get_args(tp) if m is not type(None)]
        if value is None and len(members) < len(get_args(tp)):
            return
        if value is not None and len(members) == 1:
            self.value(value, members[0], path)
        elif members and all(_is_struct(m) for m in members) and isinstance(value, dict):
            self.tagged(value, tp, members, path)
        else:
            self.leaf(value, tp, path)

    def tagged(
        self, value: dict[str, Any], tp: Any, members: list[type[msgspec.Struct]], path: str
    ) -> None:
        configs = [m.__struct_config__ for m in members]
        tag_field = configs[0].tag_field
        if tag_field is None:
            self.leaf(value, tp, path)
            return
        by_tag = {config.tag: member for config, member in zip(configs, members, strict=True)}
        choices = ", ".join(str(tag) for tag in by_tag)
        tag_path = field_path(path, tag_field)
        if tag_field not in value:
            self.errors.append(problem(tag_path, f"required field (one of {choices})"))
            return
        tag = value[tag_field]
        # A JSON array or object as the tag is unhashable: it cannot name a type anyway.
        chosen = by_tag.get(tag) if isinstance(tag, str | int) else None
        if chosen is None:
            shown = msgspec.json.encode(tag).decode()
            message = f"unknown type {shown} (expected one of {choices})"
            self.errors.append(problem(tag_path, message))
        else:
            self.struct(value, chosen, path)

    def list(self, value: object, tp: Any, metas: tuple[Any, ...], path: str) -> None:
        if not isinstance(value, list):
            self.errors.append(problem(path, f"expected `array`, got `{json_type(value)}`"))
            return
        if not self.length(len(value), metas, "item", path):
            return  # items of an oversized list would only bury the one error that matters
        (item_type,) = get_args(tp)
        for index, item in enumerate(value):
            self.value(item, item_type, item_path(path, index))

    def dict(self, value: object, tp: Any, metas: tuple[Any, ...], path: str) -> None:
        if not isinstance(value, dict):
            self.errors.append(problem(path, f"expected `object`, got `{json_type(value)}`"))
            return
        if not self.length(len(value), metas, "entry", path):
            return
        key_type, value_type = get_args(tp)
        for key, item in value.items():
            sub_path = field_path(path, str(key))
            try:
                msgspec.convert(key, key_type)
            except msgspec.ValidationError as exc:
                message = f"invalid key: {validation_message(exc)}"
                self.errors.append(problem(sub_path, message))
                continue
            self.value(item, value_type, sub_path)

    def length(self, length: int, metas: tuple[Any, ...], noun: str, path: str) -> bool:
        """Report a length outside the bounds; False when it is over the maximum."""
        fits = True
        for meta in metas:
            if not isinstance(meta, msgspec.Meta):
                continue
            if meta.min_length is not None and length < meta.min_length:
                message = f"expected at least {_counted(meta.min_length, noun)}"
                self.errors.append(problem(path, message))
            if meta.max_length is not None and length > meta.max_length:
                message = f"expected at most {_counted(meta.max_length, noun)}"
                self.errors.append(problem(path, message))
                fits = False
        return fits
