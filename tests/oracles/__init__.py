"""nanoae against the real frameworks: TensorFlow and PyTorch as oracles (issue 4).

A package, so that its module names (``oracles.test_...``) never clash with the
test modules one level up.
"""
