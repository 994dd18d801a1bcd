"""Print the README's option tables, generated from the config schema (lpt/config).

    python scripts/option_tables.py            # print them
    python scripts/option_tables.py --write    # replace the generated block of README.md with them

tests/test_schema.py checks that README.md holds exactly what this prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lpt.config.tables import markdown_tables, readme_tables

README = Path(__file__).resolve().parents[1] / "README.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the generated block of README.md")
    args = parser.parse_args()
    tables = markdown_tables()
    if not args.write:
        print(tables, end="")
        return
    text = README.read_text()
    old = readme_tables(text)
    if not old:
        raise SystemExit(f"{README}: no generated option tables to replace (add the markers first)")
    README.write_text(text.replace(old, tables))


if __name__ == "__main__":
    main()
