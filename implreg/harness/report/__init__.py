"""The single-file HTML report: ``render.write_report(results, path)``; MathML math and inline SVG plots."""
