"""The documentation a user reads agrees with the service and stands alone."""

from __future__ import annotations

import re
from pathlib import Path

from service.api.app import create_app
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[1]
OPERATION = re.compile(r"^### `(GET|POST|PUT|PATCH|DELETE) (/\S*)`$", re.MULTILINE)


def test_api_reference_lists_exactly_the_openapi_operations(tmp_path: Path) -> None:
    documented = OPERATION.findall((ROOT / "docs" / "api.md").read_text())
    assert len(documented) == len(set(documented)), "an operation is documented twice"
    schema = create_app(make_settings(tmp_path)).openapi()
    served = {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method in operations
    }
    assert set(documented) == served


def test_the_api_reference_names_every_registered_job_kind() -> None:
    """The kinds GET /jobs?kind= takes and JobRead's `kind` come from the registry; the
    reference a person reads lists the same ones, each described."""
    from service.job_kinds import KINDS

    text = (ROOT / "docs" / "api.md").read_text()
    listed = re.search(r"`\?kind=([a-z|]+)`", text)
    assert listed is not None and listed.group(1).split("|") == list(KINDS.names)
    for name in KINDS.names:
        assert f'`"{name}"`' in text, f"docs/api.md does not describe the {name!r} kind"


def test_no_document_links_outside_the_repository() -> None:
    for document in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        text = document.read_text()
        for target in re.findall(r"\]\(([^)]+)\)|`(\.\./[^`]*)`", text):
            link = next(part for part in target if part)
            if link.startswith(("http://", "https://", "#")):
                continue
            assert not link.startswith(".."), f"{document.name} links outside: {link}"
            assert (document.parent / link.split("#")[0]).exists(), f"{document.name}: {link}"
        assert "../shared" not in text, document.name
