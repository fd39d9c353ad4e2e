"""One module per scenario; each states its parameters, and why, at the top and
runs on its own with bench/run.py's options (``python -m bench.scenarios.fanout
--help``). bench/run.py runs them all:

- ``fanout``: ``fanout100``, ``fanout1000`` (deliveries/s to one room, latency)
- ``echo``: ``echo`` (ping/pong round trips/s)
- ``persist``: ``persist``, ``persist-pg`` (acked msgs/s on SQLite, PostgreSQL)
- ``idle``: ``idle``, ``idle-noroom``, ``idle50k`` (memory per idle connection)
- ``crossnode``: ``crossnode`` (fan-out across three nodes vs one),
  ``crossnode-latency`` (its fixed step only, this tree against the base)
- ``scaleout``: ``scaleout`` (one node's CPU as 1 to 6 nodes, each with its
  own room, grow)
- ``loadgens``: ``bench/run.py --compare-loadgens`` (picows vs Node's ws client)

and the one-off investigations, each its own program with its own options:
``idle_memory`` (where idle memory goes: tracemalloc), ``upload_memory``
(RSS after big uploads), ``pg_diagnose`` (where persisted chat spends its
time on PostgreSQL).
"""
