"""Generate the blocking SDK, ``cpcnn/client/_sync.py``, from the asyncio one, ``_async.py``.

    python scripts/unasync.py           # regenerate
    python scripts/unasync.py --check   # exit 1 if the committed file differs (CI)

The rewrite is token substitution (httpcore's ``unasync`` approach): ``async def`` -> ``def``,
``await x`` -> ``x``, ``AsyncClient`` -> ``Client`` and the names in ``SUBSTITUTIONS``. Code that
cannot be spelled the same way on both sides lives in ``cpcnn/client/_concurrency.py`` as a pair
``async_name`` / ``name``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

CLIENT = Path(__file__).resolve().parents[1] / "cpcnn" / "client"
SOURCE = CLIENT / "_async.py"
OUTPUT = CLIENT / "_sync.py"

#: Whole identifiers (word boundaries on both sides) -> their blocking spelling.
SUBSTITUTIONS = {
    "AsyncClient": "Client",
    "AsyncBaseTransport": "BaseTransport",
    "AsyncIterator": "Iterator",
    "AsyncIterable": "Iterable",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "aclose": "close",
    "async_map_bounded": "map_bounded",
    "async_sleep": "sleep",
}
#: Keywords: ``async def``/``async with``/``async for`` lose ``async``, ``await`` disappears.
KEYWORDS = [(re.compile(r"\basync (def|with|for)\b"), r"\1"), (re.compile(r"\bawait "), "")]
IDENTIFIERS = re.compile(r"\b(" + "|".join(map(re.escape, SUBSTITUTIONS)) + r")\b")
HEADER = (
    "# Generated from _async.py by scripts/unasync.py: do not edit; edit _async.py and run scripts/unasync.py.\n"
    '"""``Client``: the blocking SDK, method for method the same as ``AsyncClient`` in ``_async.py``."""\n'
)
#: The source's module docstring (its first statement) is replaced by ``HEADER``.
DOCSTRING = re.compile(r'\A"""(?:.|\n)*?"""\n')


def unasync(source: str) -> str:
    """The blocking twin of an asyncio module's text."""
    body = DOCSTRING.sub("", source, count=1)
    if body == source:
        raise ValueError("the source must start with a module docstring")
    for pattern, replacement in KEYWORDS:
        body = pattern.sub(replacement, body)
    body = IDENTIFIERS.sub(lambda m: SUBSTITUTIONS[m.group(1)], body)
    leftover = re.search(r"\b(async|await|asyncio)\b|\bAsync\w*", body)
    if leftover:
        line = body.count("\n", 0, leftover.start()) + 1
        raise ValueError(f"{leftover.group(0)!r} survives on line {line} of the output: add it to SUBSTITUTIONS")
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed _sync.py is out of date")
    args = parser.parse_args(argv)
    text = unasync(SOURCE.read_text())
    if args.check:
        if not OUTPUT.is_file() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is out of date: run python scripts/unasync.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
