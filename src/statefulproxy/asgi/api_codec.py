"""Request bodies and queries decoded into msgspec models, and refused in the API's own words.

A model's fields carry their constraints (``msgspec.Meta``) and, where the generated words will
not do, a ``refuse(...)`` annotation. A fault msgspec finds is answered as a 400 whose message and
``param`` come from the annotation at the fault's place, or are made from its type:

    'title' must be a string of at most 256 characters.       (str, max_length)
    'max_requests' must be an integer from 1 to 2147483647.   (int, ge/le)
    'expires_after.seconds' is required.                      (a required field missing or null)

Bodies are decoded in one typed pass. Only a body that fails it is parsed again, by orjson as
every other body of the proxy is (the same verdict on bad JSON, and on nesting too deep), to
name an unknown top-level field first, to accept an integral float such as ``5.0`` where an
integer is wanted (JSON Schema does; so does OpenAI), and to tell the first fault in the model's
order, whatever order the client wrote the fields in.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec
import msgspec.inspect as mi
import msgspec.structs
import orjson

from ..errors import ClientError, invalid_json, not_an_object

__all__ = ["BodyDecoder", "FieldSchema", "QueryDecoder", "query_fields", "refuse", "schema_components"]

T = TypeVar("T", bound=msgspec.Struct)

_KEY = "statefulproxy.refuse"
_INTEGRAL_DEPTH = 4  # deeper than any model's objects
# the place of a fault, at the end of msgspec's message: "... - at `$.a.b`" or "... - at `key` in `$.a`"
_AT = re.compile(r" - at `(key` in `)?(\$[^`]*)`$")


@dataclass(frozen=True, slots=True)
class _Say:
    message: str | None
    param: str | None
    name: str | None
    too_long: str | None


def refuse(
    message: str | None = None, *, param: str | None = None, name: str | None = None, too_long: str | None = None
) -> msgspec.Meta:
    """Words for a fault at this place: ``message`` ("{name}" is the field's dotted name, or
    ``name``), the ``param`` to report (default: that name), ``too_long`` for a length fault."""
    return msgspec.Meta(extra={_KEY: _Say(message, param, name, too_long)})


@dataclass(frozen=True, slots=True)
class _Words:
    message: str
    param: str | None
    too_long: str | None = None
    required: str | None = None  # a field that must be present and not null
    explicit: bool = False  # an object's own words; a field's: it speaks for the object holding it


class _Vocabulary:
    """The words for every place of a model, found once: msgspec path -> words."""

    def __init__(self, model: type[msgspec.Struct]) -> None:
        self.values: dict[str, _Words] = {"$": _Words("The request is invalid.", None)}
        self.objects: dict[str, _Words] = {}
        self._walk(mi.type_info(model), "$", "", field=False)

    def _walk(self, kind: mi.Type, path: str, name: str, *, field: bool) -> None:
        members = [_unwrap(member) for member in (kind.types if isinstance(kind, mi.UnionType) else (kind,))]
        nullable = any(isinstance(member, mi.NoneType) for member, _ in members)
        members = [(member, say) for member, say in members if not isinstance(member, mi.NoneType)]
        if not members:
            return
        scalars = [(member, say) for member, say in members if not isinstance(member, mi.StructType)]
        lead, say = (scalars or members)[0]
        if name:
            shown = say.name if say and say.name else name
            message = (say.message if say and say.message else _generated(lead)).replace("{name}", shown)
            param = say.param if say and say.param else shown
            too_long = say.too_long.replace("{name}", shown) if say and say.too_long else None
            required = f"'{shown}' is required." if field and not nullable else None
            self.values[path] = _Words(message, param, too_long, required, explicit=bool(say and say.name))
        for member, member_say in members:
            if isinstance(member, mi.StructType):
                if name:
                    here = self.values[path]
                    if member_say and member_say.message:
                        here = _Words(
                            member_say.message.replace("{name}", name), member_say.param or name, explicit=True
                        )
                    elif say and say.message:
                        here = dataclasses.replace(here, explicit=True)
                    self.objects[path] = here
                for item in member.fields:
                    dotted = f"{name}.{item.encode_name}" if name else item.encode_name
                    self._walk(item.type, f"{path}.{item.encode_name}", dotted, field=True)
            elif isinstance(member, mi.DictType):
                self._walk(member.key_type, f"key:{path}", name, field=False)
                self._walk(member.value_type, f"{path}[...]", name, field=False)

    def refusal(self, error: msgspec.ValidationError) -> ClientError:
        text = str(error)
        found = _AT.search(text)
        detail, path = (text, "$") if found is None else (text[: found.start()], found[2])
        if found is not None and found[1]:
            path = "key:" + path
        if detail.startswith("Object missing required field `"):
            # said as the object says it, unless the field speaks for the object or the object has no words
            missing, whole = self.values.get(f"{path}.{detail.split('`')[1]}"), self.objects.get(path)
            if missing is not None and (missing.explicit or whole is None or not whole.explicit):
                return ClientError(400, missing.required or missing.message, param=missing.param)
            words = whole or self._nearest(path)
            return ClientError(400, words.message, param=words.param)
        if detail.startswith("Object contains unknown field `"):
            words = self.objects.get(path) or self._nearest(path)
            return ClientError(400, words.message, param=words.param)
        words = self._nearest(path)
        message = words.message
        if detail.endswith("got `null`") and words.required:
            message = words.required
        elif " of length " in detail and words.too_long:
            message = words.too_long
        return ClientError(400, message, param=words.param)

    def _nearest(self, path: str) -> _Words:
        while path not in self.values:  # a place not walked (a list item): the words of what holds it
            if path.startswith("key:"):
                path = path.removeprefix("key:")
            else:
                path = path[: max(path.rfind("."), path.rfind("["), 1)]
        return self.values[path]


def _unwrap(kind: mi.Type) -> tuple[mi.Type, _Say | None]:
    if isinstance(kind, mi.Metadata):
        say = (kind.extra or {}).get(_KEY)
        return kind.type, say if isinstance(say, _Say) else None
    return kind, None


def _generated(kind: mi.Type) -> str:
    """What a value of ``kind`` must be, said from its type and constraints."""
    if isinstance(kind, mi.IntType):
        low = kind.ge if kind.ge is not None else (None if kind.gt is None else kind.gt + 1)
        high = kind.le if kind.le is not None else (None if kind.lt is None else kind.lt - 1)
        if low is not None and high is not None:
            return f"'{{name}}' must be an integer from {low} to {high}."
        return (
            f"'{{name}}' must be an integer of at least {low}." if low is not None else "'{name}' must be an integer."
        )
    if isinstance(kind, mi.StrType):
        if kind.max_length is not None:
            return f"'{{name}}' must be a string of at most {kind.max_length} characters."
        return "'{name}' must be a non-empty string." if kind.min_length else "'{name}' must be a string."
    if isinstance(kind, mi.LiteralType):
        values = [str(value) for value in kind.values]
        if len(values) == 1:
            return f"'{{name}}' must be {values[0]}."
        if len(values) == 2:
            return f"'{{name}}' must be {values[0]} or {values[1]}."
        return f"'{{name}}' must be one of {', '.join(values)}."
    if isinstance(kind, mi.BoolType):
        return "'{name}' must be true or false."
    if isinstance(kind, (mi.StructType, mi.DictType)):
        return "'{name}' must be an object."
    return "'{name}' is invalid."


def _integral(value: Any, depth: int = 0) -> Any:
    """``value`` with integral floats made ints, in objects (the models hold no int in a list)."""
    if type(value) is float and value.is_integer():
        return int(value)
    if type(value) is dict and depth < _INTEGRAL_DEPTH:
        return {key: _integral(item, depth + 1) for key, item in value.items()}
    return value


def json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object, or the 400 a client is answered for anything else."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise invalid_json() from None
    if not isinstance(value, dict):
        raise not_an_object()
    return value


class BodyDecoder(Generic[T]):
    """Decodes a JSON request body (no body at all: an empty object) into ``model``."""

    def __init__(self, model: type[T]) -> None:
        self.model = model
        self._typed = msgspec.json.Decoder(model)
        self._fields = tuple(field.encode_name for field in msgspec.structs.fields(model))
        self._words = _Vocabulary(model)

    def decode(self, raw: bytes) -> T:
        if not raw.strip():
            raw = b"{}"
        try:
            return self._typed.decode(raw)
        except msgspec.DecodeError:  # a ValidationError too
            pass
        value = json_object(raw)
        for key in value:
            if key not in self._fields:
                raise ClientError(400, f"Unrecognized request argument supplied: {key}", param=key)
        # of several faults the first in the model's order is told, whatever order the client wrote
        value = {key: _integral(value[key]) for key in self._fields if key in value}
        try:
            return msgspec.convert(value, self.model)
        except msgspec.ValidationError as error:
            raise self._words.refusal(error) from None


class QueryDecoder(Generic[T]):
    """Decodes query parameters into ``model``: a dict field is a deepObject (``name[KEY]=VALUE``),
    an int field takes ASCII digits, the last of repeated parameters wins, unknown ones are ignored."""

    def __init__(self, model: type[T]) -> None:
        self.model = model
        self._words = _Vocabulary(model)
        self._ints: set[str] = set()
        self._scalars: set[str] = set()
        self._objects: set[str] = set()
        info = mi.type_info(model)
        assert isinstance(info, mi.StructType)
        self._order = tuple(field.encode_name for field in info.fields)
        for field in info.fields:
            members = field.type.types if isinstance(field.type, mi.UnionType) else (field.type,)
            kinds = {type(_unwrap(member)[0]) for member in members}
            if mi.DictType in kinds:
                self._objects.add(field.encode_name)
            else:
                self._scalars.add(field.encode_name)
            if mi.IntType in kinds:
                self._ints.add(field.encode_name)

    def decode(self, pairs: Iterable[tuple[str, str]]) -> T:
        values: dict[str, Any] = {}
        for key, value in pairs:
            if key in self._scalars:
                digits = key in self._ints and value.isascii() and value.isdigit() and len(value) < 100
                values[key] = int(value) if digits else value
            elif key.endswith("]") and (name := key.partition("[")[0]) in self._objects:
                values.setdefault(name, {})[key[len(name) + 1 : -1]] = value
        try:
            return msgspec.convert({key: values[key] for key in self._order if key in values}, self.model)
        except msgspec.ValidationError as error:
            raise self._words.refusal(error) from None


def schema_components(types: Iterable[Any], ref_template: str) -> tuple[tuple[dict[str, Any], ...], dict[str, Any]]:
    """JSON Schemas of ``types`` and of the models they refer to (msgspec.json.schema_components)."""
    return msgspec.json.schema_components(types, ref_template=ref_template)


@dataclass(frozen=True, slots=True)
class FieldSchema:
    name: str
    schema: dict[str, Any]  # null left out (an absent parameter is null), its default in


def query_fields(model: type[msgspec.Struct]) -> list[FieldSchema]:
    """The JSON Schema of each field of a query model."""
    fields = msgspec.structs.fields(model)
    schemas, components = msgspec.json.schema_components([field.type for field in fields])
    assert not components, "a query's fields are flat"
    found = []
    for field, schema in zip(fields, schemas, strict=True):
        members = [member for member in schema.get("anyOf", ()) if member != {"type": "null"}]
        if len(members) == 1:
            schema = {**members[0], **{key: value for key, value in schema.items() if key != "anyOf"}}
        if field.default is not msgspec.NODEFAULT and field.default is not None:
            schema["default"] = field.default
        found.append(FieldSchema(field.encode_name, schema))
    return found
