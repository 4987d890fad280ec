"""Job submissions as Cortex v0.25 checked them, and their sources as batches: item lists, local files, S3 (moto)."""
from __future__ import annotations

import json
import os
import re
import sys

import pytest
from support import fresh_bucket, moto_s3

from engine.jobs import sources
from engine.jobs.sources import EnqueueError, batches, check_paths, compile_glob, list_files
from engine.jobs.submission import (
    MAX_MESSAGE_BYTES,
    MAX_SUBMISSION_BYTES,
    SCHEMA_SUFFIX,
    DeadLetter,
    JobError,
    Source,
    Submission,
    parse_bool,
    parse_submission,
)

ITEMS = {"items": [1, 2, 3], "batch_size": 2}
TOO_LARGE = ("cannot enqueue message because its size of {} bytes exceeds the 256000 bytes limit; use a smaller batch "
             "size or reduce the size of each of item in the batch")
NO_DATA = "unable to enqueue batches because no data was found"
EMPTY_FILES_HINT = ("please verify that the files are not empty (the files being read can be retrieved by providing "
                    "`dryRun=true` query param with your job submission")
INVALID_S3 = ('"{}" is not a valid s3 path (e.g. s3://cortex-examples/pytorch/iris-classifier/weights.pth is a valid '
              's3 path)')


def body(**fields) -> bytes:
    return json.dumps(fields).encode()


def rejected(data: bytes | dict) -> JobError:
    with pytest.raises(JobError) as caught:
        parse_submission(data if isinstance(data, bytes) else json.dumps(data).encode())
    assert str(caught.value) == caught.value.message
    return caught.value


def assert_rejected(data: bytes | dict, kind: str, message: str, suffix: bool = True) -> None:
    error = rejected(data)
    assert (error.kind, error.message) == (kind, message + (SCHEMA_SUFFIX if suffix else ""))


# --- checks 1–8, in Cortex's order ----------------------------------------------------------------------------------


def test_a_valid_submission_with_every_field():
    submission = parse_submission(body(workers=2, item_list=ITEMS, config={"a": {"b": 1}}, timeout=60,
                                       sqs_dead_letter_queue={"arn": "arn:aws:sqs:x", "max_receive_count": 3}))
    assert submission == Submission(2, Source("item_list", 2, items=[1, 2, 3]), {"a": {"b": 1}}, 60,
                                    DeadLetter("arn:aws:sqs:x", 3))


@pytest.mark.parametrize(("data", "kind", "message"), [
    ({"workers": 1}, "batchapi.specify_exactly_one_key",
     "specify exactly one of the following keys: item_list, file_path_lister, or delimited_files"),
    ({"workers": 1, "item_list": None}, "batchapi.specify_exactly_one_key",
     "specify exactly one of the following keys: item_list, file_path_lister, or delimited_files"),
    ({"workers": 1, "delimited_files": {}, "item_list": {}}, "batchapi.conflicting_fields",
     "please specify either the item_list or delimited_files field (but not more than one at the same time)"),
    ({"workers": 1, "file_path_lister": {}, "item_list": ITEMS, "delimited_files": {}}, "batchapi.conflicting_fields",
     "please specify either the item_list, file_path_lister, or delimited_files field (but not more than one at the "
     "same time)"),
    ({"workers": 0, "item_list": {"batch_size": 0}}, "configreader.too_few_elements",
     "items: must contain at least 1 elements"),
    ({"workers": 0, "item_list": {"items": [], "batch_size": 1}}, "configreader.too_few_elements",
     "items: must contain at least 1 elements"),
    ({"workers": 0, "item_list": {"items": [1, "x" * 255999], "batch_size": 0}}, "batchapi.item_size_exceeds_limit",
     "item 1 has size 256001 bytes which exceeds the limit (256000 bytes)"),
    ({"workers": 0, "item_list": {"items": [1], "batch_size": 0}}, "configreader.must_be_greater_than_or_equal_to",
     "item_list: batch_size: must be greater than or equal to 1 (got 0)"),
    ({"workers": 0, "file_path_lister": {"batch_size": -2}}, "configreader.must_be_greater_than_or_equal_to",
     "file_path_lister: batch_size: must be greater than or equal to 1 (got -2)"),
    ({"workers": 0, "delimited_files": {}}, "configreader.must_be_greater_than_or_equal_to",
     "delimited_files: batch_size: must be greater than or equal to 1 (got 0)"),
    ({"item_list": ITEMS, "timeout": 0}, "configreader.must_be_greater_than_or_equal_to",
     "workers: must be greater than or equal to 1 (got 0)"),
    ({"workers": None, "item_list": ITEMS}, "configreader.must_be_greater_than_or_equal_to",
     "workers: must be greater than or equal to 1 (got 0)"),
    ({"workers": 1, "item_list": ITEMS, "timeout": -5, "sqs_dead_letter_queue": {}},
     "configreader.must_be_greater_than_or_equal_to", "timeout: must be greater than or equal to 1 (got -5)"),
    ({"workers": 1, "item_list": ITEMS, "sqs_dead_letter_queue": {"max_receive_count": 0}},
     "configreader.cannot_be_empty", "sqs_dead_letter_queue: arn: cannot be empty"),
    ({"workers": 1, "item_list": ITEMS, "sqs_dead_letter_queue": {"arn": "a"}},
     "configreader.must_be_greater_than_or_equal_to",
     "sqs_dead_letter_queue: max_receive_count: must be greater than or equal to 1 (got 0)"),
])
def test_checks_in_cortex_order_and_words(data, kind, message):
    assert_rejected(data, kind, message)


def test_an_item_of_exactly_the_limit_passes_and_its_size_is_compact_utf8():
    parse_submission(body(workers=1, item_list={"items": ["x" * (MAX_MESSAGE_BYTES - 2)], "batch_size": 1}))
    spaced = '{"workers": 1, "item_list": {"items": [ [ 1 ,  2 ] , "é"], "batch_size": 1}}'.encode()
    assert parse_submission(spaced).source.items == [[1, 2], "é"]
    assert_rejected(body(workers=1, item_list={"items": ["é" * 128000], "batch_size": 1}),
                    "batchapi.item_size_exceeds_limit",
                    "item 0 has size 256002 bytes which exceeds the limit (256000 bytes)")


def test_a_timeout_of_null_is_no_timeout():
    assert parse_submission(body(workers=1, item_list=ITEMS, timeout=None)).timeout is None


# --- decoding as Go's encoding/json did -------------------------------------------------------------------------------


def test_unknown_keys_are_ignored_and_keys_match_case_insensitively():
    submission = parse_submission(body(workers=3, Item_List={"ITEMS": [1], "batch_size": 1, "extra": [1]},
                                       surprise={"x": 1}, kind="anything"))
    assert submission.workers == 3 and submission.source == Source("item_list", 1, items=[1])


def test_a_repeated_key_decodes_again_into_the_same_field():
    data = b'{"workers": 1, "workers": 2, "item_list": {"items": [1]}, "item_list": {"batch_size": 5}}'
    submission = parse_submission(data)
    assert submission.workers == 2 and submission.source == Source("item_list", 5, items=[1])


@pytest.mark.parametrize(("data", "message"), [
    ('{"workers": "1"}', "json: cannot unmarshal string into Go struct field JobSubmission.workers of type int"),
    ('{"workers": 2.0}', "json: cannot unmarshal number 2.0 into Go struct field JobSubmission.workers of type int"),
    ('{"workers": 2.5}', "json: cannot unmarshal number 2.5 into Go struct field JobSubmission.workers of type int"),
    ('{"workers": 1e3}', "json: cannot unmarshal number 1e3 into Go struct field JobSubmission.workers of type int"),
    ('{"workers": 9223372036854775808}',
     "json: cannot unmarshal number 9223372036854775808 into Go struct field JobSubmission.workers of type int"),
    ('{"workers": true}', "json: cannot unmarshal bool into Go struct field JobSubmission.workers of type int"),
    ('{"workers": [1]}', "json: cannot unmarshal array into Go struct field JobSubmission.workers of type int"),
    ('{"workers": {}}', "json: cannot unmarshal object into Go struct field JobSubmission.workers of type int"),
    ('{"timeout": "60"}', "json: cannot unmarshal string into Go struct field JobSubmission.timeout of type int"),
    ('{"config": [1]}',
     "json: cannot unmarshal array into Go struct field JobSubmission.config of type map[string]interface {}"),
    ('{"item_list": "x"}',
     "json: cannot unmarshal string into Go struct field JobSubmission.item_list of type schema.ItemList"),
    ('{"item_list": {"items": {}}}',
     "json: cannot unmarshal object into Go struct field ItemList.items of type []json.RawMessage"),
    ('{"item_list": {"items": [1], "batch_size": "2"}}',
     "json: cannot unmarshal string into Go struct field ItemList.batch_size of type int"),
    ('{"file_path_lister": {"s3_paths": "s3://b/x"}}',
     "json: cannot unmarshal string into Go struct field FilePathLister.s3_paths of type []string"),
    ('{"delimited_files": {"s3_paths": ["s3://b/x", 5]}}',
     "json: cannot unmarshal number into Go struct field DelimitedFiles.s3_paths of type string"),
    ('{"delimited_files": {"excludes": [null, false]}}',
     "json: cannot unmarshal bool into Go struct field DelimitedFiles.excludes of type string"),
    ('{"sqs_dead_letter_queue": {"arn": 1}}',
     "json: cannot unmarshal number into Go struct field SQSDeadLetterQueue.arn of type string"),
    ('{"sqs_dead_letter_queue": {"arn": "a", "max_receive_count": 1.5}}',
     "json: cannot unmarshal number 1.5 into Go struct field SQSDeadLetterQueue.max_receive_count of type int"),
    ('{"sqs_dead_letter_queue": []}',
     "json: cannot unmarshal array into Go struct field JobSubmission.sqs_dead_letter_queue of type "
     "spec.SQSDeadLetterQueue"),
    ('[]', "json: cannot unmarshal array into Go value of type schema.JobSubmission"),
    ('"x"', "json: cannot unmarshal string into Go value of type schema.JobSubmission"),
    # the first mismatch in the document wins, and it wins over the checks
    ('{"item_list": {"batch_size": "a"}, "workers": "b"}',
     "json: cannot unmarshal string into Go struct field ItemList.batch_size of type int"),
])
def test_type_mismatches_in_go_words(data, message):
    assert_rejected(data.encode(), "error", message)


def test_null_is_nothing_for_values_and_nil_for_pointers():
    submission = parse_submission(b'{"workers": 2, "item_list": {"items": [null, 1], "batch_size": 1}, '
                                  b'"config": null, "sqs_dead_letter_queue": null}')
    assert submission.source.items == [None, 1] and submission.config is None and submission.dead_letter is None
    assert_rejected(b"null", "batchapi.specify_exactly_one_key",
                    "specify exactly one of the following keys: item_list, file_path_lister, or delimited_files")


@pytest.mark.parametrize(("data", "message"), [
    (b"", "unexpected end of JSON input"),
    (b" \n", "unexpected end of JSON input"),
    (b'{"workers": 1,}', "invalid JSON: Expecting property name enclosed in double quotes: line 1 column 15 (char 14)"),
    (b'{"workers": 1} x', "invalid JSON: Extra data: line 1 column 16 (char 15)"),
    (b'{"item_list": {"items": [NaN]}}', "invalid JSON: invalid character 'N' looking for beginning of value"),
    (b'{"item_list": {"items": [-Infinity]}}', "invalid JSON: invalid character 'I' in numeric literal"),
    (b"[" * 5000 + b"]" * 5000, "invalid JSON: nested too deeply"),
])
def test_invalid_json(data, message):
    assert_rejected(data, "error", message)


def test_the_body_limit():
    padding = b" " * (MAX_SUBMISSION_BYTES - len(body(workers=1, item_list=ITEMS)))
    assert parse_submission(body(workers=1, item_list=ITEMS) + padding).workers == 1
    assert_rejected(body(workers=1, item_list=ITEMS) + padding + b" ", "error", "http: request body too large",
                    suffix=False)


@pytest.mark.parametrize(("text", "value"), [
    ("1", True), ("t", True), ("T", True), ("TRUE", True), ("true", True), ("True", True),
    ("0", False), ("f", False), ("F", False), ("FALSE", False), ("false", False), ("False", False),
    ("yes", False), ("on", False), ("tRUE", False), ("", False), (None, False), (" true", False),
])
def test_parse_bool_is_go_strconv(text, value):
    assert parse_bool(text) is value


@pytest.mark.parametrize("data", [
    {"workers": 1, "item_list": {"items": [{"a": [1, None]}, "é", 2.5], "batch_size": 2}},
    {"workers": 4, "file_path_lister": {"s3_paths": ["s3://b/p"], "includes": ["**.jpg"], "batch_size": 3},
     "timeout": 10, "config": {"k": "v"}, "sqs_dead_letter_queue": {"arn": "x", "max_receive_count": 2}},
    {"workers": 1, "delimited_files": {"s3_paths": ["data/"], "excludes": ["*.tmp"], "batch_size": 1}},
])
def test_to_json_round_trips(data):
    submission = parse_submission(json.dumps(data).encode())
    stored = json.loads(json.dumps(submission.to_json()))
    assert Submission.from_json(stored) == submission
    assert parse_submission(json.dumps(stored).encode()) == submission
    assert set(stored) == {"workers", "sqs_dead_letter_queue", "config", "timeout", submission.source.kind}


# --- item_list batches ------------------------------------------------------------------------------------------------


def item_batches(items: list, batch_size: int) -> list[str]:
    return list(batches(Source("item_list", batch_size, items=items), root=None))


def test_item_list_batches_are_compact_slices_with_a_shorter_last():
    items = [{"a": 1, "b": [1, 2]}, "é", None, 2.5, [], True, 7]
    assert item_batches(items, 3) == ['[{"a":1,"b":[1,2]},"é",null]', "[2.5,[],true]", "[7]"]
    assert item_batches(items, 7) == [json.dumps(items, ensure_ascii=False, separators=(",", ":"))]
    assert [json.loads(text) for text in item_batches(items, 1)] == [[item] for item in items]


def test_an_item_list_batch_over_the_limit():
    item = "x" * (MAX_MESSAGE_BYTES - 2)  # a legal item; as a batch of one it is 2 bytes over
    with pytest.raises(EnqueueError) as caught:
        item_batches([1, 2, 3, item], 1)
    assert caught.value.message == "item 3: " + TOO_LARGE.format(MAX_MESSAGE_BYTES + 2)
    assert caught.value.kind == "batchapi.message_exceeds_max_size"
    with pytest.raises(EnqueueError) as caught:
        item_batches([1, 2, "x" * 200000, "y" * 100000, 5], 2)
    assert str(caught.value) == "items with index between 2 to 4: " + TOO_LARGE.format(300007)


def test_batches_is_a_lazy_generator():
    produced = batches(Source("item_list", 1, items=[1, "x" * MAX_MESSAGE_BYTES]), root=None)
    assert next(produced) == "[1]"
    with pytest.raises(EnqueueError):
        next(produced)


# --- globs (gobwas/glob, '/' separator) -------------------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "matches", "misses"), [
    ("*.json", ["a.json", ".json"], ["d/a.json", "a.jsonl"]),
    ("**.json", ["a.json", "s3://b/d/e/a.json"], ["a.json.gz"]),
    ("s3://b/*/*.jpg", ["s3://b/x/y.jpg"], ["s3://b/x/y/z.jpg", "s3://b/y.jpg"]),
    ("s3://b/**/*.jpg", ["s3://b/x/y.jpg", "s3://b/x/y/z.jpg"], ["s3://b/y.jpg"]),
    ("?.txt", ["a.txt"], ["/.txt", "ab.txt"]),
    ("[abc].txt", ["a.txt", "c.txt"], ["d.txt"]),
    ("[!abc].txt", ["d.txt", "/.txt"], ["a.txt"]),
    ("[a-c]?", ["b1"], ["d1"]),
    ("[!a-c]", ["d"], ["b"]),
    ("[ab-]", ["-", "a"], ["c"]),
    ("{a,b,}x", ["ax", "bx", "x"], ["cx"]),
    ("{a,{b,c}d}", ["a", "bd", "cd"], ["b"]),
    ("{a,b", ["a", "b"], ["{a,b"]),  # gobwas closes an unclosed {
    ("a}b,c]", ["a}b,c]"], []),  # outside {} and [], these are literal
    ("\\*\\?\\[x\\]", ["*?[x]"], ["a?[x]"]),
    ("a.b+c(d)^$", ["a.b+c(d)^$"], ["axb+c(d)^$"]),
    ("", [""], ["a"]),
    ("***", ["a/b"], []),
])
def test_glob_matching(pattern, matches, misses):
    compiled = compile_glob(pattern)
    assert [name for name in matches if compiled.match(name)] == matches
    assert [name for name in misses if compiled.match(name)] == []


@pytest.mark.parametrize(("pattern", "reason"), [
    ("[", "unexpected end of input"),
    ("[abc", "unexpected end of input"),
    ("[a-", "unexpected end of input"),
    ("[a-z", "unexpected end of input"),
    ("[a-zA-Z]", "expected close range character"),
    ("[]", "could not parse range"),
    ("[!]]", "could not parse range"),
    ("[z-a]", "hi character 'a' should be greater than lo 'z'"),
    ("[z-a]x[", "hi character 'a' should be greater than lo 'z'"),  # gobwas stops at the first problem
])
def test_bad_globs(pattern, reason):
    with pytest.raises(ValueError, match=f"^{reason}$"):
        compile_glob(pattern)


# --- local files ------------------------------------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "project"
    for name, text in {
        "data/img_1.png": "1", "data/img/b.png": "2", "data/img/a/c.png": "3", "data/img/a.jpg": "4",
        "data/img2.png": "5", "data/other.png": "6", "data/imgs/.hidden": "7",
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "data/img/empty").mkdir()
    return root


def lister(*paths, includes=(), excludes=(), batch_size=2, kind="file_path_lister") -> Source:
    return Source(kind, batch_size, s3_paths=paths, includes=includes, excludes=excludes)


def test_a_local_prefix_lists_like_s3(project):
    assert list_files(lister("data/img"), project) == [
        "data/img/a.jpg", "data/img/a/c.png", "data/img/b.png", "data/img2.png", "data/img_1.png", "data/imgs/.hidden"]
    assert list_files(lister("data/img/"), project) == ["data/img/a.jpg", "data/img/a/c.png", "data/img/b.png"]
    assert list_files(lister("data/img/a"), project) == ["data/img/a.jpg", "data/img/a/c.png"]
    assert list_files(lister("./data/o"), project) == ["./data/other.png"]
    assert list_files(lister("data/img/b.png"), project) == ["data/img/b.png"]


def test_absolute_and_file_urls_keep_their_spelling(project):
    absolute = f"{project}/data/img/"
    assert list_files(lister(absolute), project.parent) == [f"{absolute}a.jpg", f"{absolute}a/c.png",
                                                             f"{absolute}b.png"]
    url = f"file://{project}/data/img/a"
    assert list_files(lister(url), project.parent) == [f"{url}.jpg", f"{url}/c.png"]
    assert list_files(lister(f"file://localhost{project}/data/o"), project) == [
        f"file://localhost{project}/data/other.png"]


def test_globs_apply_to_the_name_as_spelled(project):
    assert list_files(lister("data/", includes=["data/*.png"]), project) == [
        "data/img2.png", "data/img_1.png", "data/other.png"]
    assert list_files(lister("data/", includes=["**.png"], excludes=["**/a/**", "*/img?.png"]), project) == [
        "data/img/b.png", "data/img_1.png", "data/other.png"]
    assert list_files(lister("data/img", includes=["*.jpg", "**/b.*"]), project) == [
        "data/img/b.png"]  # "*.jpg" cannot cross a "/"


def test_entries_in_order_duplicates_kept_and_batches_run_across_them(project):
    source = lister("data/other", "data/img/", "data/img/b", batch_size=2)
    names = ["data/other.png", "data/img/a.jpg", "data/img/a/c.png", "data/img/b.png", "data/img/b.png"]
    assert list_files(source, project) == names
    assert list(batches(source, project)) == [json.dumps(names[0:2]).replace(" ", ""),
                                              json.dumps(names[2:4]).replace(" ", ""), json.dumps(names[4:])]


def test_check_paths_in_cortex_order(project):
    def problem(source):
        with pytest.raises(JobError) as caught:
            check_paths(source, project)
        return caught.value.kind, caught.value.message

    assert problem(lister()) == ("configreader.too_few_elements",
                                 "file_path_lister: s3_paths: must contain at least 1 elements")
    assert problem(lister("s3://", includes=["*", "[x"], excludes=["["])) == (
        "error", "file_path_lister: includes: [x: unexpected end of input")
    assert problem(lister("s3://", excludes=["a", "[z-a]"], kind="delimited_files")) == (
        "error", "delimited_files: excludes: [z-a]: hi character 'a' should be greater than lo 'z'")
    assert problem(lister("data/", "s3:///key")) == (
        "aws.invalid_s3_path", "file_path_lister: " + INVALID_S3.format("s3:///key"))
    for path in ("", "gs://bucket/x", "file://host/x", "file://"):
        assert problem(lister(path)) == ("batchapi.invalid_local_path", f'file_path_lister: "{path}" is not a valid '
                                         "local path (e.g. data/images/, /mnt/data/images/ or "
                                         "file:///mnt/data/images/ is a valid local path)")
    assert problem(lister("data/none", "nowhere/x", includes=["**.png"], excludes=["data/img/**"])) == (
        "batchapi.no_s3_files_found", "file_path_lister: no s3 files match search criteria")
    with pytest.raises(JobError, match="^delimited_files: no s3 files match search criteria$"):
        list_files(lister("data/none", kind="delimited_files"), project)
    check_paths(lister("data/none", "data/other"), project)
    check_paths(Source("item_list", 1, items=[1]), project)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any directory")
def test_an_unreadable_directory_is_an_error(project):
    locked = project / "data/img/a"
    locked.chmod(0)
    try:
        with pytest.raises(JobError, match=r"^file_path_lister: data/img: \[Errno 13\] Permission denied"):
            list_files(lister("data/img"), project)
    finally:
        locked.chmod(0o755)


# --- delimited files --------------------------------------------------------------------------------------------------


def delimited(root, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        (root / name).write_bytes(data)


def test_delimited_files_are_streams_of_json_values(tmp_path):
    delimited(tmp_path, {"in/a.jsonl": '{"x": 1}\n{"x": 2}\n[3, 4]\n\n  "five" 6 7.5 null\n',
                         "in/b.json": '{"y":\n  "é"}', "in/c.txt": "8 9"})
    source = lister("in/", excludes=["*.txt", "**.txt"], batch_size=3, kind="delimited_files")
    assert list(batches(source, tmp_path)) == ['[{"x":1},{"x":2},[3,4]]', '["five",6,7.5]', '[null,{"y":"é"}]']


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64])
def test_chunk_boundaries_split_nothing(tmp_path, monkeypatch, chunk):
    pieces = ["12345678901234567890", " ", "-1.5e-10", "\n", json.dumps('é€😀\\"\u2028', ensure_ascii=False),
              "[true,false,null]", '{"k":[1,{"z":""}]}', "0", '""', '"\\ud83d\\ude00 as an escape"', "\t\r\n", "7"]
    values = [json.loads(piece) for piece in pieces if piece.strip()]
    delimited(tmp_path, {"f.jsonl": "".join(pieces)})
    monkeypatch.setattr(sources, "READ_CHUNK_BYTES", chunk)
    produced = [json.loads(batch) for batch in batches(lister("f", batch_size=4, kind="delimited_files"), tmp_path)]
    assert produced == [values[0:4], values[4:8], values[8:]]


@pytest.mark.parametrize(("content", "message"), [
    ('{"a": 1}\n{"a": 2,}\n', "item 1: Expecting property name enclosed in double quotes: line 2 column 9"),
    ("1 2 3 x", "item 3: Expecting value: line 1 column 7"),
    ('1\n2\n"abc', "item 2: Unterminated string starting at: line 3 column 1"),
    ("[1, 2", "item 0: Expecting ',' delimiter: line 1 column 6"),
    ("1 NaN", "item 1: invalid character 'N' looking for beginning of value"),
])
@pytest.mark.parametrize("chunk", [3, 1 << 20])
def test_a_malformed_value_counts_within_its_file(tmp_path, monkeypatch, content, message, chunk):
    monkeypatch.setattr(sources, "READ_CHUNK_BYTES", chunk)
    delimited(tmp_path, {"a.jsonl": "1 2 3 4 5", "b.jsonl": content})
    with pytest.raises(EnqueueError) as caught:
        list(batches(lister("a.jsonl", "b.jsonl", batch_size=2, kind="delimited_files"), tmp_path))
    assert caught.value.message == f"b.jsonl: {message}"


def test_empty_files_are_no_data(tmp_path):
    delimited(tmp_path, {"in/a.jsonl": "", "in/b.jsonl": " \n\n\t"})
    source = lister("in/", kind="delimited_files")
    assert list_files(source, tmp_path) == ["in/a.jsonl", "in/b.jsonl"]
    with pytest.raises(EnqueueError) as caught:
        list(batches(source, tmp_path))
    assert (caught.value.kind, caught.value.message) == ("batchapi.no_data_found_in_job_submission",
                                                         f"{NO_DATA}\n{EMPTY_FILES_HINT}")
    (tmp_path / "in/a.jsonl").unlink()
    (tmp_path / "in/b.jsonl").unlink()
    with pytest.raises(EnqueueError) as caught:  # files gone since the submission was checked
        list(batches(lister("in/", kind="file_path_lister"), tmp_path))
    assert caught.value.message == NO_DATA


def test_oversized_delimited_items_and_batches(tmp_path):
    limit = json.dumps("x" * (MAX_MESSAGE_BYTES - 2))  # an item of exactly the limit: as a batch, 2 bytes over it
    fits = json.dumps("x" * (MAX_MESSAGE_BYTES - 4))  # a batch of one that is exactly the limit
    spaced = '["' + "x" * 200000 + '",' + " " * 56003 + "2]"  # compact, it would be under the limit
    delimited(tmp_path, {"fits.jsonl": fits, "limit.jsonl": limit, "over.jsonl": f"1 {limit[:-1]}y\" 3",
                         "spaced.jsonl": f"1 {spaced} 3"})
    assert list(batches(lister("fits", batch_size=1, kind="delimited_files"), tmp_path)) == [f"[{fits}]"]

    def failure(*paths, batch_size=1):
        with pytest.raises(EnqueueError) as caught:
            list(batches(lister(*paths, batch_size=batch_size, kind="delimited_files"), tmp_path))
        return caught.value.message

    assert failure("limit") == "limit.jsonl: " + TOO_LARGE.format(MAX_MESSAGE_BYTES + 2)  # filled in that file
    assert failure("limit", batch_size=2) == TOO_LARGE.format(MAX_MESSAGE_BYTES + 2)  # the last batch: no file
    assert failure("over", "fits") == "over.jsonl: item 1: " + TOO_LARGE.format(MAX_MESSAGE_BYTES + 1)
    assert failure("spaced") == "spaced.jsonl: item 1: " + TOO_LARGE.format(len(spaced))  # as written (RawMessage)
    assert failure("fits", "fits", batch_size=2) == "fits.jsonl: " + TOO_LARGE.format(2 * len(fits) + 3)


def test_an_unfinished_value_is_not_read_past_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "READ_CHUNK_BYTES", 4096)
    delimited(tmp_path, {"huge.jsonl": '1 "' + "x" * (4 * MAX_MESSAGE_BYTES)})
    with pytest.raises(EnqueueError) as caught:
        list(batches(lister("huge", batch_size=1, kind="delimited_files"), tmp_path))
    assert caught.value.message == ("huge.jsonl: item 1: cannot enqueue message because its size exceeds the 256000 "
                                    "bytes limit; use a smaller batch size or reduce the size of each of item in "
                                    "the batch")


def test_batches_stream_a_large_delimited_file(tmp_path, monkeypatch):
    """The first batch comes before the rest of the file is read: bytes rewritten after it are what comes out."""
    monkeypatch.setattr(sources, "READ_CHUNK_BYTES", 1 << 16)
    path = tmp_path / "big.jsonl"
    path.write_text("".join(f"{i:6d}\n" for i in range(100_000)))
    produced = batches(lister("big.jsonl", batch_size=10, kind="delimited_files"), tmp_path)
    assert json.loads(next(produced)) == list(range(10))
    with path.open("r+b") as stream:  # items 50000 … 99999 become -1 (same width, so offsets stay)
        stream.seek(7 * 50_000)
        stream.write(b"    -1\n" * 50_000)
    items = [item for batch in produced for item in json.loads(batch)]
    assert items[:49_990] == list(range(10, 50_000)) and items[49_990:] == [-1] * 50_000


# --- S3, against a moto server on loopback ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint():
    """One moto S3 server for the module, on a free loopback port."""
    yield from moto_s3()


class Bucket:
    def __init__(self, client, name: str) -> None:
        self.client = client
        self.name = name

    def put(self, key: str, content: str = "") -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=content.encode())


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    """A fresh bucket, with the environment pointing boto3 (and so the engine) at the local server."""
    return Bucket(*fresh_bucket(s3_endpoint, monkeypatch, "jobs"))


@pytest.mark.e2e
def test_s3_file_path_lister(bucket, tmp_path):
    for key in ["images/img_1.png", "images/img/a.png", "images/img/", "images/img/b/c.png", "images/img.jpg",
                "images/other.png", "text/a.txt"]:
        bucket.put(key, "x")
    s3 = f"s3://{bucket.name}"
    source = lister(f"{s3}/images/img", f"{s3}/text/", f"{s3}/images/img/a", batch_size=3)
    names = [f"{s3}/images/img.jpg", f"{s3}/images/img/a.png", f"{s3}/images/img/b/c.png", f"{s3}/images/img_1.png",
             f"{s3}/text/a.txt", f"{s3}/images/img/a.png"]
    check_paths(source, tmp_path)
    assert list_files(source, tmp_path) == names
    assert [json.loads(batch) for batch in batches(source, tmp_path)] == [names[:3], names[3:]]
    filtered = lister(f"{s3}", includes=[f"{s3}/images/*", "**.txt"], excludes=["**/*.jpg"])
    assert list_files(filtered, tmp_path) == [f"{s3}/images/img_1.png", f"{s3}/images/other.png", f"{s3}/text/a.txt"]
    with pytest.raises(JobError, match="^file_path_lister: no s3 files match search criteria$"):
        check_paths(lister(f"{s3}/nothing", f"{s3}/images/", includes=["**.gif"]), tmp_path)


@pytest.mark.e2e
def test_s3_listing_is_paginated(bucket, tmp_path):
    for index in range(1003):
        bucket.put(f"many/{index:04d}")
    names = list_files(lister(f"s3://{bucket.name}/many/"), tmp_path)
    assert names == [f"s3://{bucket.name}/many/{index:04d}" for index in range(1003)]


@pytest.mark.e2e
def test_s3_delimited_files(bucket, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "READ_CHUNK_BYTES", 5)
    bucket.put("in/a.jsonl", '{"a": 1}\n{"a": "é"}\n[1, 2]\n')
    bucket.put("in/b.jsonl", "3 4")
    bucket.put("in/empty.jsonl")
    bucket.put("bad/c.jsonl", "1\n2\n{")
    source = lister(f"s3://{bucket.name}/in/", batch_size=2, kind="delimited_files")
    assert list(batches(source, tmp_path)) == ['[{"a":1},{"a":"é"}]', "[[1,2],3]", "[4]"]
    with pytest.raises(EnqueueError) as caught:
        list(batches(lister(f"s3://{bucket.name}/bad", kind="delimited_files"), tmp_path))
    assert caught.value.message == f"s3://{bucket.name}/bad/c.jsonl: item 2: Expecting property name enclosed in " \
                                   "double quotes: line 3 column 2"
    with pytest.raises(EnqueueError) as caught:
        list(batches(lister(f"s3://{bucket.name}/in/empty", kind="delimited_files"), tmp_path))
    assert caught.value.message == f"{NO_DATA}\n{EMPTY_FILES_HINT}"


@pytest.mark.e2e
def test_s3_errors_name_the_path(bucket, tmp_path):
    missing = f"s3://{bucket.name}-missing/x"
    with pytest.raises(JobError) as caught:
        check_paths(lister(missing, kind="delimited_files"), tmp_path)
    assert caught.value.message.startswith(f"delimited_files: {missing}: An error occurred (NoSuchBucket)")
    with pytest.raises(EnqueueError, match=rf"^{missing}: An error occurred \(NoSuchBucket\)"):
        list(batches(lister(missing), tmp_path))


def test_s3_without_boto3(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(JobError) as caught:
        check_paths(lister("s3://bucket/x"), tmp_path)
    assert (caught.value.kind, caught.value.message) == (
        "batchapi.s3_unavailable", "file_path_lister: s3:// paths need boto3: pip install 'engine[s3]'")
    with pytest.raises(JobError, match="^" + re.escape("file_path_lister: " + INVALID_S3.format("s3://")) + "$"):
        check_paths(lister("s3://"), tmp_path)  # the path is checked before any client is made
