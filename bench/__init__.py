"""The performance benchmark of issue 6: ``python -m bench.run [--device cpu|cuda] [--quick]`` (``nox -s bench``)."""
