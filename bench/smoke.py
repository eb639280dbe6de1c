"""Check that the harness itself works: every system, every measurement, tiny sizes.

    bench/.venv/bin/python bench/smoke.py [--systems flask_pgtq,rq]

About a minute.  Not part of the test suite (tests/ must not need the peers).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import run  # noqa: E402
from bench.systems import ALL  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--systems", default=",".join(ALL))
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp, "smoke.json")
        # fmt: off
        run.main([
            "--quick", "--systems", opts.systems, "--repeat", "1",
            "--push-n", "50", "--batch-n", "300", "--drain1-n", "300", "--drain2-n", "300",
            "--latency-samples", "5", "--pgbench-seconds", "1", "--quiet-wait", "0",
            "--drain-timeout", "30", "--output", str(output),
        ])
        # fmt: on
        data = json.loads(output.read_text())
    passed = failed = 0
    for name in opts.systems.split(","):
        result = data["runs"][0]["systems"][name]
        checks = {
            "push": result["push"].get("per_s") is not None,
            "batch": result["batch"].get("per_s") is not None or "n/a" in result["batch"]["note"],
            "drain1": result["drain1"].get("per_s") is not None
            and not result["drain1"].get("note"),
            "drain2": result["drain2"].get("per_s") is not None
            and not result["drain2"].get("note"),
            "latency": result["latency"].get("received") == 5,
            "rss": (result["drain1"].get("rss") or {}).get("max_process_mib") is not None,
        }
        for check, ok in checks.items():
            status = "ok" if ok else "FAILED"
            print(f"{name} {check}: {status}")
            passed += ok
            failed += not ok
    if data["summary"].get("pgbench_insert_tps") is None:
        print("pgbench: FAILED")
        failed += 1
    else:
        passed += 1
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
