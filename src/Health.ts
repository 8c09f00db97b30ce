/**
 * The liveness and metrics HTTP server: /health, /healthz and /livez answer 200 while the loop's
 * heartbeat is fresh and 503 when it is stale (freshness only, never database reachability, so a brief
 * outage does not make an orchestrator restart a healthy process); /metrics is Prometheus text.
 */
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { Effect, Layer } from "effect"
import { HttpRouter, HttpServerResponse } from "effect/http"
import { PrometheusMetrics } from "effect/observability"
import { createServer } from "node:http"

export interface Liveness {
  /** Seconds since the loop last showed life; null when it never did (or is crash-looping). */
  readonly ageSeconds: number | null
  /** Extra fields for the JSON body; the core fields always win over them. */
  readonly extra?: Readonly<Record<string, unknown>>
}

export interface HealthCheck {
  /** e.g. `pgq_worker_poll`, `pgq_reaper_tick`. */
  readonly check: string
  /** e.g. `seconds_since_last_poll`. */
  readonly ageKey: string
  readonly staleAfterSeconds: number
  readonly liveness: Effect.Effect<Liveness>
}

/** The verdict and JSON body for one liveness reading; JSON never carries Infinity or NaN. */
export const verdict = (check: HealthCheck, reading: Liveness) => {
  const age = reading.ageSeconds !== null && Number.isFinite(reading.ageSeconds)
    ? Math.round(reading.ageSeconds * 1000) / 1000
    : null
  const healthy = age !== null && age <= check.staleAfterSeconds
  return {
    status: healthy ? 200 : 503,
    body: {
      ...reading.extra,
      status: healthy ? "healthy" : "unhealthy",
      check: check.check,
      [check.ageKey]: age,
      stale_after_seconds: check.staleAfterSeconds
    }
  }
}

const routes = (check: HealthCheck) =>
  HttpRouter.use(Effect.fnUntraced(function*(router) {
    const health = check.liveness.pipe(
      Effect.map((reading) => {
        const { status, body } = verdict(check, reading)
        return HttpServerResponse.jsonUnsafe(body, { status })
      })
    )
    for (const path of ["/health", "/healthz", "/livez"] as const) yield* router.add("GET", path, health)
    yield* router.add(
      "GET",
      "/metrics",
      PrometheusMetrics.format().pipe(
        Effect.map((text) => HttpServerResponse.text(text, { contentType: "text/plain; version=0.0.4; charset=utf-8" }))
      )
    )
  }))

/** Serve the check on `port` (0 picks a free one) for the life of the layer. */
export const layer = (port: number, check: HealthCheck, host = "0.0.0.0") =>
  HttpRouter.serve(routes(check), { disableLogger: true }).pipe(
    Layer.provideMerge(NodeHttpServer.layer(createServer, { port, host, gracefulShutdownTimeout: "1 second" }))
  )
