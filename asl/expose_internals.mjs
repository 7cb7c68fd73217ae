// Node module hook (registered by run.mjs): makes two internals of aws-local-stepfunctions 3.0.0
// importable, unchanged, so the runner can bind the Distributed Map fields the library validates but
// does not execute (ItemReader, ResultWriter, the tolerated failure threshold):
//   MapStateAction          the library's Map state (its processItem runs one iteration)
//   processPayloadTemplate  the library's Parameters/ItemSelector evaluation (JSONPath, intrinsics)
// Nothing of the library's code is changed; one export line is appended to its module text. A
// library whose text lacks either name fails loudly here instead of running without the binding.
const LIBRARY = '/aws-local-stepfunctions/build/main.node.esm.js';
const NAMES = ['MapStateAction', 'processPayloadTemplate'];

export async function load(url, context, nextLoad) {
  const loaded = await nextLoad(url, context);
  if (!url.endsWith(LIBRARY)) return loaded;
  const source = String(loaded.source);
  const missing = NAMES.filter((name) => !new RegExp(`(var|function) ${name}\\b`).test(source));
  if (missing.length) {
    throw new Error(`aws-local-stepfunctions has no ${missing.join(', ')}: the Distributed Map binding of `
      + 'asl/run.mjs was written for version 3.0.0 (asl/package.json); run `cd asl && npm ci`');
  }
  const exports = NAMES.map((name) => `${name} as __${name}`).join(', ');
  return { ...loaded, source: `${source}\nexport { ${exports} };\n`, shortCircuit: true };
}
