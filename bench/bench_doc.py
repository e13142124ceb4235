"""Each bench's table in docs/BENCHMARKS.md, between its own markers
(`<!-- NAME:start -->` ... `<!-- NAME:end -->`), replaced on each run; a
bench run for the first time appends a section of its own."""
import re

DOC = "docs/BENCHMARKS.md"


def write_block(name, title, script, table):
    """Put `table` between NAME's markers (a new `## title` section naming
    `script` when there are none yet), and print it."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{table}\n{end}"
    text = open(DOC).read()
    if start in text:
        text = re.sub(re.escape(start) + ".*" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text += f"\n## {title}\n\n`{script}`\n\n{block}\n"
    open(DOC, "w").write(text)
    print(table)
