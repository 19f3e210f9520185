"""The documentation stands on its own and its recipes are at least well-formed.

What is checked, over every Markdown file that git tracks:

- **Links.** `[text](target)`, `![alt](target)`, `[id]: target` and `<https://…>`. An `https://` or
  `mailto:` target is accepted without fetching it. `http://` is refused unless the host is the
  local machine (`localhost`, `127.0.0.1`, `[::1]`). Any other target must resolve inside the
  repository, relative to the file that links it, to a tracked file or a directory holding
  tracked files; a `#fragment` must name a heading of the target file (GitHub's heading ids).
- **File references.** A word of prose, of an inline code span or of a fenced block that starts
  with a top-level entry of the repository (`shared/…`, `docs/x.md`, `./scripts/…`) must resolve
  from the repository root (`bench/sweep` may name the module `bench/sweep.py`); in prose and code
  spans, `./x` and `../x` resolve from the file, and a bare file name with a known extension
  (`jobs.md`, `host.json`) must be the name of a tracked file. A path that the top-level
  `.gitignore` ignores (`.venv/…`, `bench/results/…`, `local.settings.json`) is a generated or
  local file and is accepted.
- **No citations of documents outside the repository**: the design and reference notes the team
  kept beside the repository are not part of it, so no tracked text file may name them. Cite
  `docs/reference.md` (service facts) and `docs/architecture.md` (the design) instead.
- **Runnable shell blocks.** A fenced block whose info string is `sh`, `bash` or `shell` is
  *runnable*: it is meant to be pasted into bash as written, once the variables it uses are set.
  Each one must pass `bash -n` and must not contain `<placeholder>` words (use a variable that an
  earlier line sets). Output, pseudo-commands and templates go in `text` (or `console`) blocks,
  which are not run.
- **PowerShell blocks** (`powershell`, `pwsh`, `ps1`). There is no PowerShell on the project's
  machines (Microsoft's packages are not in Debian or PyPI), so each block is parsed with the
  tree-sitter PowerShell grammar (PyPI `tree-sitter-powershell`): unbalanced brackets or quotes,
  stray operators and broken pipelines fail. The grammar is not PowerShell's own parser: it is
  stricter in one known place (a comma list of bare words as a command argument, such as
  `Select-Object Name, Id`, must be quoted: `Select-Object 'Name', 'Id'`) and looser in others
  (it accepts a `try` without `catch` or `finally`). Because nothing runs the blocks, the section
  that holds one (from its `#` or `##` heading) must say which PowerShell it was written for:
  a sentence with `Written for` naming Windows PowerShell 5.1 or PowerShell 7.
- **docs/reference.md** keeps its own rule: every listed fact carries a sureness label (**doc**,
  **sdk**, **seen** or **unverified**) and a public https source.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath

import pytest
import tree_sitter
import tree_sitter_powershell

ROOT = Path(__file__).resolve().parents[2]

KNOWN_EXTENSIONS = (".md", ".py", ".json", ".bicep", ".yaml", ".yml", ".toml", ".txt", ".ps1", ".sh", ".cfg", ".ini")
RUNNABLE_SHELL = {"sh", "bash", "shell"}
POWERSHELL = {"powershell", "pwsh", "ps1"}
LOCAL_HOSTS = {"localhost", "127.0.0.1", "[::1]"}
# Built from parts so that this file does not cite them itself.
FOREIGN_DOCS = re.compile(r"\b(?:" + "REFER" + "ENCE|" + "DES" + r"IGN)\.md\b")
# Files that another change is already fixing; each entry says which. Remove an entry once its file
# is clean: the test does not fail on a stale entry, so a reviewer has to.
FOREIGN_DOCS_PENDING: dict[str, str] = {}


# -- the repository -------------------------------------------------------------------------------
@cache
def tracked() -> tuple[str, ...]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return tuple(p for p in out.decode().split("\0") if p and (ROOT / p).is_file())


@cache
def tracked_dirs() -> frozenset[str]:
    dirs = set()
    for path in tracked():
        parts = PurePosixPath(path).parts
        for i in range(1, len(parts)):
            dirs.add("/".join(parts[:i]))
    return frozenset(dirs)


@cache
def top_level() -> frozenset[str]:
    return frozenset(PurePosixPath(p).parts[0] for p in tracked())


@cache
def basenames() -> frozenset[str]:
    return frozenset(PurePosixPath(p).name for p in tracked())


@cache
def ignore_patterns() -> tuple[str, ...]:
    lines = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip() and not line.startswith(("#", "!")))


def is_ignored(path: str) -> bool:
    """True when the top-level .gitignore ignores `path` (a simple reading: no negation, no `**`)."""
    parts = PurePosixPath(path).parts
    for pattern in ignore_patterns():
        bare = pattern.strip("/")
        if "/" in bare:
            depth = len(PurePosixPath(bare).parts)
            if any(fnmatch.fnmatch("/".join(parts[:i]), bare) for i in range(depth, len(parts) + 1)):
                return True
        elif any(fnmatch.fnmatch(part, bare) for part in parts):
            return True
    return False


def resolves(path: str) -> bool:
    """A repository-relative path names a tracked file (or Python module), a directory of tracked
    files, or an ignored path."""
    clean = path.rstrip("/")
    if clean in ("", "."):
        return True
    files = set(tracked())
    return clean in files or f"{clean}.py" in files or clean in tracked_dirs() or is_ignored(clean)


def markdown_files() -> list[str]:
    return [p for p in tracked() if p.endswith(".md")]


def text_files() -> Iterator[tuple[str, str]]:
    for path in tracked():
        data = (ROOT / path).read_bytes()
        if b"\0" in data:
            continue
        try:
            yield path, data.decode("utf-8")
        except UnicodeDecodeError:
            continue


# -- Markdown, as far as these checks need it -----------------------------------------------------
@dataclass(frozen=True)
class Block:
    file: str
    line: int  # 1-based line of the opening fence
    info: str
    body: str
    section: str  # text from the nearest preceding `#`/`##` heading to the fence


@dataclass(frozen=True)
class Doc:
    path: str
    prose: tuple[tuple[int, str], ...]  # (line number, text) outside fenced blocks
    blocks: tuple[Block, ...]
    anchors: frozenset[str]


FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def slug(heading: str) -> str:
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


@cache
def parse(path: str) -> Doc:
    lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
    prose: list[tuple[int, str]] = []
    blocks: list[Block] = []
    anchors: dict[str, int] = {}
    section_start = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = FENCE.match(line)
        if fence:
            indent, marker, info = len(fence["indent"]), fence["fence"], fence["info"].lower()
            body: list[str] = []
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith(marker):
                body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
                j += 1
            section = "\n".join(lines[section_start:i])
            blocks.append(Block(path, i + 1, info, "\n".join(body) + "\n", section))
            i = j + 1
            continue
        heading = HEADING.match(line)
        if heading:
            base = slug(heading[2])
            count = anchors.get(base, 0)
            anchors[base] = count + 1
            if count:
                anchors[f"{base}-{count}"] = 1
            if len(heading[1]) <= 2:
                section_start = i
        prose.append((i + 1, line))
        i += 1
    return Doc(path, tuple(prose), tuple(blocks), frozenset(anchors))


LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
AUTOLINK = re.compile(r"<((?:https?|mailto):[^>\s]+)>")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def link_targets(doc: Doc) -> Iterator[tuple[int, str]]:
    for number, line in doc.prose:
        without_code = CODE_SPAN.sub("", line)
        for match in LINK.finditer(without_code):
            yield number, match[1]
        ref = REF_DEF.match(without_code)
        if ref:
            yield number, ref[1]
        for match in AUTOLINK.finditer(without_code):
            yield number, match[1]


def link_problem(doc: Doc, target: str) -> str | None:
    if target.startswith(("https://", "mailto:")):
        return None
    if target.startswith("http://"):
        host = re.match(r"http://([^/:?#]+|\[[^\]]+\])", target)
        return None if host and host[1].lower() in LOCAL_HOSTS else "plain http:// outside the local machine"
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
        return "a scheme other than https"
    path_part, _, fragment = target.partition("#")
    if not path_part:
        return None if fragment in doc.anchors else f"no heading #{fragment} in this file"
    resolved = (PurePosixPath(doc.path).parent / path_part).as_posix()
    normal = normalise(resolved)
    if normal is None:
        return "leaves the repository"
    if not resolves(normal):
        return "no such file in the repository"
    if fragment and normal.endswith(".md") and normal in set(tracked()) and fragment not in parse(normal).anchors:
        return f"no heading #{fragment} in {normal}"
    return None


def normalise(path: str) -> str | None:
    parts: list[str] = []
    for part in PurePosixPath(path).parts:
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts)


TOKEN_STRIP = "\"'()[]{},;:!?*|`"
PATHISH = re.compile(r"^(?:\.{1,2}/)?[A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.\-]*)*/?$")


def file_reference_problem(doc: Doc, token: str, *, in_code_block: bool) -> str | None:
    token = token.strip(TOKEN_STRIP)
    if token.endswith(".") and not token.endswith(".."):
        token = token[:-1]
    if not token or "://" in token or not PATHISH.match(token):
        return None
    relative = token.startswith(("./", "../"))
    root_form = token[2:] if token.startswith("./") else token
    first = PurePosixPath(root_form).parts[0] if root_form else ""
    if "/" in root_form and first in top_level():
        return None if resolves(root_form) else "no such file or directory from the repository root"
    if in_code_block:
        return None
    if relative:
        normal = normalise((PurePosixPath(doc.path).parent / token).as_posix())
        if normal is None:
            return "leaves the repository"
        return None if resolves(normal) else "no such file or directory"
    if "/" not in token and token.endswith(KNOWN_EXTENSIONS) and not token.startswith("."):
        return None if token in basenames() or is_ignored(token) else "no tracked file of that name"
    return None


def prose_tokens(line: str) -> Iterator[tuple[str, bool]]:
    """Words of a prose line, links and URLs removed; True for words inside a code span."""
    line = LINK.sub(" ", line)
    line = AUTOLINK.sub("", line)
    for match in CODE_SPAN.finditer(line):
        for word in match[2].split():
            yield word, True
    for word in CODE_SPAN.sub(" ", line).split():
        yield word, False


# -- the checks -----------------------------------------------------------------------------------
DOCS = markdown_files()


@pytest.mark.parametrize("path", DOCS)
def test_links_resolve(path: str) -> None:
    doc = parse(path)
    problems = [f"{path}:{n}: {target}: {why}" for n, target in link_targets(doc)
                if (why := link_problem(doc, target))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", DOCS)
def test_file_references_resolve(path: str) -> None:
    doc = parse(path)
    problems = []
    for number, line in doc.prose:
        for word, _in_span in prose_tokens(line):
            if "://" in word:
                continue
            why = file_reference_problem(doc, word, in_code_block=False)
            if why:
                problems.append(f"{path}:{number}: {word}: {why}")
    for block in doc.blocks:
        for offset, line in enumerate(block.body.splitlines(), start=1):
            for word in line.split():
                why = file_reference_problem(doc, word, in_code_block=True)
                if why:
                    problems.append(f"{path}:{block.line + offset}: {word}: {why}")
    assert not problems, "\n".join(problems)


def test_no_citations_of_documents_outside_the_repository() -> None:
    problems = []
    for path, text in text_files():
        if path in FOREIGN_DOCS_PENDING:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if FOREIGN_DOCS.search(line):
                problems.append(f"{path}:{number}: {line.strip()[:100]}")
    assert not problems, ("cite docs/reference.md or docs/architecture.md instead:\n" + "\n".join(problems))


def test_the_citation_scan_finds_what_it_must() -> None:
    assert FOREIGN_DOCS.search("see " + "REFER" + "ENCE.md, Bicep")
    assert FOREIGN_DOCS.search("(" + "DES" + "IGN.md invariant 4)")
    assert not FOREIGN_DOCS.search("see docs/reference.md and docs/architecture.md")


RUNNABLE = [b for path in DOCS for b in parse(path).blocks if b.info in RUNNABLE_SHELL]


def test_deploy_md_has_runnable_blocks() -> None:
    assert any(b.file == "docs/deploy.md" for b in RUNNABLE), "docs/deploy.md lost its ```sh blocks"


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: f"{b.file}:{b.line}")
def test_runnable_shell_blocks_parse(block: Block, tmp_path: Path) -> None:
    bash = shutil.which("bash")
    assert bash, "bash is needed to check the runnable blocks"
    script = tmp_path / "block.sh"
    script.write_text(block.body, encoding="utf-8")
    result = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{block.file}:{block.line}: bash -n:\n{result.stderr}"
    placeholders = re.findall(r"<[A-Za-z][\w .-]*>", block.body)
    assert not placeholders, (f"{block.file}:{block.line}: placeholders {placeholders} in a runnable block: "
                              "use a variable, or mark the block ```text")


@cache
def powershell_parser() -> tree_sitter.Parser:
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))


def powershell_errors(source: str) -> list[str]:
    tree = powershell_parser().parse(source.encode("utf-8"))
    found: list[str] = []

    def walk(node: tree_sitter.Node) -> None:
        if node.is_error or node.is_missing:
            snippet = source.encode("utf-8")[node.start_byte:node.end_byte].decode("utf-8", "replace")[:60]
            kind = f"missing {node.type}" if node.is_missing else "syntax error"
            found.append(f"line {node.start_point[0] + 1}: {kind}: {snippet!r}")
            return
        if node.has_error:
            for child in node.children:
                walk(child)

    walk(tree.root_node)
    return found


POWERSHELL_BLOCKS = [b for path in DOCS for b in parse(path).blocks if b.info in POWERSHELL]


def test_jobs_md_has_powershell() -> None:
    assert any(b.file == "docs/jobs.md" for b in POWERSHELL_BLOCKS)


@pytest.mark.parametrize("block", POWERSHELL_BLOCKS, ids=lambda b: f"{b.file}:{b.line}")
def test_powershell_blocks_parse(block: Block) -> None:
    errors = powershell_errors(block.body)
    assert not errors, f"{block.file}:{block.line}:\n" + "\n".join(errors)


@pytest.mark.parametrize("block", POWERSHELL_BLOCKS, ids=lambda b: f"{b.file}:{b.line}")
def test_powershell_blocks_say_what_they_were_written_for(block: Block) -> None:
    statements = [p for p in re.split(r"\n\s*\n", block.section) if "Written for" in p]
    assert statements, f"{block.file}:{block.line}: its section does not say what it was written for"
    assert any(re.search(r"PowerShell (5\.1|7)", s) for s in statements), (
        f"{block.file}:{block.line}: the 'Written for' statement names no PowerShell version")


@pytest.mark.parametrize(("source", "good"), [
    ("$a = @(1, 2) | Where-Object { $_ -gt 1 }\nif ($a) { 'x' }\n", True),
    ("Get-Item x |\n    Select-Object 'Name', 'Id' |\n    Export-Csv -LiteralPath y -Encoding UTF8\n", True),
    ("try { 1 } finally { 2 }\n", True),
    ("if ($a { 'x' }\n", False),
    ('$s = "unterminated\n', False),
    ("$h = @{ a = 1; b = 2\n", False),
    ("Get-Item x | Where-Object { $_.Name -eq 'y' \n", False),
    ("$x = 1 +\n", False),
], ids=["pipeline", "multi-line pipeline", "try-finally", "open paren", "open string", "open hashtable",
        "open script block", "dangling operator"])
def test_the_powershell_check_tells_good_from_broken(source: str, good: bool) -> None:
    assert (not powershell_errors(source)) is good


# -- docs/reference.md: every fact has a label and a source --------------------------------------
LABEL = re.compile(r"\*\*(doc|sdk|seen|unverified)\*\*")


def reference_facts() -> list[tuple[int, str]]:
    doc = parse("docs/reference.md")
    facts: list[tuple[int, str]] = []
    in_facts = False
    for number, line in doc.prose:
        if line.startswith("## "):
            in_facts = True
        if not in_facts:
            continue
        if line.startswith("- "):
            facts.append((number, line))
        elif line.startswith("  ") and facts and line.strip():
            facts[-1] = (facts[-1][0], facts[-1][1] + " " + line.strip())
        elif not line.strip() or line.startswith("#"):
            continue
    return facts


def test_reference_facts_have_a_label_and_a_source() -> None:
    facts = reference_facts()
    assert len(facts) > 40, "docs/reference.md lost its facts"
    problems = []
    for number, text in facts:
        if not LABEL.search(text):
            problems.append(f"docs/reference.md:{number}: no sureness label")
        if not re.search(r"\]\(https://", text):
            problems.append(f"docs/reference.md:{number}: no https source")
    assert not problems, "\n".join(problems)


# -- the checker itself ---------------------------------------------------------------------------
def test_the_link_checker_refuses_what_it_must() -> None:
    doc = parse("docs/jobs.md")
    assert link_problem(doc, "https://learn.microsoft.com/graph/errors") is None
    assert link_problem(doc, "http://127.0.0.1:10000/devstoreaccount1") is None
    assert link_problem(doc, "http://learn.microsoft.com/graph/errors") is not None
    assert link_problem(doc, "reference.md#windows-job-hosts") is None
    assert link_problem(doc, "reference.md#no-such-heading") is not None
    assert link_problem(doc, "missing.md") is not None
    assert link_problem(doc, "../../outside.md") is not None
    assert link_problem(doc, "ftp://example.com/x") is not None
    assert file_reference_problem(doc, "`shared/no_such_module.py`", in_code_block=False) is not None
    assert file_reference_problem(doc, "shared/errors.py", in_code_block=True) is None
    assert file_reference_problem(doc, "no-such-file.md", in_code_block=False) is not None
    assert file_reference_problem(doc, "bench/results/credentials.json", in_code_block=False) is None
    assert file_reference_problem(doc, "application/x-pkcs12", in_code_block=False) is None
