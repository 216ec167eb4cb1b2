"""Write the API contract, ``openapi/openapi.json``, from ``create_app().openapi()``.

    python scripts/export_openapi.py           # regenerate
    python scripts/export_openapi.py --check   # exit 1 if the committed file differs (CI)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OUTPUT = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"


def render() -> str:
    """The schema as stable text: sorted keys, two-space indent, trailing newline."""
    from cpcnn.service.app.main import create_app
    from cpcnn.service.config import ApiSettings

    schema = create_app(ApiSettings(env="dev")).openapi()
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed file is out of date")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.is_file() else ""
        if current != text:
            print(f"{args.output} is out of date: run python scripts/export_openapi.py", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
