// Runs one execution of a state machine definition with aws-local-stepfunctions, every Task state
// bound to a local HTTP bridge (ontosearch.workflow.local), which runs the project's real handler
// code for it; a Distributed Map's ItemReader and ResultWriter go to the same bridge
// (asl/distributed_map.mjs). Reads {definition, input, context, bridge} as JSON on stdin; writes
// state events as JSON lines to stderr and one JSON result line to stdout:
//   {"status": "SUCCEEDED", "output": ...} | {"status": "FAILED"|"TIMED_OUT", "error": ..., "cause": ...}
// Each StateEntered / StateExited event carries the byte size of the state's input / output as
// Step Functions counts it (the JSON text, UTF-8), for the 256 KiB limit checks.
import http from 'node:http';
import { register } from 'node:module';

import { bindDistributedMap } from './distributed_map.mjs';

// aws-local-stepfunctions asks for Node >= 22 only for Promise.withResolvers.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers() {
    let resolve;
    let reject;
    const promise = new this((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  };
}

register('./expose_internals.mjs', import.meta.url);
const library = await import('aws-local-stepfunctions');
const { StateMachine, ExecutionTimeoutError, ExecutionError } = library;

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

// node:http instead of fetch: fetch gives up on a response after 300 s, and a Task that waits for
// its token may legitimately take longer.
function post(url, body) {
  return new Promise((resolve, reject) => {
    const data = Buffer.from(JSON.stringify(body));
    const request = http.request(
      url,
      { method: 'POST', headers: { 'content-type': 'application/json', 'content-length': data.length } },
      (response) => {
        const parts = [];
        response.on('data', (part) => parts.push(part));
        response.on('end', () => {
          try {
            resolve(JSON.parse(Buffer.concat(parts).toString('utf8')));
          } catch (error) {
            reject(new Error(`bridge answered HTTP ${response.statusCode} without JSON: ${error.message}`));
          }
        });
      },
    );
    request.on('error', reject);
    request.end(data);
  });
}

function taskStates(states, found = {}) {
  for (const [name, state] of Object.entries(states)) {
    if (state.Type === 'Task') found[name] = state;
    if (state.Type === 'Map') taskStates((state.ItemProcessor ?? state.Iterator).States, found);
    if (state.Type === 'Parallel') state.Branches.forEach((branch) => taskStates(branch.States, found));
  }
  return found;
}

let taskToken = null;

function bridgeHandler(bridge, name, state) {
  return async (input) => {
    const answer = await post(`${bridge}/task`, {
      state: name,
      resource: state.Resource,
      heartbeatSeconds: state.HeartbeatSeconds ?? null,
      timeoutSeconds: state.TimeoutSeconds ?? null,
      token: taskToken,
      input,
    });
    if ('error' in answer) {
      const error = new Error(answer.cause ?? '');
      error.name = answer.error;
      throw error;
    }
    return answer.output;
  };
}

function emit(line) {
  process.stderr.write(`${JSON.stringify(line)}\n`);
}

function byteSize(value) {
  return value === undefined ? 0 : Buffer.byteLength(JSON.stringify(value), 'utf8');
}

const FORWARDED = new Set(['StateEntered', 'StateExited', 'StateFailed', 'StateRetried', 'StateCaught',
  'MapIterationFailed', 'MapRunStarted', 'MapRunSucceeded', 'MapRunFailed']);

async function forwardEvents(events) {
  for await (const event of events) {
    if (FORWARDED.has(event.type)) {
      emit({
        event: event.type,
        state: event.state?.name,
        index: event.index,
        child: event.childExecution,
        error: event.Error ?? event.error,
        cause: event.Cause ?? event.cause,
        inputBytes: event.type === 'StateEntered' ? byteSize(event.state?.input) : undefined,
        outputBytes: event.type === 'StateExited' ? byteSize(event.state?.output) : undefined,
        mapRunArn: event.mapRunArn,
        items: event.items,
      });
    }
  }
}

const job = await readStdin();
taskToken = job.context?.Task?.Token ?? null;
bindDistributedMap({
  MapStateAction: library.__MapStateAction,
  processPayloadTemplate: library.__processPayloadTemplate,
  StateMachine,
  bridgeCall: (path, body) => post(`${job.bridge}${path}`, body),
});
const handlers = Object.fromEntries(
  Object.entries(taskStates(job.definition.States)).map(([name, state]) => [name, bridgeHandler(job.bridge, name, state)]),
);
let result;
let forwarding = Promise.resolve();
try {
  const machine = new StateMachine(job.definition, { validationOptions: { checkArn: true, checkPaths: true } });
  const execution = machine.run(job.input, {
    overrides: { taskResourceLocalHandlers: handlers, retryIntervalOverrides: job.retryIntervalOverrides ?? {} },
    context: job.context,
  });
  forwarding = forwardEvents(execution.eventLogs).catch((error) => {
    emit({ raw: `event forwarding failed: ${error}` });
  });
  result = { status: 'SUCCEEDED', output: await execution.result };
} catch (error) {
  if (error instanceof ExecutionTimeoutError) {
    result = {
      status: 'TIMED_OUT',
      error: 'States.Timeout',
      cause: `the execution ran past the state machine's TimeoutSeconds (${job.definition.TimeoutSeconds} s)`,
    };
  } else if (error instanceof ExecutionError) {
    result = { status: 'FAILED', error: error.cause?.name ?? 'Error', cause: error.cause?.message ?? '' };
  } else {
    result = { status: 'FAILED', error: 'LocalRunnerError', cause: String(error?.stack ?? error) };
  }
}
// every event reported before the result: the logger closes at the execution's end, so this ends
// too (a timed-out execution's stragglers are not waited for past a second)
await Promise.race([forwarding, new Promise((resolve) => { setTimeout(resolve, 1000); })]);
// exit once both pipes are flushed: a large event line may still be queued (process.exit drops it)
process.stdout.write(`${JSON.stringify(result)}\n`, () => {
  process.stderr.write('', () => process.exit(0));
});
