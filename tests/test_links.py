"""Every relative link in the repository's Markdown (README.md, docs/*.md, the README of each folder) points at
a file or folder of the repository, and every `#anchor` at a heading of its file, by GitHub's anchor rules:
the heading's rendered text, lowercased, without punctuation except `-` and `_`, each space a `-`, and a
repeated heading numbered (`x`, `x-1`, `x-2`). A broken link fails naming the file, line and link."""
import re
from pathlib import Path
from urllib.parse import unquote

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*:|//)")


def markdown_files():
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted(REPO.glob("*/README.md")),
            *sorted(REPO.glob("tests/*/README.md"))]


def prose_lines(path: Path):
    """(line number, text) of the lines outside fenced code blocks."""
    fenced = False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            yield n, line


def slug(heading: str) -> str:
    """GitHub's anchor of a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link or image: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()  # inline HTML, code marks
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set:
    seen, out = {}, set()
    for _, line in prose_lines(path):
        m = HEADING.match(line)
        if m:
            s = slug(m.group(2))
            out.add(s if s not in seen else f"{s}-{seen[s]}")
            seen[s] = seen.get(s, 0) + 1
    return out


def broken_links(files, root: Path = REPO) -> list:
    """'file:line: (link): why' for every relative link or anchor of `files` that does not resolve in `root`."""
    bad, cache = [], {}
    for md in files:
        for n, line in prose_lines(md):
            for target in LINK.findall(re.sub(r"(`+).*?\1", "", line)):  # not in code spans
                if SCHEME.match(target):
                    continue
                where = f"{md.relative_to(root)}:{n}: ({target})"
                path, _, anchor = unquote(target).partition("#")
                dest = (md.parent / path).resolve() if path else md
                if root not in (dest, *dest.parents):
                    bad.append(f"{where}: points outside the repository")
                elif not dest.exists():
                    bad.append(f"{where}: no such file or folder")
                elif anchor and dest.suffix == ".md":
                    if anchor not in cache.setdefault(dest, anchors(dest) if dest.is_file() else set()):
                        bad.append(f"{where}: {dest.relative_to(root)} has no heading with anchor #{anchor}")
                elif anchor and not re.fullmatch(r"L\d+(-L\d+)?", anchor):
                    bad.append(f"{where}: #{anchor} is not a line anchor of a non-Markdown file")
    return bad


def test_slugs_follow_githubs_rules():
    assert slug("Llama-3.1 and Llama-3.2: what is the paper's and what is ours") == \
        "llama-31-and-llama-32-what-is-the-papers-and-what-is-ours"
    assert slug("NExT-QA — `data/nextqa/`") == "next-qa--datanextqa"
    assert slug("2. TOPA checkpoints") == "2-topa-checkpoints"
    assert slug("What `eval.py` writes (`--output_dir`)") == "what-evalpy-writes---output_dir"
    assert slug("See [the docs](docs/x.md) **now**") == "see-the-docs-now"


def test_checker_names_file_line_and_link(tmp_path):
    tmp_path = tmp_path.resolve()
    (tmp_path / "a.md").write_text("# Title\n## Part\n## Part\n```\n[skipped](nowhere.md)\n```\n"
                                   "[ok](#part-1) [ok](b.md#b) [ok](https://x.org/#y) `[code](nowhere.md)`\n"
                                   "[gone](missing.md) [anchor](#part-2) [up](../x.md) [img](b.md#nope)\n")
    (tmp_path / "b.md").write_text("# B\n")
    assert broken_links([tmp_path / "a.md"], tmp_path) == [
        "a.md:8: (missing.md): no such file or folder",
        "a.md:8: (#part-2): a.md has no heading with anchor #part-2",
        "a.md:8: (../x.md): points outside the repository",
        "a.md:8: (b.md#nope): b.md has no heading with anchor #nope"]


def test_every_relative_link_and_anchor_resolves():
    files = markdown_files()
    assert REPO / "docs" / "training.md" in files and REPO / "tests" / "fixtures" / "README.md" in files
    bad = broken_links(files)
    assert not bad, "broken links:\n" + "\n".join(bad)
