// The Distributed Map fields aws-local-stepfunctions 3.0.0 validates but does not execute, bound
// here so the local runner executes the deployed definition as it is. The library's Map runs every
// state with ProcessorConfig.Mode INLINE semantics: it reads items from ItemsPath only, keeps every
// iteration's output in the state and fails on the first failed iteration. For a Map whose
// ProcessorConfig.Mode is DISTRIBUTED this module does instead what the service documents:
//
// - ItemReader (Resource arn:aws:states:::s3:getObject, ReaderConfig InputType JSON or JSONL,
//   MaxItems): the items are read from the local S3 through the runner's bridge (POST /item-reader);
//   a read that fails is States.ItemReaderFailed.
//   https://docs.aws.amazon.com/step-functions/latest/dg/input-output-itemreader.html
// - ItemSelector with $$.Map.Item.Index / Value, evaluated by the library's own payload templates.
// - each item runs as a child execution of the ItemProcessor, with its own execution context (Id,
//   Name) and its own event stream (its history is not the parent's), at most MaxConcurrency at a
//   time (0 or absent: 10,000).
//   https://docs.aws.amazon.com/step-functions/latest/dg/state-map-distributed.html
// - ToleratedFailureCount / ToleratedFailurePercentage (default: none tolerated): past the
//   threshold no further child starts, running ones are stopped and the state fails with
//   States.ExceedToleratedFailureThreshold.
//   https://docs.aws.amazon.com/step-functions/latest/dg/maprun-fail-threshold.html
// - ResultWriter (Resource arn:aws:states:::s3:putObject, Parameters Bucket and Prefix): the
//   child executions' results are written as <Prefix>/<map run id>/SUCCEEDED_0.json, FAILED_0.json,
//   PENDING_0.json and manifest.json through the bridge (POST /result-writer), and the state's
//   result is {"MapRunArn", "ResultWriterDetails": {"Bucket", "Key": ".../manifest.json"}};
//   without a ResultWriter the result is the array of the children's outputs.
//   https://docs.aws.amazon.com/step-functions/latest/dg/input-output-resultwriter.html
// Fields not bound here (ItemBatcher, the *Path variants, WriterConfig, other readers) are refused
// with an error no Catch takes, so a definition using them cannot pass locally by accident.
import { randomUUID } from 'node:crypto';

const DEFAULT_CONCURRENCY = 10000;
const UNBOUND_FIELDS = ['ItemBatcher', 'MaxConcurrencyPath', 'ToleratedFailureCountPath',
  'ToleratedFailurePercentagePath'];

function stateError(name, cause, { catchable = true } = {}) {
  const error = new Error(cause ?? '');
  error.name = name;
  if (!catchable) {
    Object.defineProperty(error, 'isCatchable', { value: false });
    Object.defineProperty(error, 'isRetryable', { value: false });
  }
  return error;
}

function refuse(stateName, what) {
  return stateError('LocalRunnerError', `state ${stateName}: the local runner does not bind ${what}; `
    + 'add it to asl/distributed_map.mjs (with a test) before the definition uses it', { catchable: false });
}

// region, account and state machine name for ARNs, from the execution context the runner passes
function identity(context) {
  const parts = String(context?.Execution?.Id ?? '').split(':');
  return {
    partition: parts[1] || 'aws',
    region: parts[3] || 'us-east-1',
    account: parts[4] || '000000000000',
    machine: context?.StateMachine?.Name ?? parts[6] ?? 'local',
  };
}

function exceeded(state, failed, total) {
  const count = state.ToleratedFailureCount;
  const percentage = state.ToleratedFailurePercentage;
  if (count === undefined && percentage === undefined) return failed > 0;
  if (count !== undefined && failed > count) return true;
  return percentage !== undefined && total > 0 && (failed * 100) / total > percentage;
}

export function isDistributed(state) {
  return state?.ItemProcessor?.ProcessorConfig?.Mode === 'DISTRIBUTED';
}

export function bindDistributedMap({ MapStateAction, processPayloadTemplate, StateMachine, bridgeCall }) {
  const inline = MapStateAction.prototype.execute;

  async function readItems(action, input, context) {
    const state = action.stateDefinition;
    if (!state.ItemReader) {
      if (!state.ItemsPath) return input;
      return processPayloadTemplate({ 'items.$': state.ItemsPath }, input, context).items;
    }
    if (state.ItemsPath) throw refuse(action.stateName, 'ItemsPath together with ItemReader');
    const reader = state.ItemReader;
    const answer = await bridgeCall('/item-reader', {
      state: action.stateName,
      resource: reader.Resource,
      readerConfig: reader.ReaderConfig ?? {},
      parameters: processPayloadTemplate(reader.Parameters ?? {}, input, context),
    });
    if ('error' in answer) throw stateError(answer.error, answer.cause, { catchable: answer.catchable !== false });
    return answer.items;
  }

  async function writeResults(action, input, context, mapRun, results) {
    const writer = action.stateDefinition.ResultWriter;
    const answer = await bridgeCall('/result-writer', {
      state: action.stateName,
      resource: writer.Resource,
      parameters: processPayloadTemplate(writer.Parameters ?? {}, input, context),
      mapRunArn: mapRun.arn,
      mapRunId: mapRun.id,
      results,
    });
    if ('error' in answer) throw stateError(answer.error, answer.cause, { catchable: answer.catchable !== false });
    return answer.details;
  }

  async function executeDistributed(action, input, context, options) {
    const state = action.stateDefinition;
    for (const field of UNBOUND_FIELDS) if (field in state) throw refuse(action.stateName, field);
    if (state.ResultWriter?.WriterConfig) throw refuse(action.stateName, 'ResultWriter.WriterConfig');
    const who = identity(context);
    const label = state.Label ?? action.stateName;
    const arn = (kind, name) => `arn:${who.partition}:states:${who.region}:${who.account}:${kind}:${name}`;
    const mapRun = { id: randomUUID() };
    mapRun.arn = arn('mapRun', `${who.machine}/${label}:${mapRun.id}`);
    const childMachineArn = arn('stateMachine', `${who.machine}/${label}`);

    const items = await readItems(action, input, context);
    if (!Array.isArray(items)) {
      throw stateError('States.Runtime', 'the items of a Map state must be an array', { catchable: false });
    }
    const eventLogger = options.eventLogger;
    eventLogger.dispatch({ type: 'MapRunStarted', state: { name: action.stateName }, mapRunArn: mapRun.arn,
      items: items.length });
    const processor = new StateMachine(state.ItemProcessor, {
      ...options.stateMachineOptions, validationOptions: { noValidate: true },
    });
    const selector = state.ItemSelector ?? state.Parameters;
    const limit = state.MaxConcurrency || DEFAULT_CONCURRENCY;
    const outputs = new Array(items.length);
    const records = { SUCCEEDED: [], FAILED: [], PENDING: [] };
    const running = new Map();
    let nextIndex = 0;
    let failed = 0;
    let failing = false;

    const startChild = (index) => {
      const name = randomUUID();
      const executionArn = arn('execution', `${who.machine}/${label}:${name}`);
      const childInput = selector === undefined ? items[index]
        : processPayloadTemplate(selector, input, { ...context, Map: { Item: { Index: index, Value: items[index] } } });
      const childContext = {
        Execution: { Id: executionArn, Name: name, Input: childInput, RedriveCount: 0 },
        StateMachine: { Id: childMachineArn, Name: `${who.machine}/${label}` },
      };
      const started = new Date().toISOString();
      const child = processor.run(childInput, { ...options.runOptions, context: childContext });
      (async () => {
        for await (const event of child.eventLogs) {
          event.childExecution = name;
          eventLogger.forwardNestedMapEvent(event, index, action.stateName, options.rawInput);
        }
      })().catch(() => {});
      const record = {
        ExecutionArn: executionArn, Name: name, StateMachineArn: childMachineArn, StartDate: started,
        Input: JSON.stringify(childInput), InputDetails: { Included: true }, RedriveCount: 0,
      };
      const settled = child.result.then(
        (output) => {
          outputs[index] = output;
          records.SUCCEEDED.push({ ...record, Output: JSON.stringify(output), OutputDetails: { Included: true },
            Status: 'SUCCEEDED', StopDate: new Date().toISOString() });
        },
        (error) => {
          const reason = error?.cause ?? error;
          const aborted = error?.name === 'ExecutionAbortedError';
          if (!aborted) failed += 1;
          records.FAILED.push({ ...record, Status: aborted ? 'ABORTED' : 'FAILED',
            Error: aborted ? 'States.Aborted' : reason?.name ?? 'Error',
            Cause: aborted ? 'stopped because the Map Run failed' : reason?.message ?? '',
            StopDate: new Date().toISOString() });
        },
      ).then(() => { running.delete(index); });
      running.set(index, { child, settled });
    };

    while (nextIndex < items.length || running.size) {
      while (!failing && running.size < limit && nextIndex < items.length) startChild(nextIndex++);
      if (!running.size) break;
      await Promise.race([...running.values()].map((entry) => entry.settled));
      if (!failing && exceeded(state, failed, items.length)) {
        failing = true;
        for (const entry of running.values()) entry.child.abort();
      }
    }
    for (let index = nextIndex; index < items.length; index += 1) {
      records.PENDING.push({ Input: JSON.stringify(items[index]), InputDetails: { Included: true },
        Status: 'PENDING' });
    }
    const details = state.ResultWriter ? await writeResults(action, input, context, mapRun, records) : null;
    if (failing) {
      eventLogger.dispatch({ type: 'MapRunFailed', state: { name: action.stateName }, mapRunArn: mapRun.arn });
      throw stateError('States.ExceedToleratedFailureThreshold',
        `The specified tolerated failure threshold was exceeded: ${failed} of ${items.length} child `
        + `executions failed (Map Run ${mapRun.arn})`);
    }
    eventLogger.dispatch({ type: 'MapRunSucceeded', state: { name: action.stateName }, mapRunArn: mapRun.arn });
    const result = details ? { MapRunArn: mapRun.arn, ResultWriterDetails: details } : outputs;
    return action.buildExecutionResult(result);
  }

  MapStateAction.prototype.execute = function execute(input, context, options) {
    if (!isDistributed(this.stateDefinition)) return inline.call(this, input, context, options);
    return executeDistributed(this, input, context, options);
  };
}
