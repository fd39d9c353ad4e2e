"""Code the benchmark scenarios share: the target servers (``servers``), PostgreSQL and
Redis (``services``), the load generator (``loadgen``), readings of CPU, memory and the
machine (``measure``), running a scenario against a target (``driver``), and the
results: files (``results``), tables (``report``) and PNGs (``plots``).
"""
