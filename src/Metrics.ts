/**
 * Prometheus metrics of the worker and the reaper, as Effect metrics (rendered by Health's /metrics).
 */
import { Metric } from "effect"

export const jobsProcessed = Metric.counter("pgq_jobs_processed_total", {
  description: "Jobs whose handler succeeded and whose ack committed"
})
export const jobsFailed = Metric.counter("pgq_jobs_failed_total", {
  description: "Job attempts that failed (retried, discarded or dead-lettered)"
})
export const jobsRetried = Metric.counter("pgq_jobs_retried_total", { description: "Failed attempts scheduled for a retry" })
export const jobsDeadLettered = Metric.counter("pgq_jobs_dead_lettered_total", {
  description: "Jobs moved to the dead-letter table"
})
export const jobsStale = Metric.counter("pgq_jobs_stale_total", {
  description: "Acks/fails refused by the attempt fence (the job was re-claimed elsewhere)"
})
export const jobsReleased = Metric.counter("pgq_jobs_released_total", {
  description: "Unfinished jobs given back at shutdown"
})
export const claimLatency = Metric.histogram("pgq_claim_latency_seconds", {
  description: "Round trip of one claim statement",
  boundaries: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]
})
export const startLatency = Metric.histogram("pgq_enqueue_to_start_seconds", {
  description: "From enqueue (server clock) to the claim that started the job",
  boundaries: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
})
export const inFlight = Metric.gauge("pgq_jobs_in_flight", { description: "Jobs running in this process" })
export const leaseRenewFailures = Metric.counter("pgq_lease_renew_failures_total", {
  description: "Renewals of in-flight leases that failed or found the job no longer ours"
})
export const barrierBatches = Metric.counter("pgq_barrier_batches_total", {
  description: "Barrier batches whose completion was counted (the last one fires the callback)"
})
export const barrierCallbacks = Metric.counter("pgq_barrier_callbacks_total", {
  description: "Barrier callbacks enqueued by the last batch of their execution"
})
export const barrierSkipped = Metric.counter("pgq_barrier_batches_skipped_total", {
  description: "Batches not run because their execution had already ended (stopped, aborted, recovered)"
})
export const barrierAbandoned = Metric.counter("pgq_barrier_batches_abandoned_total", {
  description: "Batch completions acked but not counted: their barrier was gone, or they were duplicates"
})
export const barrierAborts = Metric.counter("pgq_barrier_aborts_total", {
  description: "Executions ended ERROR because one of their batches failed for good"
})
