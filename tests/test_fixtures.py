"""tests/fixtures/ is a copy of the shared reference fixtures (so a clone runs every test on its
own); where the shared set is at hand, the copy must be identical to it."""
import pytest

from tests.conftest import SHARED, VENDORED_FIXTURES


@pytest.mark.parametrize("method", ["cdl", "dupl"])
def test_fixture_copies_match_the_shared_ones(method):
    copy = VENDORED_FIXTURES / method
    names = sorted(p.name for p in copy.iterdir())
    assert "README.md" in names and any(n.endswith(".npz") for n in names)
    shared = SHARED / "fixtures" / method
    if not shared.is_dir():
        pytest.skip(f"{shared} not present: nothing to compare the copy with")
    assert sorted(p.name for p in shared.iterdir()) == names
    for name in names:
        assert (copy / name).read_bytes() == (shared / name).read_bytes(), name
