"""The mocks' synth works in a process where asyncio.run() already ran (it leaves no current loop).

Found in a full-suite run: a test that used asyncio.run() before the Pulumi tests made every later
synth fail with 'There is no current event loop in thread MainThread'.
"""

import asyncio

from pulumi_harness import synth_stack


def test_synth_after_asyncio_run_left_no_event_loop() -> None:
    asyncio.run(asyncio.sleep(0))
    result = synth_stack("dev")
    assert result.of_type("aws:sfn/stateMachine:StateMachine")
