"""Checks the Markdown: every relative link resolves (external links are not fetched), every
`#fragment` of a link to a Markdown file (or within the same file) names an anchor of that
file, and every Python snippet compiles (Rust snippets are doctests of the crates; shell
snippets are commands). Exits 1 listing what is broken.

An anchor is either an explicit `<a id="...">` / `<a name="...">` in the target file, or
the GitHub slug of one of its headings: the heading text with inline Markdown removed,
lowercased, every character that is not a letter, digit, space, `-` or `_` dropped, spaces
turned into `-`; a slug seen before gets `-1`, `-2`, ... appended. Fragments of links to
other files (source, images, directories) are not checked."""
import pathlib
import re
import sys
import urllib.parse

root = pathlib.Path(__file__).resolve().parent.parent
link = re.compile(r"\]\(([^)\s]+)\)")
fence = re.compile(r"```.*?```", flags=re.S)
heading = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", flags=re.M)
explicit = re.compile(r"""<a\s[^>]*?\b(?:id|name)\s*=\s*["']([^"']+)["']""", flags=re.I)


def strip_code_blocks(text):
    """The text without fenced code blocks: links and headings in them are examples."""
    return fence.sub("", text)


def slug(text):
    """GitHub's anchor for a heading whose source text is `text` (before deduplication)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w: Unicode letters, digits and `_`
    return text.replace(" ", "-")


_anchors = {}


def anchors(md):
    """Every fragment that resolves in the Markdown file `md`."""
    if md not in _anchors:
        text = strip_code_blocks(md.read_text(encoding="utf-8"))
        found = set(explicit.findall(text))
        seen = {}
        for _, title in heading.findall(text):
            base = slug(title)
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
        _anchors[md] = found
    return _anchors[md]


broken = []
files = [
    p
    for p in root.rglob("*.md")
    if "target" not in p.relative_to(root).parts and ".git" not in p.relative_to(root).parts
]
for md in files:
    # Links inside code blocks are examples, not links.
    text = strip_code_blocks(md.read_text(encoding="utf-8"))
    for target in link.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue
        path, _, fragment = target.partition("#")
        dest = (md.parent / path) if path else md
        if not dest.exists():
            broken.append(f"{md.relative_to(root)}: link {target}: no file {path}")
            continue
        if not fragment or dest.suffix.lower() != ".md" or not dest.is_file():
            continue
        fragment = urllib.parse.unquote(fragment)
        dest = dest.resolve()
        if fragment not in anchors(dest):
            shown = dest.relative_to(root) if dest.is_relative_to(root) else dest
            broken.append(
                f"{md.relative_to(root)}: link {target}: no anchor '#{fragment}' in {shown}"
                " (neither an <a id/name> nor a heading slug)"
            )
# Source files cite the method as `[method §N](docs/method.md#sN)` (any relative path to
# docs/method.md): every such anchor must exist, and no uncited "spec §" may remain.
method = root / "docs" / "method.md"
cite = re.compile(r"docs/method\.md#([\w-]+)")
sources = [
    p
    for p in root.rglob("*.rs")
    if "target" not in p.relative_to(root).parts and ".git" not in p.relative_to(root).parts
]
for src in sources + files:
    text = src.read_text(encoding="utf-8")
    for fragment in cite.findall(text) if src.suffix == ".rs" else []:
        if fragment not in anchors(method.resolve()):
            broken.append(f"{src.relative_to(root)}: cites docs/method.md#{fragment}, which does not exist")
    for line_no, line in enumerate(text.splitlines(), 1):
        if re.search(r"\bspec §", line, flags=re.I):
            broken.append(f"{src.relative_to(root)}:{line_no}: 'spec §' without a link to docs/method.md")
snippets = 0
for md in files:
    for i, code in enumerate(re.findall(r"```python\n(.*?)```", md.read_text(encoding="utf-8"), flags=re.S)):
        snippets += 1
        try:
            compile(code, f"{md.relative_to(root)}[python {i}]", "exec")
        except SyntaxError as e:
            broken.append(f"{md.relative_to(root)}: python snippet {i} does not compile: {e}")
for b in broken:
    print("broken:", b)
print(
    f"{len(files)} Markdown files, {len(sources)} Rust files, {snippets} Python snippets compiled,"
    f" {len(broken)} problems"
)
sys.exit(1 if broken else 0)
