"""Verification of every Triton op and the whole network against the PyTorch reference.

  ``tolerances``  the one tolerance table, the error statistics and the pass criterion (tests/harness.py imports it)
  ``cases``       per-op input builders and the op cases, shared by the tests, ``glsmamba verify`` and bench
  ``network``     the whole-network backend comparison
  ``report``      the rows, the printed table and the JSON form of ``glsmamba verify``
  ``driver``      ``glsmamba verify`` itself (:func:`glsmamba.verify.driver.verify`)

Importing any of them never imports Triton (``glsmamba verify`` turns the interpreter on first where needed).
"""
