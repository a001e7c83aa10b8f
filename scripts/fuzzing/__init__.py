"""pvpatch's fuzzing machinery: structure-aware mutants of every input a command reads.

Test code, not part of the installed package (nothing under ``src/`` imports it): ``make fuzz``
drives it through ``scripts/fuzz.py``, and ``tests/test_fuzz.py`` runs a short pass in
``make test``. Both put ``scripts/`` on ``sys.path`` to import it.
"""
