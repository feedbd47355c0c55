"""The README's data dictionary is the one the code declares."""

from pathlib import Path

from pipeline.schema import markdown


def test_readme_columns_section_matches_the_declared_schemas() -> None:
    text = Path(__file__).parent.parent.joinpath("README.md").read_text(encoding="utf-8")
    section = text.split("<!-- schema:start", 1)[1].split("-->", 1)[1]
    section = section.split("<!-- schema:end -->", 1)[0]
    assert section.strip() == markdown().strip()
