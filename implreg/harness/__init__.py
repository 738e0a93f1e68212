"""The harness: claims and their registry, verdicts, the pytest plugin, results, the report, the cli,
profiles, statistics and evidence.  It sits above the models (``matrix``, ``relu``) and the
certified numbers (``numerics``), and imports nothing from ``strategies`` or ``theorems``."""
