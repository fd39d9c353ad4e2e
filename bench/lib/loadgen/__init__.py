"""The load generator (picows + uvloop): one process, pinned to CPU 1 by the driver.

    .venv/bin/python -m bench.lib.loadgen {fanout,echo,rate,persist,idle} --url URL [...]

``__main__`` is its command line (``--help`` describes every scenario);
``common`` the shared measuring and connection code; one module per scenario
family (``fanout`` with ``rate``, ``echo``, ``persist``, ``idle``). Its
defaults are for runs by hand: bench/scenarios/ pass their parameters
explicitly. Keep its imports to the standard library, picows and uvloop.
"""
