"""Checks the Markdown: every relative link resolves (external links are not fetched), and
every Python snippet compiles (Rust snippets are doctests of the crates; shell snippets
are commands). Exits 1 listing what is broken."""
import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parent.parent
link = re.compile(r"\]\(([^)\s]+)\)")
broken = []
files = [p for p in root.rglob("*.md") if "target" not in p.parts and ".git" not in p.parts]
for md in files:
    text = md.read_text(encoding="utf-8")
    # Links inside code blocks are examples, not links.
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    for target in link.findall(text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if not (md.parent / path).exists():
            broken.append(f"{md.relative_to(root)}: {target}")
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
print(f"{len(files)} Markdown files, {snippets} Python snippets compiled, {len(broken)} problems")
sys.exit(1 if broken else 0)
