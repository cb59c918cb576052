"""Which waiting request goes next, and which running sequence gives way: the scheduling
policy (vLLM's `--scheduling-policy`), asked by the scheduler at those two points.

- 'fcfs': every request is equal, and the scheduler's own fairness decides (nanovllm/scheduler.py:
  requests with nothing running first, oldest first, then the others in turn; the newest
  sequence of the request holding the most gives way). A request's `priority` must be 0.
- 'priority': a request's `priority` (an int, lower first, 0 by default) comes before all that.
  Only the waiting requests of the best priority present are admissible, and among them the
  same fairness decides. Running sequences get their step's blocks best priority first, and
  the one preempted when blocks run out is of the lowest priority running (among equals, the
  fair choice: with one sample each, the latest admitted), as vLLM v1's scheduler preempts the
  running request of the largest (priority, arrival). A request never gives up a slot to a
  request of lower priority.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from numbers import Integral
from typing import Protocol, TypeVar

from nanovllm.values.errors import InvalidRequestError
from nanovllm.values.limits import MAX_PRIORITY

SCHEDULING_POLICIES = ("fcfs", "priority")


class Ranked(Protocol):
    """A request, or a sequence (whose priority is its request's)."""

    @property
    def priority(self) -> int: ...


R = TypeVar("R", bound=Ranked)


class SchedulingPolicy:
    """'fcfs': all requests are equal; the scheduler's fairness alone decides."""

    name = "fcfs"

    def admissible(self, *lanes: Iterable[R]) -> tuple[Iterable[R], ...]:
        """Of each lane of waiting requests (in its order), those that may be admitted next."""
        return lanes

    def order(self, fair: Callable[[R], tuple]) -> Callable[[R], tuple]:
        """The order of requests or sequences, given the scheduler's own among equals: served
        from the least (running sequences get their blocks first), given way from the
        greatest (the one preempted)."""
        return fair

    def outranks(self, a: Ranked, b: Ranked) -> bool:
        """Whether `a` keeps its slots against `b`."""
        return False


class PriorityPolicy(SchedulingPolicy):
    """'priority': lower `priority` first; the scheduler's fairness among equals."""

    name = "priority"

    def admissible(self, *lanes: Iterable[R]) -> tuple[list[R], ...]:
        lanes = tuple(list(lane) for lane in lanes)
        best = min((r.priority for lane in lanes for r in lane), default=0)
        return tuple([r for r in lane if r.priority == best] for lane in lanes)

    def order(self, fair: Callable[[R], tuple]) -> Callable[[R], tuple]:
        return lambda c: (c.priority, *fair(c))

    def outranks(self, a: Ranked, b: Ranked) -> bool:
        return a.priority < b.priority


def policy_for(name: str) -> SchedulingPolicy:
    return PriorityPolicy() if name == "priority" else SchedulingPolicy()


def check_priority(policy: str, priority) -> int:
    """A request's `priority` under `policy`, as an int: an integer of 64 bits, and 0 unless
    priority scheduling is on (vLLM refuses the same)."""
    if (isinstance(priority, bool) or not isinstance(priority, Integral)
            or abs(priority) > MAX_PRIORITY):
        raise InvalidRequestError(f"priority must be an integer of 64 bits, got {priority!r}",
                                  "priority")
    if priority and policy != "priority":
        raise InvalidRequestError(
            f"Got priority {priority} but priority scheduling is not enabled (start the server "
            "with --scheduling-policy priority).", "priority")
    return int(priority)
