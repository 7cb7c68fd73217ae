"""An upper bound on the execution-history events of a state machine definition, from its structure.

Step Functions fails a Standard execution whose history reaches 25,000 events ("Maximum execution
history size", https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html), and a
Distributed Map's child executions each have a history of their own, not counted in the parent's
(https://docs.aws.amazon.com/step-functions/latest/dg/state-map-distributed.html). The events each
state writes are the HistoryEvent types of the API
(https://docs.aws.amazon.com/step-functions/latest/apireference/API_HistoryEvent.html):

- every state: <Type>StateEntered and <Type>StateExited (a Fail state: FailStateEntered; the
  execution's end event is counted once for the execution);
- a Task: TaskScheduled, TaskStarted and one of TaskSucceeded / TaskFailed / TaskTimedOut, plus
  TaskSubmitted for a callback (.waitForTaskToken) Task; each retry schedules, starts and ends the
  task again (3 more, 4 for a callback Task);
- an inline Map: MapStateStarted, MapStateSucceeded|Failed, and per item MapIterationStarted and
  MapIterationSucceeded|Failed around the item's own states (which are in the parent's history);
- a Distributed Map: MapStateStarted, MapRunStarted, MapRunSucceeded|Failed, MapStateSucceeded|
  Failed; its items' states are in the child executions' histories;
- the execution: ExecutionStarted and one end event.

The bound counts every state once at its most expensive (every retry taken), which holds because
the definitions checked here have no cycles (checked: a state is never reached again).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

HISTORY_LIMIT = 25_000
EXECUTION_EVENTS = 2
STATE_EVENTS = 2
TASK_EVENTS = 3
CALLBACK_EXTRA = 1  # TaskSubmitted
INLINE_MAP_EVENTS = 2
INLINE_ITERATION_EVENTS = 2
DISTRIBUTED_MAP_EVENTS = 4


def successors(state: Mapping[str, Any]) -> set[str]:
    found = {state[k] for k in ("Next", "Default") if k in state}
    found |= {c["Next"] for c in state.get("Catch", [])}
    found |= {c["Next"] for c in state.get("Choices", [])}
    return found


def assert_acyclic(states: Mapping[str, Any], start: str) -> None:
    """No state can be reached from itself, so each runs at most once per execution."""
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in done:
            return
        assert name not in visiting, f"cycle through {' -> '.join((*path, name))}"
        visiting.add(name)
        for nxt in successors(states[name]):
            visit(nxt, (*path, name))
        visiting.discard(name)
        done.add(name)

    visit(start, ())


def retries(state: Mapping[str, Any]) -> int:
    """The most retries a state can take: each retrier at most MaxAttempts (default 3), all of them."""
    return sum(int(r.get("MaxAttempts", 3)) for r in state.get("Retry", []))


def state_events(name: str, state: Mapping[str, Any], inline_items: Mapping[str, int]) -> int:
    kind = state["Type"]
    if kind == "Task":
        per_try = TASK_EVENTS + (CALLBACK_EXTRA if state["Resource"].endswith(".waitForTaskToken") else 0)
        return STATE_EVENTS + per_try * (1 + retries(state))
    if kind == "Map":
        processor = state.get("ItemProcessor") or state["Iterator"]
        if processor.get("ProcessorConfig", {}).get("Mode") == "DISTRIBUTED":
            return (STATE_EVENTS + DISTRIBUTED_MAP_EVENTS) * (1 + retries(state))
        per_item = INLINE_ITERATION_EVENTS + machine_events(processor, inline_items, execution=False)
        return (STATE_EVENTS + INLINE_MAP_EVENTS + inline_items[name] * per_item) * (1 + retries(state))
    if kind == "Parallel":
        branches = sum(machine_events(b, inline_items, execution=False) for b in state["Branches"])
        return STATE_EVENTS + 2 + branches
    return STATE_EVENTS


def machine_events(machine: Mapping[str, Any], inline_items: Mapping[str, int],
                   execution: bool = True) -> int:
    """Upper bound on the events of one execution of `machine` (or of one branch or iteration when
    `execution` is False); `inline_items` bounds the items of each inline Map, by state name (one
    missing from it raises: its bound must be stated)."""
    states = machine["States"]
    assert_acyclic(states, machine["StartAt"])
    events = sum(state_events(name, state, inline_items) for name, state in states.items())
    return (EXECUTION_EVENTS if execution else 0) + events


def distributed_children(machine: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The ItemProcessor of each Distributed Map, by state name: each runs as child executions."""
    return {name: state["ItemProcessor"] for name, state in machine["States"].items()
            if state["Type"] == "Map"
            and state.get("ItemProcessor", {}).get("ProcessorConfig", {}).get("Mode") == "DISTRIBUTED"}
