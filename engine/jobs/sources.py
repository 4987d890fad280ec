"""A job's source as batches, as Cortex v0.25's enqueuer made them: item lists sliced, files listed (local or S3) by
plain prefix and gobwas globs, delimited JSON files read as streams of values; each batch a compact JSON array text."""
from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.jobs.submission import (
    MAX_MESSAGE_BYTES,
    NOT_CORTEX,
    TOO_FEW_ELEMENTS,
    JobError,
    NotJsonError,
    Source,
    compact_json,
    reject_constant,
)
from engine.models.stores import s3_client

READ_CHUNK_BYTES = 1 << 20  # how much of a delimited file is read at a time (Cortex: 32 MiB; less keeps memory flat)

INVALID_S3_PATH = "aws.invalid_s3_path"
INVALID_LOCAL_PATH = "batchapi.invalid_local_path"  # engine's: Cortex read S3 only
NO_S3_FILES_FOUND = "batchapi.no_s3_files_found"
MESSAGE_EXCEEDS_MAX_SIZE = "batchapi.message_exceeds_max_size"
NO_DATA_FOUND = "batchapi.no_data_found_in_job_submission"
S3_UNAVAILABLE = "batchapi.s3_unavailable"  # engine's: boto3 is not installed

NO_DATA_MESSAGE = "unable to enqueue batches because no data was found"
EMPTY_FILES_HINT = ("please verify that the files are not empty (the files being read can be retrieved by providing "
                    "`dryRun=true` query param with your job submission")  # sic: Cortex never closed the parenthesis


class EnqueueError(Exception):
    """A problem found while making batches: the job ends status_enqueue_failed with this message."""

    def __init__(self, message: str, kind: str = NOT_CORTEX) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind  # Cortex's error kind (NO_DATA_FOUND tells "no data" from a failure)


def check_paths(source: Source, root: Path) -> None:
    """Check 9 of Cortex's submission checks for file_path_lister/delimited_files: s3_paths given, globs compile, each
    path valid, some file matches; JobError prefixed with the source's key. No-op for item_list."""
    if source.kind == "item_list":
        return
    with _prefixed(source.kind):
        if not source.s3_paths:
            raise JobError(TOO_FEW_ELEMENTS, "s3_paths: must contain at least 1 elements")
        for key, patterns in (("includes", source.includes), ("excludes", source.excludes)):
            for pattern in patterns:
                try:
                    compile_glob(pattern)
                except ValueError as error:
                    raise JobError(NOT_CORTEX, f"{key}: {pattern}: {error}") from None
        for path in source.s3_paths:
            _location(path, root)
        files = _Files(source, root)
        if not any(next(files.listing(path), None) for path in source.s3_paths):  # stops at the first match
            raise JobError(NO_S3_FILES_FOUND, "no s3 files match search criteria")


def list_files(source: Source, root: Path) -> list[str]:
    """Every file the source names, in Cortex's order, as the user spelled its scheme (s3://bucket/key,
    file:///abs/path, or the path as given followed by the file's relative name): what ?dryRun=true prints."""
    if source.kind == "item_list":
        return []
    with _prefixed(source.kind):
        files = _Files(source, root)
        names = [file.name for path in source.s3_paths for file in files.listing(path)]
        if not names:
            raise JobError(NO_S3_FILES_FOUND, "no s3 files match search criteria")
    return names


def batches(source: Source, root: Path) -> Iterator[str]:
    """The source's batches in order, each a compact JSON array text (predict's payload once json.loads'ed).

    EnqueueError with Cortex's message when a batch or item is over MAX_MESSAGE_BYTES, a delimited file holds a
    malformed value, or there is no data at all. Streams: holds one batch, plus one read chunk of a delimited file."""
    count = 0
    try:
        for batch in _item_batches(source) if source.kind == "item_list" else _file_batches(source, root):
            yield batch
            count += 1
    except JobError as error:
        raise EnqueueError(error.message, error.kind) from None
    if count == 0:
        hint = f"\n{EMPTY_FILES_HINT}" if source.kind == "delimited_files" else ""
        raise EnqueueError(NO_DATA_MESSAGE + hint, NO_DATA_FOUND)


def _item_batches(source: Source) -> Iterator[str]:
    items, size = source.items or [], source.batch_size
    for index, start in enumerate(range(0, len(items), size)):
        end = min(start + size, len(items))
        where = f"item {index}" if size == 1 else f"items with index between {start} to {end}"
        yield _batch(items[start:end], f"{where}: ")


def _file_batches(source: Source, root: Path) -> Iterator[str]:
    files = _Files(source, root)
    batch: list[Any] = []
    for path in source.s3_paths:
        for file in files.listing(path):
            if source.kind == "file_path_lister":
                batch.append(file.name)
                if len(batch) == source.batch_size:
                    yield _batch(batch)
                    batch = []
                continue
            for value in _values(file.name, files.read(file)):
                batch.append(value)
                if len(batch) == source.batch_size:
                    yield _batch(batch, f"{file.name}: ")
                    batch = []
    if batch:
        yield _batch(batch)


def _batch(values: list[Any], where: str = "") -> str:
    text, size = compact_json(values)
    if size > MAX_MESSAGE_BYTES:
        raise JobError(MESSAGE_EXCEEDS_MAX_SIZE, where + _too_large(size))
    return text


def _too_large(size: int | None) -> str:
    size_of = "" if size is None else f" of {size} bytes"
    return (f"cannot enqueue message because its size{size_of} exceeds the {MAX_MESSAGE_BYTES} bytes limit; use a "
            "smaller batch size or reduce the size of each of item in the batch")


@contextmanager
def _prefixed(key: str) -> Iterator[None]:
    """Prefix the message of a JobError raised inside with `<key>: `, as Cortex wrapped check 9's errors."""
    try:
        yield
    except JobError as error:
        raise JobError(error.kind, f"{key}: {error.message}") from None


# --- listing ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Location:
    """Where one s3_paths entry lists: a directory (local) or a bucket (S3), and the prefix names must start with."""

    spelled: str  # the entry as the user wrote it, up to its last "/": file names are this plus their relative path
    prefix: str  # local: the start of the names in `directory`; S3: the key prefix
    directory: Path | None = None
    bucket: str = ""


@dataclass(frozen=True)
class _File:
    name: str  # what globs see and what items hold
    path: Path | None = None
    bucket: str = ""
    key: str = ""


_S3_EXAMPLE = "s3://cortex-examples/pytorch/iris-classifier/weights.pth"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _location(path: str, root: Path) -> _Location:
    """Parse an s3_paths entry: s3://bucket/prefix, or a local prefix (relative to root, absolute, or file://)."""
    if path.startswith("s3://"):
        bucket, _, key = path.removeprefix("s3://").partition("/")
        if not bucket:
            raise JobError(INVALID_S3_PATH, f'"{path}" is not a valid s3 path (e.g. {_S3_EXAMPLE} is a valid s3 path)')
        return _Location(f"s3://{bucket}/", key, bucket=bucket)
    local = path
    if path.startswith("file://"):
        host, slash, rest = path.removeprefix("file://").partition("/")
        local = slash + rest if host in ("", "localhost") else ""
    if not local or _SCHEME.match(local):
        raise JobError(INVALID_LOCAL_PATH, f'"{path}" is not a valid local path (e.g. data/images/, /mnt/data/images/ '
                                           "or file:///mnt/data/images/ is a valid local path)")
    name = local.rpartition("/")[2]
    spelled = path.removesuffix(name)
    if name in (".", ".."):  # a directory named by its dots: list in it
        spelled, name = path + "/", ""
    directory = local.removesuffix(name) if name else local
    return _Location(spelled, name, directory=root / directory if directory else root)


class _Files:
    """The files of a source's s3_paths entries (Cortex's plain-prefix listing, then its globs), and their bytes."""

    def __init__(self, source: Source, root: Path) -> None:
        self.root = root
        try:
            self.includes = [compile_glob(pattern) for pattern in source.includes]
            self.excludes = [compile_glob(pattern) for pattern in source.excludes]
        except ValueError as error:
            raise JobError(NOT_CORTEX, f"invalid glob pattern: {error}") from None
        self._client: Any = None

    def listing(self, path: str) -> Iterator[_File]:
        """The files under one entry that pass the globs, in S3's (code point) order."""
        location = _location(path, self.root)
        try:
            listed = self._s3(location) if location.bucket else _local(location)
            for file in listed:
                if self._wanted(file.name):
                    yield file
        except _read_errors() as error:
            raise JobError(NOT_CORTEX, f"{path}: {error}") from None

    def read(self, file: _File) -> Iterator[bytes]:
        """A file's bytes, READ_CHUNK_BYTES at a time."""
        try:
            if file.path is not None:
                with file.path.open("rb") as stream:
                    while chunk := stream.read(READ_CHUNK_BYTES):
                        yield chunk
                return
            body = self.client().get_object(Bucket=file.bucket, Key=file.key)["Body"]
            try:
                while chunk := body.read(READ_CHUNK_BYTES):
                    yield chunk
            finally:
                body.close()
        except _read_errors() as error:
            raise JobError(NOT_CORTEX, f"{file.name}: {error}") from None

    def client(self) -> Any:
        if self._client is None:
            try:
                self._client = s3_client()
            except ImportError:
                raise JobError(S3_UNAVAILABLE, "s3:// paths need boto3: pip install 'engine[s3]'") from None
        return self._client

    def _wanted(self, name: str) -> bool:
        """Cortex's filter on the full name: with includes, one must match; then no exclude may."""
        if self.includes and not any(pattern.match(name) for pattern in self.includes):
            return False
        return not any(pattern.match(name) for pattern in self.excludes)

    def _s3(self, location: _Location) -> Iterator[_File]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=location.prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):  # a "directory" marker object
                    yield _File(f"s3://{location.bucket}/{obj['Key']}", bucket=location.bucket, key=obj["Key"])


def _local(location: _Location) -> Iterator[_File]:
    """Files in the directory whose names start with the prefix, and every file under such directories, sorted."""
    assert location.directory is not None
    found: list[tuple[str, Path]] = []
    try:
        entries = [entry for entry in os.scandir(location.directory) if entry.name.startswith(location.prefix)]
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.is_dir():
            found += [(f"{entry.name}/{relative}", path) for relative, path in _walk(Path(entry.path))]
        elif entry.is_file():
            found.append((entry.name, Path(entry.path)))
    for relative, path in sorted(found):
        yield _File(location.spelled + relative, path)


def _walk(top: Path) -> Iterator[tuple[str, Path]]:
    """Every file under `top` with its path relative to it; symlinks followed, each real directory once (no loops)."""
    seen: set[tuple[int, int]] = set()

    def fail(error: OSError) -> None:
        raise error

    for current, directories, names in os.walk(top, followlinks=True, onerror=fail):
        stat = os.stat(current)
        if (stat.st_dev, stat.st_ino) in seen:
            directories[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        for name in names:
            path = Path(current, name)
            if path.is_file():  # not a dangling link, socket or pipe
                yield path.relative_to(top).as_posix(), path


def _read_errors() -> tuple[type[Exception], ...]:
    """What listing or reading a file may raise: the filesystem's errors and, with boto3, AWS's."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return (OSError,)
    return OSError, BotoCoreError, ClientError


# --- delimited files -------------------------------------------------------------------------------------------------


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder(parse_constant=reject_constant)
_LOOKAHEAD = 8  # a value or error this close to the end of what was read may go on in the next chunk ("12" + "3")


def _values(name: str, chunks: Iterator[bytes]) -> Iterator[Any]:
    """The JSON values of a delimited file (a stream of values, any whitespace between them); EnqueueError with
    Cortex's `item <i>: ` (i counting within the file) for a malformed or oversized one."""
    utf8 = codecs.getincrementaldecoder("utf-8")("replace")
    text, pos, index, final = "", 0, 0, False
    line, column = 1, 1  # where text[0] is in the file
    while True:
        if (blank := _WHITESPACE.match(text, pos)) is not None:
            pos = blank.end()
        if pos < len(text):
            try:
                value, end = _DECODER.raw_decode(text, pos)
            except json.JSONDecodeError as error:
                if final or (error.pos < len(text) - _LOOKAHEAD and not error.msg.startswith("Unterminated")):
                    where = _position(text, error.pos, line, column)
                    raise EnqueueError(f"{name}: item {index}: {error.msg}: {where}") from None
            except NotJsonError as error:
                raise EnqueueError(f"{name}: item {index}: {error}") from None
            else:
                raw = text[pos:end]
                size = len(raw) if raw.isascii() else len(raw.encode("utf-8", "surrogatepass"))
                if size > MAX_MESSAGE_BYTES:  # Cortex measured the value as written
                    raise EnqueueError(f"{name}: item {index}: {_too_large(size)}", MESSAGE_EXCEEDS_MAX_SIZE)
                if final or end < len(text) - _LOOKAHEAD:
                    yield value
                    index, pos = index + 1, end
                    continue
        if final:
            return
        line, column = _advance(text[:pos], line, column)
        text, pos = text[pos:], 0
        if len(text) > MAX_MESSAGE_BYTES + _LOOKAHEAD:  # one value, unfinished and already too large: stop reading
            raise EnqueueError(f"{name}: item {index}: {_too_large(None)}", MESSAGE_EXCEEDS_MAX_SIZE)
        chunk = next(chunks, None)
        final = chunk is None
        text += utf8.decode(chunk or b"", final=final)


def _advance(consumed: str, line: int, column: int) -> tuple[int, int]:
    """The line and column just after `consumed`, which starts at (line, column)."""
    newlines = consumed.count("\n")
    if newlines:
        return line + newlines, len(consumed) - consumed.rfind("\n")
    return line, column + len(consumed)


def _position(text: str, pos: int, line: int, column: int) -> str:
    line, column = _advance(text[:pos], line, column)
    return f"line {line} column {column}"


# --- gobwas/glob v0.2.3, '/' as separator --------------------------------------------------------------------------


def compile_glob(pattern: str) -> re.Pattern[str]:
    """A gobwas glob (Cortex's includes/excludes) as an anchored regex: `*` within a segment, `**` across them, `?`,
    `[abc]`, `[a-z]`, `[!..]`, `{a,b}`, `\\` escapes; ValueError with gobwas's reason for a bad pattern."""
    return re.compile(r"\A" + _GlobParser(_glob_tokens(pattern)).parse() + r"\Z", re.DOTALL)


def _glob_tokens(pattern: str) -> Iterator[tuple[str, str]]:
    """gobwas's lexer: tokens, ValueError where it reports an error (as late as gobwas does)."""
    pos, terms = 0, 0
    while pos < len(pattern):
        char = pattern[pos]
        pos += 1
        if char == "{":
            terms += 1
            yield "terms_open", char
        elif char == "," and terms:
            yield "separator", char
        elif char == "}" and terms:
            terms -= 1
            yield "terms_close", char
        elif char == "[":
            tokens, pos = _glob_range(pattern, pos)
            yield from tokens
        elif char == "?":
            yield "single", char
        elif char == "*":
            if pattern.startswith("*", pos):
                pos += 1
                yield "super", "**"
            else:
                yield "any", char
        else:
            text, pos = _glob_text(pattern, pos - 1, "?*[{},]" if terms else "?*[{")
            if text:
                yield "text", text
    yield "eof", ""


def _glob_range(pattern: str, pos: int) -> tuple[list[tuple[str, str]], int]:
    tokens = [("range_open", "[")]
    want_hi = want_close = seen_not = False
    while True:
        if pos == len(pattern):
            raise ValueError("unexpected end of input")
        char = pattern[pos]
        pos += 1
        if want_close:
            if char != "]":
                raise ValueError("expected close range character")
            tokens.append(("range_close", char))
            return tokens, pos
        if want_hi:
            tokens.append(("range_hi", char))
            want_close = True
        elif not seen_not and char == "!":
            tokens.append(("not", char))
            seen_not = True
        elif pattern.startswith("-", pos):
            pos += 1
            tokens.append(("range_lo", char))
            want_hi = True
        else:
            text, pos = _glob_text(pattern, pos - 1, "]")
            if text:
                tokens.append(("text", text))
            want_close = True


def _glob_text(pattern: str, pos: int, breakers: str) -> tuple[str, int]:
    """Literal text up to a breaker; `\\` makes the next character literal."""
    text: list[str] = []
    escaped = False
    while pos < len(pattern):
        char = pattern[pos]
        pos += 1
        if not escaped:
            if char == "\\":
                escaped = True
                continue
            if char in breakers:
                pos -= 1
                break
        escaped = False
        text.append(char)
    return "".join(text), pos


class _GlobParser:
    """gobwas's parser, building the regex: a pattern is a sequence; {a,b} an alternation of patterns."""

    def __init__(self, tokens: Iterator[tuple[str, str]]) -> None:
        self.tokens = tokens

    def parse(self) -> str:
        stack: list[list[list[str]]] = [[[]]]  # open alternations, each a list of patterns (lists of regex parts)
        for kind, raw in self.tokens:
            current = stack[-1][-1]
            if kind == "eof":
                break
            if kind == "text":
                current.append(re.escape(raw))
            elif kind in _GLOB_PARTS:
                current.append(_GLOB_PARTS[kind])
            elif kind == "range_open":
                current.append(self._range())
            elif kind == "terms_open":
                stack.append([[]])
            elif kind == "separator":
                stack[-1].append([])
            elif kind == "terms_close":
                alternatives = stack.pop()
                stack[-1][-1].append("(?:" + "|".join("".join(part) for part in alternatives) + ")")
        while len(stack) > 1:  # gobwas closes what is left open at the end ("{a,b" is "{a,b}")
            alternatives = stack.pop()
            stack[-1][-1].append("(?:" + "|".join("".join(part) for part in alternatives) + ")")
        return "".join(stack[0][0])

    def _range(self) -> str:
        negate, low, high, chars = False, "", "", ""
        for kind, raw in self.tokens:
            if kind == "not":
                negate = True
            elif kind == "range_lo":
                low = raw
            elif kind == "range_hi":
                high = raw
                if high < low:
                    raise ValueError(f"hi character '{high}' should be greater than lo '{low}'")
            elif kind == "text":
                chars = raw
            elif kind == "range_close":
                if bool(chars) == bool(low and high):
                    raise ValueError("could not parse range")
                members = "".join(map(re.escape, chars)) if chars else f"{re.escape(low)}-{re.escape(high)}"
                return f"[{'^' if negate else ''}{members}]"
        raise ValueError("unexpected end")


_GLOB_PARTS = {"any": "[^/]*", "super": ".*", "single": "[^/]"}
