"""The pages of the profiling report, one module per kind of page; `base` holds what they share.

Every page draws from the tables `msgprof.report.analysis` writes (and the provenance page from
the run's manifest.json and config.yaml); only `timeline` opens point directories, for the
per-second latency histograms and resource sample times that no table holds.
"""
