"""Debian release code names and numbers, declared once: the SBOM's purls carry the
release as `distro=debian-12`, and the tracker's data is keyed by the code name."""

from __future__ import annotations

from hardhost.core.errors import UsageError

# The releases whose security data the tracker publishes (and the next, for images made of
# testing). A suite not listed here is carried by name: `distro=debian-sid`.
RELEASE_NUMBERS: dict[str, str] = {
    "buster": "10", "bullseye": "11", "bookworm": "12", "trixie": "13", "forky": "14",
}
_SUITES = {number: suite for suite, number in RELEASE_NUMBERS.items()}
DISTRO_PREFIX = "debian-"


def distro(suite: str) -> str:
    """The purl `distro` qualifier of `suite`: `debian-12` for bookworm."""
    return DISTRO_PREFIX + RELEASE_NUMBERS.get(suite, suite)


def suite_of(distro_value: str, *, origin: str) -> str:
    """The code name a `distro` qualifier names: `debian-12`, `bookworm` or `debian-bookworm`
    (purl-spec's example uses the bare code name) all give `bookworm`."""
    name = distro_value.removeprefix(DISTRO_PREFIX)
    suite = _SUITES.get(name, name)
    if not suite or not suite.isascii() or not all(c.isalnum() or c in "-." for c in suite):
        raise UsageError(f"{origin}: {distro_value[:40]!r} is not a Debian release")
    return suite
