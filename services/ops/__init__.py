"""Operations: what a control room watches, folded from the topics and the status files.

Pure and without I/O of its own: the night's view (exposures, latencies, failures, dead
letters, blessings, swaps), the services' states, and the Prometheus metrics made from both.
The dashboard service (services/web/) feeds it and serves it.
"""
