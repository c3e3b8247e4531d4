"""Checks that every relative link in the Markdown files resolves (external links are not
fetched). Exits 1 listing the broken ones."""
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
for b in broken:
    print("broken link:", b)
print(f"{len(files)} Markdown files, {len(broken)} broken relative links")
sys.exit(1 if broken else 0)
