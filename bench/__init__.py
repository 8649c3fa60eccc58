"""The srl-ext benchmark harness (``pytest bench/``): parity with the reference, then time and peak
memory of each term and of the whole SRL loss, per backend; ``python bench/report.py`` tabulates."""
