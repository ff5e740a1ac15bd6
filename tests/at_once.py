"""Start the same work in two threads at the same instant (a barrier), for tests of concurrent trainers."""

import threading
from typing import Callable, TypeVar

T = TypeVar("T")


def twice_at_once(work: Callable[[], T], timeout: float = 600.0) -> list[T]:
    """Run `work` in two threads released together; their results, in the order they finished."""
    results: list[T] = []
    barrier = threading.Barrier(2)

    def go() -> None:
        barrier.wait()
        results.append(work())

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    return results
