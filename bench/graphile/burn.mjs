// The graphile-worker side of the burn-down benchmark (bench/run): runs the
// `noop` jobs already queued in DATABASE_URL until none is left (`runOnce`),
// with the throughput options graphile-worker documents (website/docs/
// performance.md, "Quick stats", the configuration of perfTest/): 24
// concurrent jobs, a pool of 25 connections, a local queue of 500 jobs, and
// completions batched (`completeJobBatchDelay: 0`).
//
// Prints one JSON line: {"started": ms, "finished": ms, "succeeded": n},
// `started` when the worker pool was created (the database connected and
// graphile-worker's migrations checked), `finished` when `runOnce` returned
// (every job done and its completion committed), both in milliseconds since
// the Unix epoch with sub-millisecond precision, so the harness can combine
// several processes.
//
// Environment: DATABASE_URL (required), BURN_CONCURRENCY (default 24),
// BURN_LOCAL_QUEUE (default 500; 0 for the per-job mode).

import { EventEmitter } from "node:events";
import { runOnce } from "graphile-worker";

const connectionString = process.env.DATABASE_URL;
if (!connectionString) {
  console.error("burn.mjs: DATABASE_URL is not set");
  process.exit(2);
}
const concurrency = Number(process.env.BURN_CONCURRENCY ?? 24);
const localQueueSize = Number(process.env.BURN_LOCAL_QUEUE ?? 500);

const now = () => performance.timeOrigin + performance.now();
const events = new EventEmitter();
let started;
let succeeded = 0;
events.on("pool:create", () => {
  started ??= now();
});
events.on("job:success", () => {
  succeeded += 1;
});

// BURN_LOCAL_QUEUE=0: graphile-worker's per-job mode (its defaults: each job
// fetched, and completed, by a statement of its own).
const batching =
  localQueueSize > 0
    ? {
        localQueue: { size: localQueueSize },
        completeJobBatchDelay: 0,
        failJobBatchDelay: 0,
      }
    : {};
await runOnce(
  {
    preset: {
      worker: {
        connectionString,
        concurrentJobs: concurrency,
        maxPoolSize: concurrency + 1,
        ...batching,
        events,
      },
    },
  },
  { noop: async () => {} },
);
const finished = now();
console.log(JSON.stringify({ started, finished, succeeded }));
