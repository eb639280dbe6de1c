"""The same two tasks for every system, imported by the harness and its workers.

``noop(i)`` runs ``body.run()`` and nothing else (throughput: the body records
that it ran, see ``body.py``).  ``stamp(sent)`` appends the time it
started to ``$BENCH_STAMP_FILE`` (push-to-start latency).
"""
