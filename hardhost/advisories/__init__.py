"""Known vulnerabilities of an image, offline: Debian's security tracker data matched against
the SBOM by source package and source version, in Debian's own version order, with
OpenVEX waivers, and the reports people read (a table, JSON, SARIF, OpenVEX, JUnit).

The builder gates on it and the verifier may watch a fleet with it, so it sits beside the
profiles in the house: it imports only the image contract and core."""
