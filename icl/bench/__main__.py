"""``python -m icl.bench``: the latency and throughput benchmark (``icl.bench.latency``)."""

from icl.bench.latency import cli

cli()
