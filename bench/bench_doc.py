"""Each bench's table in docs/BENCHMARKS.md, between its own markers
(`<!-- NAME:start -->` ... `<!-- NAME:end -->`), replaced on each run; a
bench run for the first time appends a section of its own. Also wrk's
latency text in milliseconds, which every wrk bench reads."""
import re
import statistics

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


def wrk_ms(v):
    """wrk's latency text ("812.00us", "1.23ms", "2.00s") in milliseconds."""
    v = v.strip()
    for unit, f in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if v.endswith(unit):
            return float(v[:-len(unit)]) * f
    return float(v)


def mean_ms(s):
    """The mean, in milliseconds, of " / "-separated wrk latencies."""
    return statistics.mean(wrk_ms(x) for x in s.split(" / "))
