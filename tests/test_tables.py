"""The one Markdown table writer."""

from icl.tables import markdown_table


def test_markdown_table_has_a_rule_and_one_line_per_row():
    assert markdown_table(["a", "b"], [[1, "x"], [2.5, None]]) == "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 | None |"
