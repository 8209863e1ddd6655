"""The test suite. A package so that ``tests.support`` is importable from the project root (the
benchmarks run as ``python benchmarks/x.py`` import it too); a package named ``tests`` installed by a
dependency cannot shadow it then."""
