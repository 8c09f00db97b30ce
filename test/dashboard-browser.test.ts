/**
 * The dashboard as an operator sees it: `node dist/cli.js dashboard` over a seeded schema, opened in a real
 * headless Chromium (Debian's /usr/bin/chromium driven by playwright-core; nothing is downloaded). The page
 * shows the seeded numbers, follows an enqueue and completions live, and renders a hostile error string as
 * text. A full-page screenshot lands in test/output/dashboard.png. Also: dist/reaper.js with
 * PGQ_DASHBOARD_PORT serves the same page with its leadership and last tick.
 *
 * Needs `npm run build` (the processes run dist/) and Chromium (.ci/run installs it; without it, and outside
 * CI, the browser test is skipped).
 */
import { describe, expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { SqlClient } from "effect/sql"
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { type BrowserContext, chromium, type Page } from "playwright-core"
import * as Barrier from "../src/Barrier.ts"
import { Queue } from "../src/Queue.ts"
import { eventually, freePort, httpGet, spawnNode } from "./processes.ts"
import { TestSchema, testDb } from "./support.ts"

const CHROMIUM = "/usr/bin/chromium"
const HOSTILE = `<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"> & "quotes"`
const output = new URL("output/", import.meta.url).pathname

/** A headless Chromium for the test's scope, with a new empty profile, closed (and its profile removed) after. */
const browser = Effect.acquireRelease(
  Effect.promise(async () => {
    const profile = mkdtempSync(join(tmpdir(), "pgq-chromium-"))
    const context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1400, height: 1000 },
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync"
      ]
    })
    return { context, profile }
  }),
  ({ context, profile }) =>
    Effect.promise(() => context.close()).pipe(Effect.andThen(Effect.sync(() => rmSync(profile, { recursive: true, force: true }))))
)

const open = (context: BrowserContext, url: string) =>
  Effect.promise(async () => {
    const page = context.pages()[0] ?? (await context.newPage())
    const errors: Array<string> = []
    page.on("pageerror", (error) => errors.push(error.message))
    await page.goto(url)
    return { page, errors }
  })

/**
 * Wait until the page shows `expected` as the text of `selector`. Polled through locators: the page's policy
 * refuses eval, so Playwright's waitForFunction cannot run there (which is the point of the policy).
 */
const cellText = (page: Page, selector: string, expected: string) =>
  eventually(Effect.promise(() => page.locator(selector).first().textContent({ timeout: 30_000 })), (text) => text === expected)

const countOf = (page: Page, selector: string) => Effect.promise(() => page.locator(selector).count())

const queueCell = (queue: string, col: string) => `#queues td[data-queue="${queue}"][data-col="${col}"]`

const enqueue = (queue: string, n: number, delay = 0) =>
  Queue.use((q) =>
    q.enqueueMany(Array.from({ length: n }, (_, i) => ({ task: `${queue}.send`, payload: { i }, options: { queue, delay } })))
  )

/** What an operator would find: two queues, a fleet with a supervisor, a fan-out half done, dead letters. */
const seed = Effect.gen(function*() {
  const { schema } = yield* TestSchema
  const sql = yield* SqlClient.SqlClient
  const t = (name: string) => sql(`${schema}.${name}`)
  yield* enqueue("emails", 3)
  yield* enqueue("emails", 2, 3_600_000)
  yield* enqueue("reports", 4)
  yield* Queue.use((q) => q.claim({ queues: ["reports"], limit: 2, leaseSeconds: 300, processId: "web-1:4102:9f3a/worker-1" }))
  yield* sql`
    INSERT INTO ${t("dead_letter")} (msg_id, queue, task, payload, read_ct, max_attempts, last_error, enqueued_at, failed_at)
    VALUES (900001, 'emails', 'emails.send', ${JSON.stringify({ to: "ops@example.com", html: "<b>bold</b>" })}::jsonb, 5, 5,
            ${HOSTILE}, now() - interval '20 minutes', now() - interval '1 minute'),
           (900002, 'reports', 'reports.render', '{"id": 42}', 3, 3, 'TimeoutError: render took longer than 30 s',
            now() - interval '2 hours', now() - interval '40 minutes')`
  yield* sql`INSERT INTO ${t("lease")} (name, holder, term, expires_at)
             VALUES ('reaper', 'web-1:4100:77aa', 12, now() + interval '8 seconds')`
  yield* sql`
    INSERT INTO ${t("process")} (process_id, kind, host, pid, queues, started_at, heartbeat_at, stale_seconds)
    VALUES ('web-1:4101:1c2d/supervisor-1', 'supervisor', 'web-1', 4101, '{emails,reports}', now() - interval '3 hours', now(), 10),
           ('web-1:4102:9f3a/worker-1', 'worker', 'web-1', 4102, '{emails,reports}', now() - interval '3 hours', now(), 10),
           ('web-1:4103:5e6f/worker-1', 'worker', 'web-1', 4103, '{emails,reports}', now() - interval '3 hours', now(), 10),
           ('web-2:977:0b1c/worker-1', 'worker', 'web-2', 977, '{reports}', now() - interval '1 hour', now() - interval '95 seconds', 10),
           ('web-1:4100:77aa/reaper-1', 'reaper', 'web-1', 4100, '{}', now() - interval '3 hours', now(), 10)`
  yield* Barrier.Barrier.use((b) =>
    b.start({
      executionId: "nightly-2026-11-25",
      orgId: "acme",
      batches: Array.from({ length: 8 }, (_, i) => ({ task: "part", payload: { i }, queue: "fanout" })),
      callback: { task: "gather", queue: "fanout" }
    })
  )
  const parts = yield* Queue.use((q) => q.claim({ queues: ["fanout"], limit: 5, leaseSeconds: 300, processId: "test" }))
  yield* Effect.forEach(parts, (job) =>
    Barrier.Barrier.use((b) => b.complete({ ...job, executionId: job.executionId!, batchIndex: job.batchIndex! }, { ok: true })))
})

const db = testDb("dashboard_browser")

layer(db, { excludeTestServices: true, timeout: 120_000 })("dashboard in a browser", (it) => {
  const haveChromium = existsSync(CHROMIUM)
  if (!haveChromium && process.env.CI === "true") throw new Error(`${CHROMIUM} is missing: .ci/run installs it`)

  it.effect.skipIf(!haveChromium)(
    "shows the seeded numbers, follows an enqueue and completions live, renders a hostile error as text",
    () =>
      Effect.gen(function*() {
        const { schema, url: databaseUrl } = yield* TestSchema
        yield* seed
        const port = yield* freePort
        const dashboard = yield* spawnNode("cli.js", { DATABASE_URL: databaseUrl, PGQ_SCHEMA: schema, PGQ_LOG_FORMAT: "pretty" }, [
          "dashboard",
          "--port",
          String(port),
          "--sample-seconds",
          "1"
        ])
        const base = `http://127.0.0.1:${port}/`
        yield* eventually(httpGet(`${base}api/overview`), (r) => r.status === 200)
        expect(dashboard.output()).toContain(`dashboard: ${base} (read-only`)
        const { context } = yield* browser
        const { page, errors } = yield* open(context, base)

        // The seeded numbers.
        yield* cellText(page, queueCell("emails", "ready"), "3")
        yield* cellText(page, queueCell("emails", "scheduled"), "2")
        yield* cellText(page, queueCell("reports", "claimed"), "2")
        yield* cellText(page, queueCell("emails", "dead"), "1")
        yield* cellText(page, "#fleet-summary", "5 process(es): 1 reaper, 1 supervisor, 3 worker; 1 stale")
        yield* cellText(page, '#barriers tr[data-execution="nightly-2026-11-25"] .bar-label', "5 / 8")

        // Live: an enqueue shows up without a reload, and so do completions in the throughput column.
        yield* enqueue("emails", 4)
        yield* cellText(page, queueCell("emails", "ready"), "7")
        const jobs = yield* Queue.use((q) => q.claim({ queues: ["emails"], limit: 5, leaseSeconds: 30, processId: "test" }))
        yield* Queue.use((q) => q.ackMany(jobs))
        yield* cellText(page, queueCell("emails", "ready"), "2")
        yield* eventually(countOf(page, '#queues tr[data-queue="emails"] svg rect.done'), (n) => n > 0)

        // The hostile error is text: same characters, no element made of it, no script run.
        const errorCell = '#dead tr[data-dead="900001"] td[data-col="error"]'
        yield* cellText(page, errorCell, HOSTILE)
        const dom = yield* Effect.promise(() =>
          page.evaluate(`({
            pwned: window.pwned ?? null,
            images: document.querySelectorAll("img").length,
            scripts: document.querySelectorAll("script").length
          })`)
        )
        expect(dom).toEqual({ pwned: null, images: 0, scripts: 1 })

        // The detail view: the payload as text too.
        yield* Effect.promise(() => page.click('#dead tr[data-dead="900001"]'))
        yield* cellText(page, 'pre[data-detail="error"]', HOSTILE)
        const payload = yield* Effect.promise(() => page.textContent('pre[data-detail="payload"]'))
        expect(JSON.parse(payload ?? "null")).toEqual({ to: "ops@example.com", html: "<b>bold</b>" })
        expect(yield* countOf(page, "#detail-body b")).toBe(0)
        expect(errors).toEqual([])

        mkdirSync(output, { recursive: true })
        yield* Effect.promise(() => page.screenshot({ path: join(output, "dashboard.png"), fullPage: true }))
      })
  )
})

describe("dashboard inside dist/reaper.js", () => {
  layer(testDb("dashboard_reaper"), { excludeTestServices: true })("PGQ_DASHBOARD_PORT", (it) => {
    it.effect("serves the overview with this reaper's leadership and its last tick", () =>
      Effect.gen(function*() {
        const { schema, url: databaseUrl } = yield* TestSchema
        const port = yield* freePort
        yield* spawnNode("reaper.js", {
          DATABASE_URL: databaseUrl,
          PGQ_SCHEMA: schema,
          PGQ_DASHBOARD_PORT: String(port),
          PGQ_LEASE_SECONDS: "2",
          PGQ_REAPER_INTERVAL_SECONDS: "0.5"
        })
        const reply = yield* eventually(
          httpGet(`http://127.0.0.1:${port}/api/overview`).pipe(
            Effect.map((r) =>
              JSON.parse(r.body) as {
                reaper: { leadership: { isLeader: boolean }; lastTick: unknown } | null
                leases: ReadonlyArray<{ held: boolean }>
              }
            )
          ),
          (o) => o.reaper?.leadership.isLeader === true && o.reaper.lastTick !== null && o.leases.some((l) => l.held)
        )
        expect(reply.reaper!.lastTick).toMatchObject({ rearmed: 0, promoted: 0, failures: [] })
        const overview = JSON.parse((yield* httpGet(`http://127.0.0.1:${port}/api/overview`)).body) as {
          fleet: { byKind: Record<string, number> }
          leases: ReadonlyArray<{ name: string; held: boolean }>
        }
        expect(overview.fleet.byKind).toEqual({ reaper: 1 })
        expect(overview.leases.map((l) => [l.name, l.held])).toEqual([["reaper", true]])
        const readOnly = yield* Effect.tryPromise(() =>
          fetch(`http://127.0.0.1:${port}/api/dead-letters/1/replay`, { method: "POST" }).then((r) => r.status)
        )
        expect(readOnly).toBe(403)
      }))
  })
})
