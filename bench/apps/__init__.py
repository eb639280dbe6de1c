"""The same two tasks for every system, imported by the harness and its workers.

``noop(i)`` does nothing (throughput).  ``stamp(sent)`` appends the time it
started to ``$BENCH_STAMP_FILE`` (push-to-start latency).
"""
