"""What the tests share that is not a fixture: helpers, sample data and the makers behind the
fixtures in tests/conftest.py. Nothing here is collected as a test; bench/ may use it too."""
