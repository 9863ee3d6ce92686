"""The message bus: obsbus's services talking over Kafka.

- ``topics``: the one table of topics (name, record type, key, partitions, retention).
- ``admin``: wait for a broker and create the topics (``python -m services.bus.admin``).
- ``transport``: a Kafka bus (kafka-python) and an in-memory bus with the same contract.
- ``runner``: the service loop around plain handler functions.

A local single-node broker for development and tests: ``deploy/kafka.sh start`` (``make
kafka``); a 3-broker cluster on loopback: deploy/cluster/README.md.
"""
