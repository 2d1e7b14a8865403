"""Throughput benchmarks: nanoae against TensorFlow and PyTorch on the tutorial model.

* :mod:`nanoae.benchmark.flops`        the work in a step (matmul FLOPs)
* :mod:`nanoae.benchmark.competitors`  each framework's training / inference step
* :mod:`nanoae.benchmark.worker`       one competitor, one process, one measurement
* :mod:`nanoae.benchmark.runner`       rounds of workers A B A B, medians, table, JSON, chart

Run with ``nanoae bench`` (or ``python benchmarks/run.py``).
"""
