"""A producer process for the crash test: reports a task tree, prints its ids, then hangs."""

from __future__ import annotations

import sys
import time

from tm_client import Producer


def main() -> None:
    producer = Producer(sys.argv[1], module="import")
    root = producer.task("import", scope="file", entity="dump.csv", total=100, abortable=True)
    child = root.child("import", scope="chunk", total=10)
    child.progress(3)
    print(root.id, child.id, flush=True)
    time.sleep(600)


if __name__ == "__main__":
    main()
