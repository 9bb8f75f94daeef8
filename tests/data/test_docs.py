"""docs/data.md is the contract users read: it must list exactly the columns the code enforces."""

import re

from leadre.data.contracts import CONTRACTS
from tests.conftest import REPO


def test_data_docs_list_every_contract_column_and_no_other():
    text = (REPO / "docs" / "data.md").read_text(encoding="utf-8")
    sections = re.split(r"^## ", text, flags=re.M)
    for name, table in CONTRACTS.items():
        section = next(s for s in sections if s.startswith(f"{name} "))
        documented = re.findall(r"^\| `(\w+)` \|", section, flags=re.M)
        assert documented == list(table.column_names), name
        for column in table.columns:
            row = next(line for line in section.splitlines() if line.startswith(f"| `{column.name}` |"))
            assert f"| {column.kind} |" in row, (name, column.name)
