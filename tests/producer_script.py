"""A producer process for the crash tests: reports a task tree, prints its ids, then hangs.

``producer_script.py TARGET [cluster]``: with ``cluster`` the root is a cluster task.
"""

from __future__ import annotations

import sys
import time

from tm_client import Producer


def main() -> None:
    producer = Producer(sys.argv[1], module="import")
    cluster = sys.argv[2:] == ["cluster"]
    root = producer.task(
        "import", scope="file", entity="dump.csv", total=100, abortable=True, cluster=cluster
    )
    child = root.child("import", scope="chunk", total=10)
    child.progress(3)
    print(root.id, child.id, flush=True)
    time.sleep(600)


if __name__ == "__main__":
    main()
