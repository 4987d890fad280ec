"""A BatchAPI job submission, decoded and checked as Cortex v0.25's operator did: Go's encoding/json, then checks."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

SCHEMA_SUFFIX = "\n\njob submission schema can be found at https://docs.cortex.dev/v/0.25/"
MAX_SUBMISSION_BYTES = 10 << 20  # Cortex's body limit (API Gateway's): over it, "http: request body too large"
MAX_MESSAGE_BYTES = 256000  # one item, one batch (v0.25: SQS's 256 KiB less 6 KiB kept for message attributes)
SOURCE_KINDS = ("item_list", "file_path_lister", "delimited_files")

# Cortex's error kinds (pkg/operator/resources/batchapi, pkg/lib/configreader); "error" is a non-Cortex error's.
NOT_CORTEX = "error"
SPECIFY_EXACTLY_ONE_KEY = "batchapi.specify_exactly_one_key"
CONFLICTING_FIELDS = "batchapi.conflicting_fields"
TOO_FEW_ELEMENTS = "configreader.too_few_elements"
ITEM_SIZE_EXCEEDS_LIMIT = "batchapi.item_size_exceeds_limit"
AT_LEAST = "configreader.must_be_greater_than_or_equal_to"
CANNOT_BE_EMPTY = "configreader.cannot_be_empty"


class JobError(Exception):
    """A Cortex job API error: HTTP 400 with body {"kind": kind, "message": message}."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class DeadLetter:
    """`sqs_dead_letter_queue`: failed batches are retried until received `max_receive_count` times, then kept."""

    arn: str
    max_receive_count: int


@dataclass(frozen=True)
class Source:
    """Where a job's items come from: a list in the submission, or files (local or S3) listed or read."""

    kind: str  # "item_list" | "file_path_lister" | "delimited_files"
    batch_size: int
    items: list[Any] | None = None  # item_list (parsed JSON values)
    s3_paths: tuple[str, ...] = ()
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The source's object in a submission (what its kind's key holds)."""
        if self.kind == "item_list":
            return {"items": self.items, "batch_size": self.batch_size}
        return {"s3_paths": list(self.s3_paths), "includes": list(self.includes), "excludes": list(self.excludes),
                "batch_size": self.batch_size}


@dataclass(frozen=True)
class Submission:
    """A checked job submission."""

    workers: int
    source: Source
    config: dict[str, Any] | None = None
    timeout: int | None = None
    dead_letter: DeadLetter | None = None  # the JSON key is sqs_dead_letter_queue

    def to_json(self) -> dict[str, Any]:
        """The submission as JSON, in Cortex's keys (what is stored; from_json reads it back)."""
        dead_letter = None if self.dead_letter is None else {
            "arn": self.dead_letter.arn, "max_receive_count": self.dead_letter.max_receive_count}
        return {"workers": self.workers, "sqs_dead_letter_queue": dead_letter, "config": self.config,
                "timeout": self.timeout, self.source.kind: self.source.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Submission:
        """A submission stored by to_json (trusted: not checked again)."""
        kind = next(kind for kind in SOURCE_KINDS if data.get(kind) is not None)
        body = data[kind]
        source = Source(kind, body["batch_size"], items=body.get("items"),
                        s3_paths=tuple(body.get("s3_paths") or ()), includes=tuple(body.get("includes") or ()),
                        excludes=tuple(body.get("excludes") or ()))
        dead_letter = data.get("sqs_dead_letter_queue")
        return cls(data["workers"], source, data.get("config"), data.get("timeout"),
                   None if dead_letter is None else DeadLetter(dead_letter["arn"], dead_letter["max_receive_count"]))


def parse_submission(body: bytes) -> Submission:
    """Decode and check a submission body as Cortex did (checks 1–8, in Cortex's order and words); JobError otherwise.

    The S3/local path checks (9) need the project: engine.jobs.sources.check_paths."""
    if len(body) > MAX_SUBMISSION_BYTES:
        raise JobError(NOT_CORTEX, "http: request body too large")
    decoder = _GoDecoder()
    try:
        fields = decoder.decode(_parse_json(body), _SUBMISSION, _zero(_SUBMISSION))
    except RecursionError:  # Python's json and _plain recurse; Go 1.14 had no depth limit (Go 1.15: 10000 levels)
        raise JobError(NOT_CORTEX, "invalid JSON: nested too deeply" + SCHEMA_SUFFIX) from None
    if decoder.error is not None:
        raise JobError(NOT_CORTEX, decoder.error + SCHEMA_SUFFIX)
    _check(fields)
    return _submission(fields)


def parse_bool(text: str | None) -> bool:
    """Go's strconv.ParseBool, as Cortex read ?dryRun=: anything it cannot parse (absent, "yes") is False."""
    return text in ("1", "t", "T", "TRUE", "true", "True")


def compact_json(value: Any) -> tuple[str, int]:
    """`value` as compact JSON text (non-ASCII kept as UTF-8) and that text's size in bytes."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if text.isascii():
        return text, len(text)
    try:
        return text, len(text.encode())
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" is valid JSON): keep the text escaped, so encodable
        text = json.dumps(value, separators=(",", ":"))
        return text, len(text)


class NotJsonError(ValueError):
    """NaN or Infinity, which Python's json reads and JSON (and so Go) does not."""


def reject_constant(name: str) -> Any:
    """json's parse_constant hook: refuse NaN, Infinity and -Infinity as Go did."""
    where = "in numeric literal" if name.startswith("-") else "looking for beginning of value"
    raise NotJsonError(f"invalid character {name.lstrip('-')[0]!r} {where}")


def _check(fields: dict[str, Any]) -> None:
    """Cortex's validateJobSubmissionSchema, in its order."""
    given = [kind for kind in SOURCE_KINDS if fields[kind] is not None]
    if not given:
        _fail(SPECIFY_EXACTLY_ONE_KEY, f"specify exactly one of the following keys: {_or(SOURCE_KINDS)}")
    if len(given) > 1:
        _fail(CONFLICTING_FIELDS,
              f"please specify either the {_or(given)} field (but not more than one at the same time)")
    kind = given[0]
    if kind == "item_list":
        items = fields[kind]["items"]
        if not items:
            _fail(TOO_FEW_ELEMENTS, "items: must contain at least 1 elements")
        for index, item in enumerate(items):
            # Cortex measured the item's raw JSON as sent; its compact re-emission is the faithful local equivalent
            # (it differs only by insignificant whitespace and by how escapes are spelled).
            size = compact_json(item)[1]
            if size > MAX_MESSAGE_BYTES:
                _fail(ITEM_SIZE_EXCEEDS_LIMIT,
                      f"item {index} has size {size} bytes which exceeds the limit ({MAX_MESSAGE_BYTES} bytes)")
    _at_least_1(fields[kind]["batch_size"], f"{kind}: batch_size")
    _at_least_1(fields["workers"], "workers")
    if fields["timeout"] is not None:
        _at_least_1(fields["timeout"], "timeout")
    if (dead_letter := fields["sqs_dead_letter_queue"]) is not None:
        if not dead_letter["arn"]:
            _fail(CANNOT_BE_EMPTY, "sqs_dead_letter_queue: arn: cannot be empty")
        _at_least_1(dead_letter["max_receive_count"], "sqs_dead_letter_queue: max_receive_count")


def _at_least_1(value: int, key: str) -> None:
    if value < 1:
        _fail(AT_LEAST, f"{key}: must be greater than or equal to 1 (got {value})")


def _fail(kind: str, message: str) -> None:
    raise JobError(kind, message + SCHEMA_SUFFIX)


def _or(words: tuple[str, ...] | list[str]) -> str:
    """Cortex's StrsOr: "a", "a or b", "a, b, or c"."""
    if len(words) <= 2:
        return " or ".join(words)
    return ", ".join(words[:-1]) + ", or " + words[-1]


def _submission(fields: dict[str, Any]) -> Submission:
    kind = next(kind for kind in SOURCE_KINDS if fields[kind] is not None)
    body = fields[kind]
    if kind == "item_list":
        source = Source(kind, body["batch_size"], items=body["items"])
    else:
        source = Source(kind, body["batch_size"], s3_paths=tuple(body["s3_paths"] or ()),
                        includes=tuple(body["includes"] or ()), excludes=tuple(body["excludes"] or ()))
    dead_letter = fields["sqs_dead_letter_queue"]
    return Submission(fields["workers"], source, fields["config"], fields["timeout"],
                      None if dead_letter is None else DeadLetter(dead_letter["arn"], dead_letter["max_receive_count"]))


# --- Go's encoding/json (Go 1.14.7, Cortex v0.25's build) over a parsed document -----------------------------------


class _Number:
    """A JSON number as written: Go names the literal when it does not fit an int ("number 2.5")."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class _Object(list[tuple[str, Any]]):
    """A JSON object's members in order, duplicates kept (Go decodes each in turn)."""


@dataclass(frozen=True)
class _Struct:
    name: str  # reflect.Type.Name(): how Go 1.14 names the struct of a field in an error
    go: str  # the type as Go prints it
    fields: dict[str, Any]  # JSON key → type


@dataclass(frozen=True)
class _Slice:
    element: Any
    go: str


@dataclass(frozen=True)
class _Pointer:
    to: Any


_INT, _STRING, _RAW, _MAP = "int", "string", "json.RawMessage", "map[string]interface {}"
_Type = str | _Struct | _Slice | _Pointer
_INT64 = re.compile(r"-?[0-9]+")


def _lister(name: str) -> _Struct:
    strings = _Slice(_STRING, "[]string")
    return _Struct(name, f"schema.{name}", {"s3_paths": strings, "includes": strings, "excludes": strings,
                                            "batch_size": _INT})


# Cortex's schema.JobSubmission (spec.RuntimeJobConfig embedded: its fields are JobSubmission's in errors)
_SUBMISSION = _Struct("JobSubmission", "schema.JobSubmission", {
    "workers": _INT,
    "sqs_dead_letter_queue": _Pointer(_Struct("SQSDeadLetterQueue", "spec.SQSDeadLetterQueue",
                                              {"arn": _STRING, "max_receive_count": _INT})),
    "config": _MAP,
    "timeout": _Pointer(_INT),
    "item_list": _Pointer(_Struct("ItemList", "schema.ItemList",
                                  {"items": _Slice(_RAW, "[]json.RawMessage"), "batch_size": _INT})),
    "file_path_lister": _Pointer(_lister("FilePathLister")),
    "delimited_files": _Pointer(_lister("DelimitedFiles")),
})


def _parse_json(body: bytes) -> Any:
    """The document, numbers as written and objects as member lists; JobError when it is not JSON."""
    text = body.decode("utf-8", "replace")  # Go reads invalid UTF-8 in strings as U+FFFD; elsewhere: a syntax error
    if not text.strip(" \t\r\n"):
        raise JobError(NOT_CORTEX, "unexpected end of JSON input" + SCHEMA_SUFFIX)
    try:
        return json.loads(text, object_pairs_hook=_Object, parse_int=_Number, parse_float=_Number,
                          parse_constant=reject_constant)
    except json.JSONDecodeError as error:
        raise JobError(NOT_CORTEX, f"invalid JSON: {error}" + SCHEMA_SUFFIX) from None
    except NotJsonError as error:
        raise JobError(NOT_CORTEX, f"invalid JSON: {error}" + SCHEMA_SUFFIX) from None


class _GoDecoder:
    """json.Unmarshal into Cortex's types: structs become dicts; the first type mismatch is kept, in Go's words, while
    decoding goes on (as Go's saveError does). Unknown keys are skipped; keys match case-insensitively."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.field: tuple[str, str] | None = None  # (struct name, JSON key) of the field being decoded

    def decode(self, value: Any, kind: _Type, current: Any) -> Any:
        if isinstance(kind, _Pointer):
            return None if value is None else self.decode(value, kind.to, current)
        if value is None:  # null sets slices, maps and pointers to nil and leaves anything else as it was
            return None if kind in (_MAP, _RAW) or isinstance(kind, _Slice) else current
        if kind == _RAW:
            return _plain(value)
        if isinstance(kind, _Struct):
            return self._struct(value, kind, current)
        if kind == _MAP:
            if not isinstance(value, _Object):
                return self._mismatch(_describe(value), _MAP, current)
            merged = {} if current is None else current  # Go adds to a map it already has
            merged.update((key, _plain(member)) for key, member in value)
            return merged
        if isinstance(kind, _Slice):
            if not isinstance(value, list) or isinstance(value, _Object):
                return self._mismatch(_describe(value), kind.go, current)
            return [self.decode(member, kind.element, _zero_of(kind.element)) for member in value]
        if kind == _STRING:
            return value if isinstance(value, str) else self._mismatch(_describe(value), _STRING, current)
        if isinstance(value, _Number):  # into int
            if _INT64.fullmatch(value.text) and -(1 << 63) <= int(value.text) < 1 << 63:
                return int(value.text)
            return self._mismatch(f"number {value.text}", _INT, current)
        return self._mismatch(_describe(value), _INT, current)

    def _struct(self, value: Any, kind: _Struct, current: Any) -> Any:
        if not isinstance(value, _Object):
            return self._mismatch(_describe(value), kind.go, current)
        fields = _zero(kind) if current is None else current
        outer = self.field
        for key, member in value:
            name = _field_name(kind, key)
            if name is not None:
                self.field = (kind.name, name)
                fields[name] = self.decode(member, kind.fields[name], fields[name])
        self.field = outer
        return fields

    def _mismatch(self, described: str, go_type: str, current: Any) -> Any:
        if self.error is None:
            where = "Go value" if self.field is None else f"Go struct field {self.field[0]}.{self.field[1]}"
            self.error = f"json: cannot unmarshal {described} into {where} of type {go_type}"
        return current


def _field_name(kind: _Struct, key: str) -> str | None:
    """The field a key sets: an exact match, else Go's case-insensitive one."""
    if key in kind.fields:
        return key
    folded = key.casefold()
    return next((name for name in kind.fields if name.casefold() == folded), None)


def _describe(value: Any) -> str:
    """How Go names a JSON value that does not fit."""
    if isinstance(value, _Object):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    return "bool" if isinstance(value, bool) else "number"


def _zero(kind: _Struct) -> dict[str, Any]:
    return {name: _zero_of(field) for name, field in kind.fields.items()}


def _zero_of(kind: _Type) -> Any:
    return 0 if kind == _INT else "" if kind == _STRING else _zero(kind) if isinstance(kind, _Struct) else None


def _plain(value: Any) -> Any:
    """A parsed value as plain Python JSON values (later duplicate keys win, as in a Go map)."""
    if isinstance(value, _Object):
        return {key: _plain(member) for key, member in value}
    if isinstance(value, list):
        return [_plain(member) for member in value]
    if isinstance(value, _Number):
        return float(value.text) if any(c in value.text for c in ".eE") else int(value.text)
    return value
