"""Print the README's option tables, generated from the config schema (lpt/config); write them and the options of
the config files.

    python scripts/option_tables.py            # print the tables
    python scripts/option_tables.py --write    # replace the generated block of README.md with them, and the
                                               # generated options of every file in configs/ (lpt.config.files)

tests/test_schema.py checks that README.md holds exactly what this prints, and every config file what it writes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lpt.config.files import option_files, with_options
from lpt.config.tables import markdown_tables, readme_tables

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true",
                        help="replace the generated block of README.md and the generated options of configs/")
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
    for path, lines in option_files(ROOT / "configs").items():
        path.write_text(with_options(path.read_text(), lines))


if __name__ == "__main__":
    main()
