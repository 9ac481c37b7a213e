// Runs an Amazon States Language definition in aws-local-stepfunctions (package.json pins it), an interpreter of
// the States Language (https://states-language.net/spec.html): choices, paths, intrinsic functions, Retry,
// Catch and timeouts are its own. Each Task state is performed by a task server the caller runs (POST
// {state, resource, input} to its URL; it answers {output} or {error, cause}), so the task's real service call
// happens there; Wait states and retry pauses are shortened to nothing.
//
//   node run_asl.cjs DEFINITION.json INPUT_JSON CONTEXT_JSON TASK_SERVER_URL
//
// Prints one JSON object: {"status": "SUCCEEDED" | "FAILED", "output" | "error", "cause", "states": [entered]}.
"use strict";

// Promise.withResolvers (ES2024) is used by the interpreter; Node 20 lacks it (Node 22 has it).
if (!Promise.withResolvers) {
  Promise.withResolvers = function withResolvers() {
    let resolve;
    let reject;
    const promise = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  };
}

const fs = require("fs");
const { StateMachine } = require("aws-local-stepfunctions");

async function perform(url, state, resource, input) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ state, resource, input }),
  });
  const answer = await response.json();
  if (answer.harness_error) {
    process.stderr.write(`run_asl: the task server failed: ${answer.harness_error}\n`);
    process.exit(3);
  }
  if (answer.error) {
    const error = new Error(answer.cause || answer.error);
    error.name = answer.error; // what Retry and Catch match (ErrorEquals)
    throw error;
  }
  return answer.output;
}

async function main() {
  const [definitionPath, inputJson, contextJson, url] = process.argv.slice(2);
  const definition = JSON.parse(fs.readFileSync(definitionPath, "utf8"));
  const tasks = {};
  const waits = {};
  const retries = {};
  for (const [name, state] of Object.entries(definition.States)) {
    if (state.Type === "Task") tasks[name] = (input) => perform(url, name, state.Resource, input);
    if (state.Type === "Wait") waits[name] = 0;
    if (state.Retry) retries[name] = 0;
  }
  const machine = new StateMachine(definition);
  const execution = machine.run(JSON.parse(inputJson), {
    overrides: { taskResourceLocalHandlers: tasks, waitTimeOverrides: waits, retryIntervalOverrides: retries },
    context: JSON.parse(contextJson),
  });
  const states = [];
  const logging = (async () => {
    for await (const event of execution.eventLogs) {
      if (event.type === "StateEntered") states.push(event.state.name);
    }
  })();
  let report;
  try {
    report = { status: "SUCCEEDED", output: await execution.result };
  } catch (error) {
    // An execution that failed: the interpreter wraps the Fail state's (or the uncaught) error.
    const cause = error.cause || {};
    report = { status: "FAILED", error: cause.name || error.name, cause: cause.message || error.message };
  }
  await logging;
  // Exit once told: a task the interpreter timed out still waits for its answer, and would keep node alive.
  process.stdout.write(JSON.stringify({ ...report, states }) + "\n", () => process.exit(0));
}

main().catch((error) => {
  process.stderr.write(`run_asl: ${error.stack || error}\n`);
  process.exit(1);
});
