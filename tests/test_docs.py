"""The documentation stays true to the tree: README.md, docs/*.md and benchmarks/README.md.

- Every relative link (and image) points to a file or folder that exists, and every
  `#anchor` to a heading of the page it names.
- Every measured figure comes from a results file that its section cites. The convention
  is written out for authors in docs/benchmarks.md ("How figures are cited"); in short:
  a section (text under one heading, down to the next) links the files under
  benchmarks/results/ its figures come from; a figure is a number outside code with a
  decimal point or a unit (UNIT_SCALES); it is supported when a number of a cited file, at
  least as precise, rounds to it; a computed figure shows its arithmetic in a code span
  right after it; `~` marks an estimate; NOT_MEASURED lists the few quoted figures.
"""

from __future__ import annotations

import ast
import json
import operator
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from retriever.evaluation.machine import MACHINE_KEYS, folder_machine_record

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RESULT_SUFFIXES = {".json", ".md", ".csv"}

# README's two commands; CI (.ci/run) runs the test command verbatim.
DEMO_COMMAND = "bash scripts/setup.sh && bash scripts/scifact_demo.sh"
TEST_COMMAND = "bash scripts/setup.sh && .venv/bin/python -m pytest"
README_BUDGET = 12_000  # characters: README is the front door; the rest lives in docs/

# Figures that are not this project's measurements, by (page, section heading). Keep this
# short: a measured figure belongs in a results file, not here.
NOT_MEASURED: dict[tuple[str, str], set[str]] = {
    ("docs/results.md", "Against the reference probe"): {
        # The reference probe's nDCG@10, quoted from the benchmark issue: another
        # implementation's numbers, which the stored run is compared with.
        *"0.093 0.205 0.151 0.107 0.076 0.042 0.018 0.102 0.068 0.049".split(),
        *"0.266 0.238 0.180 0.052 0.046 0.043 0.099 0.095".split(),
        # The tolerance the comparison is read at: a choice, not a result.
        "0.01",
    },
    ("docs/guide.md", "Setup"): {
        # The rate and build time on an AVX2-only CPU, quoted from the user report in
        # issue 20.
        "1.69",
    },
    ("docs/builds.md", "A second CPU runtime: ONNX Runtime"): {
        # Dynamic int8 quantization, quoted from the issue that asked for this work
        # (issue 20): its speed-up and cosine, which the section says why it is not offered.
        "1.37",
        "0.940",
    },
    ("docs/scale-out.md", "What it costs"): {
        # NQ's and MS MARCO's average words per document, quoted from the BEIR paper
        # (Thakur et al. 2021, table 1) for the extrapolation.
        "78.9",
        "56.0",
    },
}

# Units that make an integer a figure, and the scales at which a results file may hold the
# same quantity (a file's bytes support MB; a file's fraction supports a percentage).
UNIT_SCALES: dict[str | None, tuple[float, ...]] = {
    None: (1,),
    "x": (1,),
    "%": (1, 100),
    "ms": (1, 1e3),
    "s": (1, 1e-3),
    "min": (1, 1 / 60),
    "minutes": (1, 1 / 60),
    "h": (1, 1 / 3600),
    "hours": (1, 1 / 3600),
    "KiB": (1, 2**-10),
    "MiB": (1, 2**-20),
    "GiB": (1, 2**-10, 2**-30),
    "KB": (1, 1e-3),
    "MB": (1, 1e-6, 1e-3),
    "GB": (1, 1e-9, 1e-3),
    "GB/s": (1, 1e-9),
    "bytes": (1,),
    "QPS": (1,),
    "queries/s": (1,),
    "documents/s": (1,),
    "tokens/s": (1,),
}
UNIT = re.compile(
    r"(?P<attached>x|%)(?!\w)"
    r"|(?:[ \u00a0]|\n[ \t]*)?"
    r"(?P<spaced>queries/s|documents/s|tokens/s|GB/s|QPS|bytes|KiB|MiB|GiB|KB|MB|GB"
    r"|minutes|min|ms|s|hours|h)"
    r"(?![\w/])"
)
NUMBER = re.compile(r"(?<![\w.,@^\x00])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")
GROUP_SEPARATOR = re.compile(r"\s*/\s*|[ \t]*[-\u2013][ \t]*|\s+to\s+[-+]?")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"(!?)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^()\s<>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)
# The development machines' folder beside the checkout, which users do not have.
OUTSIDE = re.compile(r"\.\./shared\b")


def documentation_pages() -> list[Path]:
    return [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted(ROOT.glob("docs/*.md"))]


# --- Markdown: lines, sections, links ---------------------------------------------------


@dataclass
class Block:
    """A paragraph, list or table: consecutive non-blank lines outside code blocks."""

    line: int  # its first line's number
    text: str  # comments removed, links replaced by their text; lines joined by newlines
    links: list[tuple[int, str]]  # (line number, target) of its links and images

    def line_of(self, position: int) -> int:
        return self.line + self.text.count("\n", 0, position)


@dataclass
class Section:
    heading: str
    blocks: list[Block]

    @property
    def links(self) -> Iterator[str]:
        for block in self.blocks:
            for _, target in block.links:
                yield target


def prose_lines(markdown: str) -> Iterator[tuple[int, str, bool]]:
    """(line number, text, inside a fenced code block) for each line."""
    fenced = False
    for number, text in enumerate(markdown.splitlines(), start=1):
        if FENCE.match(text):
            fenced = not fenced
            yield number, text, True
        else:
            yield number, text, fenced


def mask_code(text: str) -> str:
    """Code spans blanked out (same length and lines), so what they hold is no figure."""
    return CODE_SPAN.sub(
        lambda m: m.group(1) + re.sub(r"[^\n]", "\x00", m.group(2)) + m.group(1), text
    )


def parse_block(number: int, raw: str) -> Block:
    text = COMMENT.sub(lambda m: re.sub(r"[^\n]", "", m.group()), raw)
    masked = mask_code(text)
    links = []
    pieces = []
    end = 0
    for match in LINK.finditer(masked):
        links.append((number + text.count("\n", 0, match.start()), match.group(3)))
        pieces.append(text[end : match.start()])
        pieces.append(text[match.start(2) : match.end(2)])
        end = match.end()
    pieces.append(text[end:])
    return Block(number, "".join(pieces), links)


def sections(markdown: str) -> list[Section]:
    """The page cut at every heading; the first section is what comes before any."""
    found = [Section("", [])]
    lines: list[tuple[int, str]] = []

    def close_block() -> None:
        if lines:
            found[-1].blocks.append(parse_block(lines[0][0], "\n".join(t for _, t in lines)))
            lines.clear()

    for number, raw, code in prose_lines(markdown):
        heading = None if code else HEADING.match(raw)
        if code or heading or not raw.strip():
            close_block()
        if heading:
            found.append(Section(heading_text(heading.group(2)), []))
            found[-1].blocks.append(parse_block(number, raw))
        elif not code and raw.strip():
            lines.append((number, raw))
    close_block()
    return found


def heading_text(markdown: str) -> str:
    """A heading as rendered: link text, no emphasis or backticks."""
    text = LINK.sub(lambda m: m.group(2), markdown)
    return re.sub(r"[`*]", "", text).strip()


def slug(heading: str) -> str:
    """GitHub's anchor for a heading (before duplicate numbering)."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for section in sections(markdown)[1:]:
        base = slug(section.heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def resolve(page: Path, target: str) -> Path:
    return (page.parent / target.split("#", 1)[0]).resolve()


def relative_link_problems(page: Path) -> list[str]:
    markdown = page.read_text(encoding="utf-8")
    problems = []
    for section in sections(markdown):
        for block in section.blocks:
            for number, target in block.links:
                if not target or SCHEME.match(target):
                    continue
                where = f"{page.relative_to(ROOT)}:{number}: {target}"
                path_part, _, fragment = target.partition("#")
                linked = resolve(page, target) if path_part else page
                if not linked.is_relative_to(ROOT):
                    problems.append(f"{where}: leaves the repository")
                elif not linked.exists():
                    problems.append(f"{where}: no such file")
                elif fragment and linked.suffix == ".md":
                    if fragment not in anchors(linked.read_text(encoding="utf-8")):
                        problems.append(f"{where}: no heading #{fragment} in {linked.name}")
    return problems


# --- Figures ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    line: int
    text: str  # as written, e.g. "0.2523", "1,613" (unit apart)
    unit: str | None
    expression: str | None  # the arithmetic shown after it, for a computed figure

    @property
    def value(self) -> float:
        return abs(float(self.text.replace(",", "")))

    @property
    def quantum(self) -> float:
        return quantum_of(self.text)

    @property
    def shown(self) -> str:
        if self.unit is None:
            return self.text
        return self.text + ("" if self.unit in ("x", "%") else " ") + self.unit


def quantum_of(number: str) -> float:
    """The precision a number is shown at: 0.2523 -> 1e-4, 1,613 -> 1, 1.5e-3 -> 1e-4."""
    mantissa, _, exponent = number.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


def figures_in(text: str, first_line: int = 1) -> list[Figure]:
    """The measured figures of a block of prose whose first line is `first_line` (links
    already replaced by their text)."""
    masked = mask_code(text)
    numbers = list(NUMBER.finditer(masked))
    found: list[Figure] = []
    i = 0
    while i < len(numbers):
        group = [numbers[i]]
        while (
            i + 1 < len(numbers)
            and GROUP_SEPARATOR.fullmatch(masked[group[-1].end() : numbers[i + 1].start()])
            and ("." in group[-1].group()) == ("." in numbers[i + 1].group())
        ):
            i += 1
            group.append(numbers[i])
        i += 1
        line = first_line + text.count("\n", 0, group[0].start())
        found.extend(group_figures(masked, text, group, line))
    return found


def group_figures(masked: str, text: str, group: list[re.Match[str]], line: int) -> list[Figure]:
    """Figures of a run of numbers of one kind that share one unit: '0.10 / 0.06 ms',
    '47-77%', '-0.011 to +0.007'."""
    before = masked[: group[0].start()]
    after = masked[group[-1].end() :]
    if before.rstrip().endswith("~"):
        return []  # an estimate
    if re.match(r"\.\d|\+|[^\Wx]", after) or re.search(r"(==|\w-)$", before):
        return []  # a version, a number glued to a letter (135M, 3b8d687), top-10, tau-2
    if re.search(r"arXiv\s+$", before):
        return []  # a paper's identifier: arXiv 2606.07502
    unit_match = UNIT.match(after)
    unit = None
    if unit_match:
        unit = unit_match.group("attached") or unit_match.group("spaced")
        after = after[unit_match.end() :]
    if unit is None and "." not in group[0].group():
        return []  # a setting or a count: tau 2, 576 dims, 5,183 documents, 8-byte ids
    expression = None
    shown = re.match(r"\s*\(\s*`+", after)
    if shown and len(group) == 1:
        backticks = len(shown.group()) - len(shown.group().rstrip("`"))
        span = CODE_SPAN.match(text, len(text) - len(after) + shown.end() - backticks)
        if span:
            expression = span.group(2)
    return [Figure(line, number.group(), unit, expression) for number in group]


@cache
def file_numbers(path: Path) -> tuple[tuple[float, float], ...]:
    """(value, precision) of every number in a results file; JSON numbers count as exact."""
    text = path.read_text(encoding="utf-8", errors="replace")
    exact = path.suffix == ".json"
    return tuple(
        (abs(float(match.group().replace(",", ""))), 0.0 if exact else quantum_of(match.group()))
        for match in NUMBER.finditer(text)
    )


def supports(
    numbers: Iterable[tuple[float, float]], value: float, quantum: float, unit: str | None
) -> bool:
    """Whether some number, at one of the unit's scales, is at least as precise as the
    figure and rounds to it."""
    slack = 1 + 1e-9
    for scale in UNIT_SCALES[unit]:
        for number, precision in numbers:
            if (
                precision * scale <= quantum * slack
                and abs(number * scale - value) <= quantum / 2 * slack + 1e-12
            ):
                return True
    return False


OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
}


def evaluate(expression: str) -> tuple[float, list[str]]:
    """The value of an arithmetic expression and its operands as written."""
    operands = [m.group() for m in NUMBER.finditer(expression)]
    plain = NUMBER.sub(lambda m: m.group().replace(",", ""), expression)

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
            return OPERATORS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in OPERATORS:
            return OPERATORS[type(node.op)](walk(node.operand))
        raise ValueError(f"not plain arithmetic: {expression!r}")

    return walk(ast.parse(plain, mode="eval")), operands


def figure_problem(figure: Figure, numbers: tuple[tuple[float, float], ...]) -> str | None:
    """Why a figure is not supported by these numbers, or None."""
    if figure.expression is None:
        if supports(numbers, figure.value, figure.quantum, figure.unit):
            return None
        return "not in the cited results"
    try:
        value, operands = evaluate(figure.expression)
    except (SyntaxError, ValueError, ZeroDivisionError) as error:
        return f"cannot compute `{figure.expression}`: {error}"
    missing = [
        operand
        for operand in operands
        if ("." in operand or float(operand.replace(",", "")) >= 1000)
        and not supports(numbers, abs(float(operand.replace(",", ""))), quantum_of(operand), None)
    ]
    if missing:
        return f"operands {', '.join(missing)} of `{figure.expression}` not in the cited results"
    if not supports(((abs(value), 0.0),), figure.value, figure.quantum, figure.unit):
        return f"`{figure.expression}` = {value:.6g}, not {figure.text}"
    return None


def cited_results(page: Path, section: Section, results: Path = RESULTS) -> list[Path]:
    """The results files a section links to (a linked folder stands for its files)."""
    cited: list[Path] = []
    for target in section.links:
        if not target or SCHEME.match(target) or target.startswith("#"):
            continue
        path = resolve(page, target)
        if not path.is_relative_to(results.resolve()):
            continue
        if path.is_dir():
            cited.extend(sorted(p for p in path.rglob("*") if p.suffix in RESULT_SUFFIXES))
        elif path.suffix in RESULT_SUFFIXES:
            cited.append(path)
    return cited


def figure_problems(
    markdown: str,
    page: Path,
    name: str,
    not_measured: dict[tuple[str, str], set[str]] | None = None,
    results: Path = RESULTS,
) -> list[str]:
    """Every figure of a page that its section's cited results files do not hold, as
    'page:line: figure: why (cited: files)'."""
    not_measured = NOT_MEASURED if not_measured is None else not_measured
    problems = []
    for section in sections(markdown):
        quoted = not_measured.get((name, section.heading), set())
        cited = cited_results(page, section, results)
        numbers = tuple(n for path in cited for n in file_numbers(path))
        names = ", ".join(str(p.relative_to(results.parent.parent)) for p in cited) or "none"
        for block in section.blocks:
            for figure in figures_in(block.text, block.line):
                if figure.text in quoted:
                    continue
                why = figure_problem(figure, numbers) if cited else "no results file cited"
                if why:
                    problems.append(
                        f"{name}:{figure.line}: {figure.shown} in '{section.heading}': {why}"
                        f" (cited: {names})"
                    )
    return problems


# --- Comparisons: figures of one sentence come from one machine --------------------------

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`(*_\[])|\n(?=\s*(?:[-*+]|\d+\.|\|)\s)")


def sentences(text: str) -> Iterator[tuple[int, str]]:
    """(offset, sentence) of a block's sentences; a list item or a table row is one."""
    start = 0
    for match in SENTENCE_END.finditer(mask_code(text)):
        yield start, text[start : match.start()]
        start = match.end()
    yield start, text[start:]


@cache
def machine_key(folder: Path) -> str:
    """The machine a results folder's figures were measured on, as a comparable key: its
    machine record's hardware (retriever.evaluation.machine.MACHINE_KEYS), or, for a folder
    without one ("machine not recorded"), the folder itself: its figures compare only with
    one another."""
    machine = folder_machine_record(folder)
    if machine is not None:
        return json.dumps({k: machine.get(k) for k in MACHINE_KEYS}, sort_keys=True)
    return f"machine not recorded: {folder.name}"


def comparison_problems(markdown: str, page: Path, name: str, results: Path = RESULTS) -> list[str]:
    """Sentences whose figures no one machine's cited results hold together, as
    'page:line: figures: why'."""
    problems = []
    for section in sections(markdown):
        quoted = NOT_MEASURED.get((name, section.heading), set())
        cited = cited_results(page, section, results)
        for block in section.blocks:
            for offset, sentence in sentences(block.text):
                line = block.line_of(offset)
                found = [f for f in figures_in(sentence, line) if f.text not in quoted]
                machines = [
                    {machine_key(p.parent) for p in cited if not figure_problem(f, file_numbers(p))}
                    for f in found
                ]
                if len(found) < 2 or not all(machines) or set.intersection(*machines):
                    continue
                where = "; ".join(
                    f"{f.shown} from {' or '.join(sorted(m))}"
                    for f, m in zip(found, machines, strict=True)
                )
                problems.append(f"{name}:{line}: figures of two machines in one sentence: {where}")
    return problems


# --- Tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("page", documentation_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    assert page.exists()
    problems = relative_link_problems(page)
    assert not problems, "broken links:\n" + "\n".join(problems)


@pytest.mark.parametrize("page", documentation_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_names_a_path_outside_the_repository(page: Path) -> None:
    """A reader has the repository alone: not the development machines' shared folder."""
    lines = page.read_text(encoding="utf-8").splitlines()
    outside = [
        f"{number}: {line.strip()}" for number, line in enumerate(lines, 1) if OUTSIDE.search(line)
    ]
    assert not outside, f"{page.name} names paths outside the repository:\n" + "\n".join(outside)


def test_every_figure_comes_from_the_results_file_its_section_cites() -> None:
    problems = []
    for page in documentation_pages():
        name = str(page.relative_to(ROOT))
        problems += figure_problems(page.read_text(encoding="utf-8"), page, name)
    assert not problems, f"{len(problems)} figures without a source:\n" + "\n".join(problems)


def test_figures_compared_in_one_sentence_come_from_one_machine() -> None:
    problems = []
    for page in documentation_pages():
        name = str(page.relative_to(ROOT))
        problems += comparison_problems(page.read_text(encoding="utf-8"), page, name)
    assert not problems, f"{len(problems)} sentences mix machines:\n" + "\n".join(problems)


def test_the_allow_list_names_sections_and_figures_that_exist() -> None:
    for (name, heading), quoted in NOT_MEASURED.items():
        markdown = (ROOT / name).read_text(encoding="utf-8")
        section = next((s for s in sections(markdown) if s.heading == heading), None)
        assert section is not None, f"{name} has no section {heading!r}"
        shown = {f.text for block in section.blocks for f in figures_in(block.text)}
        assert quoted <= shown, (
            f"allowed but absent from {name} '{heading}': {sorted(quoted - shown)}"
        )


def test_docs_pages_say_what_they_cover_and_link_back_to_the_readme() -> None:
    for page in sorted(ROOT.glob("docs/*.md")):
        lines = [line for line in page.read_text(encoding="utf-8").splitlines() if line.strip()]
        assert lines[0].startswith("# "), f"{page.name} starts with its title"
        assert "](../README.md" in lines[1], f"{page.name}: the line under the title links README"


def test_readme_is_a_front_door_with_the_two_commands_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme) <= README_BUDGET, f"README.md is {len(readme)} characters"
    assert DEMO_COMMAND in readme and TEST_COMMAND in readme
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


# The checker itself, on small pages citing temporary results files.


@pytest.fixture()
def results_file(tmp_path: Path) -> Path:
    results = tmp_path / "benchmarks" / "results" / "demo"
    results.mkdir(parents=True)
    (results / "demo.json").write_text(
        '{"ndcg_at_10": 0.25231, "peak_rss_mib": 1613.2, "index_bytes": [11983186, 1534258],'
        ' "share": 0.887, "seconds": 371.6, "documents": 5183}'
    )
    (results / "table.md").write_text("| nDCG@10 |\n|---|\n| 0.117 |\n")
    return results / "demo.json"


def check(
    markdown: str, tmp_path: Path, not_measured: dict[tuple[str, str], set[str]] | None = None
) -> list[str]:
    """figure_problems of a page docs/page.md in tmp_path, against tmp_path's results."""
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir(exist_ok=True)
    results = tmp_path / "benchmarks" / "results"
    return figure_problems(markdown, page, "docs/page.md", not_measured or {}, results)


def test_the_checker_finds_a_stale_figure_and_passes_a_present_one(
    results_file: Path, tmp_path: Path
) -> None:
    page = (
        "# Results\n\n"
        "## SciFact\n\n"
        "From [the run](../benchmarks/results/demo/demo.json): nDCG@10 0.2523 (was 0.2481),\n"
        "1,613 MiB peak, 12.0 MB on disk, 89% junk, 33 bytes per token.\n"
    )
    problems = check(page, tmp_path)
    assert [p.split(" in ")[0] for p in problems] == [
        "docs/page.md:5: 0.2481",
        "docs/page.md:6: 33 bytes",
    ]
    assert all("(cited: benchmarks/results/demo/demo.json)" in p for p in problems)


def test_a_figure_needs_a_citation_in_its_own_section(results_file: Path, tmp_path: Path) -> None:
    page = (
        "## Cited\n\nSee [results](../benchmarks/results/demo/).\n\n"
        "### Not cited\n\nnDCG@10 0.2523.\n"
    )
    assert check(page, tmp_path) == [
        "docs/page.md:7: 0.2523 in 'Not cited': no results file cited (cited: none)"
    ]


def test_a_figure_is_no_more_precise_than_its_source(results_file: Path, tmp_path: Path) -> None:
    page = "See [the table](../benchmarks/results/demo/table.md): 0.117 and 0.1170.\n"
    assert [p.split(" in ")[0] for p in check(page, tmp_path)] == ["docs/page.md:1: 0.1170"]


def test_computed_figures_show_their_arithmetic(results_file: Path, tmp_path: Path) -> None:
    cite = "[run](../benchmarks/results/demo/demo.json)"
    good = f"{cite}: 7.81x (`11,983,186 / 1,534,258`), 13.9 documents/s (`5183 / 371.6`).\n"
    assert check(good, tmp_path) == []
    wrong_result = f"{cite}: 7.9x (`11,983,186 / 1,534,258`).\n"
    assert "not 7.9" in check(wrong_result, tmp_path)[0]
    made_up_operand = f"{cite}: 7.81x (`11,983,186 / 1,534,000`).\n"
    assert "operands 1,534,000" in check(made_up_operand, tmp_path)[0]


def test_settings_counts_versions_and_estimates_are_not_figures() -> None:
    text = (
        "tau 2 keeps 288 of 576 dims; 5,183 documents, K = 1000, top-10, nDCG@10, 10^6 vectors, "
        "8-byte ids, a 2-MiB tmpfs, Python 3.10+, FAISS 1.15.1, SmolLM2-135M, 8.8M passages, "
        "commit 3b8d687, ~29 h, `--dense-weight 0.5`, 49152 x 288, arXiv 2606.07502"
    )
    assert figures_in(text) == []
    shown = [(f.text, f.unit) for f in figures_in("0.10 / 0.06 ms, 47-77% of folds, 2.8x, 343 s")]
    assert [(f.text, f.unit) for f in figures_in("about 40 minutes, 2 hours")] == [
        ("40", "minutes"),
        ("2", "hours"),
    ]
    assert shown == [
        ("0.10", "ms"),
        ("0.06", "ms"),
        ("47", "%"),
        ("77", "%"),
        ("2.8", "x"),
        ("343", "s"),
    ]


def test_quoted_figures_are_allowed_only_where_listed(results_file: Path, tmp_path: Path) -> None:
    page = "## Reference\n\nThe issue's probe read 0.205.\n\n## Other\n\nIt read 0.205.\n"
    problems = check(page, tmp_path, {("docs/page.md", "Reference"): {"0.205"}})
    assert [p.split(" in ")[0] for p in problems] == ["docs/page.md:7: 0.205"]


def test_the_stale_figures_of_the_old_readme_are_caught() -> None:
    """The figures the docs issue found stale, against the files their sections now cite."""
    smollm2 = RESULTS / "scifact-smollm2" / "results.md"
    stale = {
        smollm2: ["0.2481", "0.3099", "0.0905", "0.1753", "0.1170", "0.1832", "0.2206", "11.9 MB"],
        RESULTS / "bm25-memory" / "bm25_memory.json": ["33 bytes"],
        RESULTS / "build-scaling" / "build_scaling.md": ["5.6"],
    }
    for path, figures in stale.items():
        for written in figures:
            (figure,) = figures_in(written)
            assert figure_problem(figure, file_numbers(path)) is not None, (written, path)
