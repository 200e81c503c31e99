"""The test suite (a package, so its modules import tests.helpers without path settings)."""
