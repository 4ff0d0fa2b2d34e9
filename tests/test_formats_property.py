"""Property tests for the corpus and dataset loaders (humpback.formats, load_rater_check).

Whatever the records or the bytes of the file: nothing but HumpbackError escapes a loader, its message is
one line that starts with the file's name, and every parse's counts add up (read == kept + dropped). For
valid input, read_jsonl yields exactly what the text-mode reader before it did (`OLD_read_jsonl` below).
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from humpback import HumpbackError, formats

from humpback.curation.check import RATER_CHECK_FIELDS, load_rater_check
from humpback.evaluation.constraints import CHECKERS
from humpback.evaluation.ifeval import FIELDS as IFEVAL_FIELDS
from humpback.evaluation.ifeval import load_prompts

FAST = settings(max_examples=200, deadline=None, database=None)  # no .hypothesis/ left in the checkout


def OLD_read_jsonl(path):
    """read_jsonl as it was before it read bytes: the reference for valid input."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            yield f"{path}:{lineno}", json.loads(line)


# ---------------------------------------------------------------------------------------------------
# Strategies

KEYS = st.sampled_from(["text", "conversations", "source", *RATER_CHECK_FIELDS, *IFEVAL_FIELDS]) | st.text(max_size=4)
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=8))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
                           max_leaves=5)

MARKERS = ["### Human:", "### Assistant:", "### human:", "###", "Human:", " ", "\n", ""]
NO_MARKER = st.text(alphabet=st.characters(exclude_characters="#"), max_size=10)
GUANACO_TEXT = st.lists(st.sampled_from(MARKERS) | st.text(max_size=12), max_size=8).map("".join)
LIMA_CONV = st.lists(st.sampled_from(["", "  ", "Q?", "A."]) | st.text(max_size=12) | JSON_VALUES, max_size=5)
RATER = st.fixed_dictionaries({}, optional={
    **{f: st.text(max_size=8) | JSON_VALUES for f in RATER_CHECK_FIELDS},
    "level": st.integers(0, 6) | JSON_VALUES,
    "split": st.sampled_from(["dev", "test", "train"]) | JSON_VALUES,
})
RECORDS = (JSON_VALUES
           | st.dictionaries(KEYS, JSON_VALUES, max_size=4)
           | st.builds(lambda t, extra: {**extra, "text": t}, GUANACO_TEXT | JSON_VALUES,
                       st.dictionaries(KEYS, JSON_VALUES, max_size=2))
           | st.builds(lambda c, s: {"conversations": c, **s}, LIMA_CONV | JSON_VALUES,
                       st.fixed_dictionaries({}, optional={"source": JSON_VALUES}))
           | RATER
           | st.fixed_dictionaries({"key": JSON_VALUES, "prompt": st.text(max_size=8) | JSON_VALUES,
                                    "instruction_id_list": st.lists(st.sampled_from(sorted(CHECKERS)) | JSON_VALUES,
                                                                    max_size=2),
                                    "kwargs": st.lists(st.dictionaries(st.sampled_from(["n", "keywords", "phrase"]),
                                                                       JSON_VALUES, max_size=2) | JSON_VALUES,
                                                       max_size=2)}))

# Bytes: random, or made of pieces that have broken or nearly broken a reader (bad UTF-8, BOMs, line ends,
# NaN, numbers out of range, lone surrogates, deep nesting), or a valid file with a few bytes spliced in.
FRAGMENTS = [b"\n", b"\r\n", b"\r", b"\xef\xbb\xbf", b"\xff", b"\xfe", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\x00",
             b"{", b"}", b"[", b"]", b'"', b":", b",", b" ", b"null", b"true", b"1", b"-0.5",
             b'{"text": "', b'{"conversations": [', b"### Human: ", b"### Assistant: ", b'"level": 3', b'"split": "dev"',
             b"NaN", b"-Infinity", b"1e999", b"9" * 5000, b"\\ud800", b"\\ude00", b"\\\\ud800", b"[" * 200, b"]" * 200]
VALID_JSONL = st.lists(RECORDS, max_size=3).map(lambda rs: "".join(json.dumps(r) + "\n" for r in rs).encode())
SPLICED = st.builds(lambda data, at, junk: data[: at % (len(data) + 1)] + junk + data[at % (len(data) + 1):],
                    VALID_JSONL, st.integers(min_value=0), st.binary(min_size=1, max_size=3) | st.sampled_from(FRAGMENTS))
ANY_BYTES = (st.binary(max_size=64)
             | st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=4), max_size=30).map(b"".join)
             | SPLICED)

BLANK = st.sampled_from(["", " ", "\t", "\x0b", "\x0c", "\x1c", "\x85", "\u3000", "\u2028"])  # str.strip() drops all
ENDS = st.sampled_from(["\n", "\r\n", "\r"])


# ---------------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """One directory per module (hypothesis cannot reuse function-scoped tmp_path between examples)."""
    return tmp_path_factory.mktemp("formats-property")


def write(directory, data: bytes, name: str = "f.jsonl") -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def assert_one_line(e: HumpbackError, path: str) -> None:
    msg = str(e)
    assert msg.startswith(f"{path}:") and "\n" not in msg and "\r" not in msg, msg


def assert_counts(report: formats.ParseReport, pairs: list[dict] | None = None) -> None:
    d = report.as_dict()
    assert report.read == report.kept + sum(report.dropped.values()) == d["kept"] + d["dropped"]
    assert set(report.dropped) <= set(formats.SKIP_REASONS)
    if pairs is not None:
        assert len(pairs) == report.kept
        for p in pairs:
            assert isinstance(p["instruction"], str) and p["instruction"] and p["instruction"] == p["instruction"].strip()
            assert isinstance(p["response"], str) and p["response"] and p["response"] == p["response"].strip()


def first_bad_byte(path: str):
    """(line, column, byte) of the first byte that is not UTF-8, by Python's text mode (universal newlines,
    bad bytes kept as surrogate escapes): an oracle for read_jsonl's message, independent of its code."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for lineno, line in enumerate(f, start=1):
            if lineno == 1 and line.startswith("\ufeff"):
                line = line[1:]
            for col, ch in enumerate(line, start=1):
                if "\udc80" <= ch <= "\udcff":
                    return lineno, col, ord(ch) - 0xDC00
    return None


UTF8_ERROR = re.compile(r"^(.*):(\d+): not valid UTF-8 \(byte 0x([0-9a-f]{2}) at column (\d+)\)$")


def load_everything(path: str, valid: bool = False) -> None:
    """Every JSONL loader on one file; only HumpbackError, one line, and counts that add up. A `valid`
    file (JSON lines) is never an error for the corpus parsers, whatever its records hold."""
    for parse in (formats.parse_guanaco, formats.parse_lima):
        report = formats.ParseReport()
        try:
            pairs = parse(formats.read_jsonl(path), report)
        except HumpbackError as e:
            assert not valid, str(e)
            assert_one_line(e, path)
            assert_counts(report)  # the lines before the bad one were counted, each once
            m = UTF8_ERROR.match(str(e))
            if m:
                assert (int(m[2]), int(m[4]), int(m[3], 16)) == first_bad_byte(path), str(e)
        else:
            assert_counts(report, pairs)
    try:
        pairs = load_rater_check(path)
    except HumpbackError as e:
        assert_one_line(e, path)
    else:
        assert len(pairs) == len(list(formats.read_jsonl(path)))
        assert all(p["level"] in (1, 2, 3, 4, 5) and p["split"] in ("dev", "test") for p in pairs)
    try:
        prompts = load_prompts(path)
    except HumpbackError as e:
        assert_one_line(e, path)
    else:  # all or nothing: a prompt dropped in silence would be another evaluation set
        assert len(prompts) == len(list(formats.read_jsonl(path))) > 0


# ---------------------------------------------------------------------------------------------------
# Properties


@FAST
@given(st.lists(RECORDS, max_size=6))
def test_parsers_take_any_records_and_count_each_once(records):
    """The parsers themselves (as the Hub rows reach them too) never raise, whatever the records."""
    rows = [(f"x:{i}", r) for i, r in enumerate(records)]
    for parse in (formats.parse_guanaco, formats.parse_lima):
        report = formats.ParseReport()
        pairs = parse(rows, report)
        assert report.read == len(records)
        assert_counts(report, pairs)


@FAST
@given(st.lists(st.tuples(st.sampled_from(["Human", "Assistant"]), NO_MARKER), max_size=5), NO_MARKER)
def test_guanaco_takes_the_first_human_assistant_exchange(turns, before):
    text = before + "".join(f"### {role}: {content}" for role, content in turns)
    report = formats.ParseReport()
    pairs = formats.parse_guanaco([("x:1", {"text": text})], report)
    assert_counts(report, pairs)
    real = [(role.lower(), c.strip()) for role, c in turns]
    ok = len(real) >= 2 and real[0][0] == "human" and real[1][0] == "assistant" and real[0][1] and real[1][1]
    assert report.kept == int(bool(ok))
    if ok:
        assert (pairs[0]["instruction"], pairs[0]["response"]) == (real[0][1], real[1][1])


@FAST
@given(st.lists(st.text(max_size=6), max_size=4), st.none() | st.text(max_size=6))
def test_lima_reason_follows_the_conversation(conv, source):
    rec = {"conversations": conv, **({} if source is None else {"source": source})}
    report = formats.ParseReport()
    pairs = formats.parse_lima([("x:1", rec)], report)
    assert_counts(report, pairs)
    expected = ("empty_text" if not conv or any(not t.strip() for t in conv) else
                "no_assistant_turn" if len(conv) < 2 else "multi_turn" if len(conv) > 2 else None)
    assert report.dropped == ({expected: 1} if expected else {})
    if not expected:
        assert pairs[0]["source"] == (source or "unknown")


@FAST
@given(st.lists(st.tuples(st.lists(BLANK, max_size=2), RECORDS, st.booleans()), max_size=4),
       ENDS, st.booleans(), st.booleans())
def test_valid_jsonl_reads_exactly_as_before(scratch, items, end, bom, last_end):
    """Same (`path:line`, object) pairs as the old text-mode reader, for any records, line ends and blank
    lines; with a UTF-8 BOM too (which the old reader refused)."""
    text, expected, lineno = "", [], 0
    for blanks, rec, ascii_only in items:
        for b in blanks:
            text += b + end
            lineno += 1
        text += json.dumps(rec, ensure_ascii=ascii_only) + end
        lineno += 1
        expected.append((lineno, rec))
    if not last_end and text:
        text = text[: -len(end)]
    path = write(scratch, ("\ufeff" if bom else "").encode() + text.encode("utf-8"))
    got = list(formats.read_jsonl(path))
    assert got == [(f"{path}:{n}", r) for n, r in expected]
    if not bom:
        assert got == list(OLD_read_jsonl(path))
    load_everything(path, valid=True)


@FAST
@given(ANY_BYTES)
def test_any_bytes_give_records_or_one_clear_line(scratch, data):
    load_everything(write(scratch, data))


@FAST
@given(ANY_BYTES | st.lists(st.dictionaries(KEYS, JSON_VALUES, max_size=3) | JSON_VALUES, max_size=4).map(
    lambda v: json.dumps(v, indent=1).encode()))
def test_load_json_gives_records_or_one_clear_line(scratch, data):
    path = write(scratch, data, "f.json")
    try:
        recs = formats.load_json(path)
    except HumpbackError as e:
        assert_one_line(e, path)
    else:
        assert isinstance(recs, list) and all(isinstance(r, dict) for r in recs)


# ---------------------------------------------------------------------------------------------------
# The bad byte of the issue, and the other lines that used to escape as a traceback


def corrupt_lima(repo_root, dest_dir) -> str:
    """A copy of the bundled LIMA file with byte 0xff at line 17, column 5."""
    lines = open(os.path.join(repo_root, "data/raw/lima.jsonl"), "rb").read().split(b"\n")
    lines[16] = lines[16][:4] + b"\xff" + lines[16][5:]
    path = os.path.join(dest_dir, "lima.jsonl")
    with open(path, "wb") as f:
        f.write(b"\n".join(lines))
    return path


def test_a_bad_byte_is_one_line_naming_file_and_line(repo_root, tmp_path):
    path = corrupt_lima(repo_root, tmp_path)
    report = formats.ParseReport()
    with pytest.raises(HumpbackError) as e:
        formats.parse_lima(formats.read_jsonl(path), report)
    assert str(e.value) == f"{path}:17: not valid UTF-8 (byte 0xff at column 5)"
    assert e.value.__cause__ is None and e.value.__suppress_context__
    assert report.read == 16 and report.read == report.kept + sum(report.dropped.values())


def test_prepare_stops_on_a_bad_byte_with_one_line(repo_root, tmp_path):
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    shutil.copy(os.path.join(repo_root, "data/raw/guanaco.jsonl"), raw / "guanaco.jsonl")
    corrupt_lima(repo_root, raw)
    (tmp_path / "params.yaml").write_text("data:\n  source: bundled\n")
    env = {**os.environ, "PYTHONPATH": repo_root, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, os.path.join(repo_root, "stages", "prepare.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == ["error: data/raw/lima.jsonl:17: not valid UTF-8 (byte 0xff at column 5)"]
    assert not (tmp_path / "data" / "lima_single_turn.json").exists()


@pytest.mark.parametrize("data, error", [
    (b'{"a": 1}\n\n{"te\xc3\xa9\xe2\x82"}\n', "3: not valid UTF-8 (byte 0xe2 at column 6)"),  # column in characters
    (b'{"a": 1}\r\n\xff\r\n', "2: not valid UTF-8 (byte 0xff at column 1)"),
    (b'{"a": 1}\n\xef\xbb\xbf{"a": 1}\n', "2: invalid JSON (Unexpected UTF-8 BOM (decode using utf-8-sig) at column 1)"),
    (b'{"text": NaN}\n', "1: invalid JSON (NaN is not a JSON number)"),
    (b'{"text": -Infinity}\n', "1: invalid JSON (-Infinity is not a JSON number)"),
    (b'{"level": 1e999}\n', "1: invalid JSON (number 1e999 is out of range)"),
    (b'{"level": ' + b"9" * 5000 + b"}\n", "1: invalid JSON (integer of 5000 digits is too long)"),
    (b'{"text": "\\ud800 alone"}\n', "1: not valid Unicode (lone surrogate \\ud800 in a string)"),
    (b"[" * 129 + b"]" * 129 + b"\n", f"1: JSON nested more than {formats.MAX_DEPTH} levels deep"),
    (b"[" * 100000 + b"\n", f"1: JSON nested more than {formats.MAX_DEPTH} levels deep"),  # json's RecursionError
], ids=["truncated-utf8", "crlf-0xff", "bom-on-line-2", "nan", "infinity", "1e999", "5000-digits", "lone-surrogate",
        "depth-129", "depth-100000"])
def test_lines_that_used_to_escape_are_one_line(tmp_path, data, error):
    path = write(tmp_path, data)
    with pytest.raises(HumpbackError) as e:
        list(formats.read_jsonl(path))
    assert str(e.value) == f"{path}:{error}"


def test_what_is_still_data(tmp_path):
    """A BOM on line 1, a surrogate pair, an escaped backslash before `ud800`, nesting at the limit."""
    data = (b'\xef\xbb\xbf{"text": "\\ud83d\\ude00"}\r\n{"text": "\\\\ud800"}\r\n'
            + b"[" * formats.MAX_DEPTH + b"]" * formats.MAX_DEPTH + b"\r\n")
    got = list(formats.read_jsonl(write(tmp_path, data)))
    assert [r for _, r in got[:2]] == [{"text": "\U0001F600"}, {"text": "\\ud800"}] and len(got) == 3


def test_a_directory_or_a_wrong_shape_is_one_line(tmp_path):
    d = str(tmp_path)
    for load in (lambda p: list(formats.read_jsonl(p)), formats.load_json, load_rater_check):
        with pytest.raises(HumpbackError, match=f"^{re.escape(d)}: is a directory, not a file$"):
            load(d)
    with pytest.raises(HumpbackError, match=r"p\.jsonl:2: expected a JSON object, got array$"):
        load_rater_check(write(tmp_path, b"\n[1, 2]\n", "p.jsonl"))
    with pytest.raises(HumpbackError, match=r"d\.json: expected a JSON array of records \(objects\), got object$"):
        formats.load_json(write(tmp_path, b'{"id": 1}', "d.json"))
    with pytest.raises(HumpbackError, match=r"d\.json:3: not valid UTF-8 \(byte 0xff at column 11\)$"):
        formats.load_json(write(tmp_path, b'[\n  {"id": 1},\n  {"id": "\xff"}\n]\n', "d.json"))
