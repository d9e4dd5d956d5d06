"""The docs cannot rot: every ``jasmine ...`` command line in the README and docs/ names a real command whose flags
parse (nothing is run), and every link to a file or heading resolves."""

import contextlib
import io
import re
from pathlib import Path

import pytest

from jasmine.cli import COMMANDS, command_name

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Placeholders the docs use for values, and what the check parses in their place.
PLACEHOLDERS = {
    "N": "8",
    "K": "4",
    "S": "2",
    "C": "0.1",
    "DATA": "data/x",
    "RUN": "runs/x",
    "SPEC": "docs/ablations/prepend.toml",
    "DIR": "some/dir",
    "COMPONENT": "tokenizer",
    "NAME": "tiny",
    "DxF": "2x2",
    "A,B,...": "0,1",
    "PORT": "7860",
    "HOST:PORT": "10.0.0.1:1234",
    "I": "0",
    "B": "8",
    "$i": "0",
}
ELIDED = "..."


def _code_blocks_and_prose(text: str) -> tuple[list[str], str]:
    blocks, prose, inside, buf = [], [], False, []
    for line in text.splitlines():
        if line.startswith("```"):
            if inside:
                blocks.append("\n".join(buf))
                buf = []
            inside = not inside
        elif inside:
            buf.append(line)
        else:
            prose.append(line)
    return blocks, "\n".join(prose)


def commands_in(text: str) -> list[str]:
    """``jasmine ...`` command lines: lines of code blocks (joined across ``\\``; after ``uv run`` or a prompt) and
    inline code spans, which may wrap across lines in the prose."""
    blocks, prose = _code_blocks_and_prose(text)
    found = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r" # | && | \| |; ", line)[0]
            line = " ".join(line.split()).removesuffix(" &")
            m = re.match(r"^(?:[A-Z_]+=\S+ )*(?:uv run |\$ |make \w+\s+#\s*=\s*uv run )?(jasmine \S.*)$", line)
            if m:
                found.append(m.group(1))
    for span in re.findall(r"`([^`]+)`", prose):
        span = " ".join(span.split())
        m = re.match(r"^(?:[A-Z_]+=\S+ )*(?:uv run )?(jasmine [a-z].*)$", span)
        if m:
            found.append(m.group(1))
    return found


def argv_of(line: str) -> tuple[list[str], bool]:
    """A command line as argv: optional parts ``[...]`` kept, the first of ``a|b`` alternatives taken, placeholders
    replaced by values; and whether the line elides part of itself (``...``)."""
    words = line.replace("[", " ").replace("]", " ").split()[1:]
    elided = ELIDED in words
    argv = []
    for w in words:
        if w == ELIDED:
            continue
        if w in PLACEHOLDERS:
            w = PLACEHOLDERS[w]
        elif "|" in w and not w.startswith("-"):
            w = w.split("|")[0]
        argv.append(w)
    return argv, elided


def all_commands() -> list[tuple[str, str]]:
    return [(page.relative_to(ROOT).as_posix(), line) for page in PAGES for line in commands_in(page.read_text())]


def test_the_docs_hold_commands_for_every_command_group():
    names = {command_name(argv_of(line)[0]) for _, line in all_commands()}
    assert len(all_commands()) > 60
    assert set(COMMANDS) <= names, f"commands the docs never show: {sorted(set(COMMANDS) - names)}"


@pytest.mark.parametrize("page, line", all_commands(), ids=lambda v: v if "/" in v or v.endswith(".md") else None)
def test_every_documented_command_parses(page, line):
    argv, elided = argv_of(line)
    name = command_name(argv)
    if name is None and argv and all(not w.startswith("-") for w in argv) and len(argv) <= 1:
        assert any(c.startswith(argv[0] + " ") for c in COMMANDS), f"{page}: `{line}`: no such command group"
        return  # a command group named in prose (`jasmine train ...`)
    assert name is not None, f"{page}: `{line}`: no such command"
    for w in argv[len(name.split()) :]:
        assert not re.fullmatch(r"[A-Z][A-Z_]*", w), f"{page}: `{line}`: placeholder {w!r} has no value in PLACEHOLDERS"
    if len(argv) == len(name.split()):
        return  # the command named in prose: it exists
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            COMMANDS[name].parse(argv[len(name.split()) :], f"jasmine {name}")
            code = 0
        except SystemExit as e:
            code = e.code
    msg = err.getvalue()
    if code and elided:  # a line with "..." may leave out required flags, but nothing it shows may be wrong
        assert re.search(r"[Rr]equired", msg) and "Unrecognized" not in msg, f"{page}: `{line}`:\n{msg}"
    else:
        assert code in (0, None), f"{page}: `{line}`:\n{msg}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    _, prose = _code_blocks_and_prose(page.read_text())
    return {_slug(m) for m in re.findall(r"^#+ (.*)$", prose, flags=re.M)}


def links() -> list[tuple[str, str]]:
    out = []
    for page in PAGES:
        _, prose = _code_blocks_and_prose(page.read_text())
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if not re.match(r"^(https?|mailto):", target):
                out.append((page.relative_to(ROOT).as_posix(), target))
    return out


def test_every_link_to_a_file_or_heading_resolves():
    assert len(links()) > 30
    broken = []
    for page, target in links():
        path, _, anchor = target.partition("#")
        file = (ROOT / page).parent / path if path else ROOT / page
        if not file.exists():
            broken.append(f"{page}: {target} (no file {path})")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{page}: {target} (no heading #{anchor} in {file.relative_to(ROOT)})")
    assert not broken, "\n".join(broken)


def test_the_checks_catch_a_bad_flag_a_bad_command_and_a_broken_anchor(tmp_path):
    argv, _ = argv_of("jasmine train lam --preset tiny --no-such-flag 3")
    with pytest.raises(SystemExit) as e, contextlib.redirect_stderr(io.StringIO()):
        COMMANDS["train lam"].parse(argv[2:], "jasmine train lam")
    assert e.value.code not in (0, None)
    assert command_name(argv_of("jasmine trian lam")[0]) is None
    assert commands_in(
        "text `jasmine eval --run\n  RUN --clips 32` more\n```bash\njasmine demo \\\n  --preset micro\n```"
    ) == ["jasmine demo --preset micro", "jasmine eval --run RUN --clips 32"]
    page = tmp_path / "p.md"
    page.write_text("# A title, with punctuation\n\n## Sub `code` heading\n")
    assert anchors(page) == {"a-title-with-punctuation", "sub-code-heading"}
