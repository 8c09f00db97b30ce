/**
 * effect-pg-queue: what a host app imports. An Effect host composes `Config` (settings from the environment or
 * code, one validation), `Main` (the database layer from settings, the logger layer), `Queue`, `Worker`, `Task`;
 * any other Node host uses the Promise facade, `startWorker` and `createClient` (`Client`).
 */
export * as Barrier from "./Barrier.ts"
export * as Client from "./Client.ts"
export { createClient, startWorker } from "./Client.ts"
export * as Config from "./Config.ts"
export * as Database from "./Database.ts"
export * as Embedded from "./Embedded.ts"
export * as ErrorText from "./ErrorText.ts"
export * from "./Errors.ts"
export * as Executions from "./Executions.ts"
export * as ExecutionStatus from "./ExecutionStatus.ts"
export * as Health from "./Health.ts"
export * as Json from "./Json.ts"
export * as LeaderLease from "./LeaderLease.ts"
export * as Leadership from "./Leadership.ts"
export * as Main from "./Main.ts"
export * as Metrics from "./Metrics.ts"
export * as Migrations from "./Migrations.ts"
export * as Names from "./Names.ts"
export * as ProcessRegistry from "./ProcessRegistry.ts"
export * as Queue from "./Queue.ts"
export * as Reaper from "./Reaper.ts"
export * as Task from "./Task.ts"
export * as Wakeup from "./Wakeup.ts"
export * as Worker from "./Worker.ts"
