/**
 * The Promise facade, used as a host not written with Effect would: plain async tests, no Effect in sight except
 * the task definitions. `startWorker` runs the registry in-process, `stop()` drains as SIGTERM does for
 * dist/worker.js, `createClient` enqueues; settings are validated like the environment's and failures reject with
 * the typed error itself.
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Redacted, Schema } from "effect"
import { SqlClient } from "effect/sql"
import * as Client from "../src/Client.ts"
import * as Database from "../src/Database.ts"
import { InvalidConfig, PayloadRejected } from "../src/Errors.ts"
import * as Task from "../src/Task.ts"
import { databaseUrl, uniqueSchema } from "./support.ts"

const schema = uniqueSchema("client")
const connection = () => ({ databaseUrl: databaseUrl(), schema, logLevel: "Warn" as const })

/** A promise and its resolver (Promise.withResolvers is not in the ES2023 lib). */
const deferred = <A>() => {
  let resolve: (value: A) => void = () => {}
  const promise = new Promise<A>((r) => (resolve = r))
  return { promise, resolve }
}

const runSql = <A extends object>(query: string) =>
  Effect.runPromise(
    SqlClient.SqlClient.use((sql) => sql.unsafe<A>(query)).pipe(Effect.provide(Database.layer({ url: Redacted.make(databaseUrl()), maxConnections: 1 })))
  )

afterAll(() => runSql(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`))

const Greeting = Schema.Struct({ name: Schema.String })

describe("startWorker / createClient", () => {
  it("runs what a client sends; status says it listens; stop() leaves nothing claimed and deregisters", async () => {
    const seen = deferred<string>()
    const greet = Task.define({ name: "greet", payload: Greeting, queue: "promises", handler: ({ name }) => Effect.sync(() => seen.resolve(name)) })
    const worker = await Client.startWorker({ ...connection(), tasks: Task.registry(greet), queues: ["promises"] })
    const client = await Client.createClient(connection())
    const id = await client.send(greet, { name: "ada" })
    expect(id).toMatch(/^\d+$/)
    expect(await seen.promise).toBe("ada")
    await expect.poll(async () => (await worker.status()).listening).toBe(true)
    expect((await worker.status()).processId).toBe(worker.processId)
    await worker.stop()
    await worker.stop() // idempotent
    expect(await worker.send(greet, { name: "late" }).catch((e: unknown) => e)).toBeInstanceOf(Client.Closed)
    expect(await client.pending(["promises"])).toEqual([
      { queue: "promises", ready: 0, scheduled: 0, claimed: 0, pending: 0, capped: false }
    ])
    expect(await runSql(`SELECT process_id FROM "${schema}".process WHERE process_id = '${worker.processId}'`)).toEqual([])
    await client.close()
  })

  it("stop() drains like SIGTERM: the job running is finished (not interrupted) and acked before stop resolves", async () => {
    const events: Array<string> = []
    const started = deferred<void>()
    const release = deferred<void>()
    const slow = Task.define({
      name: "slow",
      payload: Schema.Struct({}),
      queue: "drain",
      handler: () =>
        Effect.sync(() => started.resolve()).pipe(
          Effect.andThen(Effect.promise(() => release.promise)),
          Effect.andThen(Effect.sync(() => events.push("job finished")))
        )
    })
    const worker = await Client.startWorker({ ...connection(), tasks: Task.registry(slow), queues: ["drain"], concurrency: 1 })
    await worker.send(slow, {})
    await started.promise
    const stopping = worker.stop().then(() => events.push("stopped"))
    events.push("stop requested")
    release.resolve()
    await stopping
    expect(events).toEqual(["stop requested", "job finished", "stopped"])
    const client = await Client.createClient(connection())
    expect((await client.pending(["drain"]))[0]).toMatchObject({ pending: 0 })
    await client.close()
  })

  it("handlers get the services of `layer` (built once, released at stop)", async () => {
    class Greeter extends Context.Service<Greeter, { readonly hello: (name: string) => string }>()("test/Greeter") {}
    const lifecycle: Array<string> = []
    const GreeterLive = Layer.effect(
      Greeter,
      Effect.acquireRelease(
        Effect.sync(() => (lifecycle.push("built"), { hello: (name: string) => `hello ${name}` })),
        () => Effect.sync(() => lifecycle.push("released"))
      )
    )
    const said = deferred<string>()
    const hello = Task.define({
      name: "hello",
      payload: Greeting,
      queue: "services",
      handler: ({ name }) => Greeter.use((g) => Effect.sync(() => said.resolve(g.hello(name))))
    })
    const worker = await Client.startWorker({ ...connection(), tasks: Task.registry(hello), layer: GreeterLive, queues: ["services"] })
    await worker.send(hello, { name: "grace" })
    expect(await said.promise).toBe("hello grace")
    await worker.stop()
    expect(lifecycle).toEqual(["built", "released"])
  })

  it("settings are validated like the environment's; failures reject with the typed error", async () => {
    const tasks = Task.registry(Task.define({ name: "noop", payload: Schema.Unknown, handler: () => Effect.void }))
    const zero = await Client.startWorker({ ...connection(), tasks, concurrency: 0 }).catch((e: unknown) => e)
    expect(zero).toBeInstanceOf(InvalidConfig)
    expect(String(zero)).toContain("concurrency (PGQ_CONCURRENCY)")
    const env = await Client.startWorker({ ...connection(), tasks, env: { PGQ_QUEUES: "a,not ok" } }).catch((e: unknown) => e)
    expect(env).toBeInstanceOf(InvalidConfig)
    expect(String(env)).toContain("PGQ_QUEUES")
    const mysql = await Client.createClient({ databaseUrl: "mysql://u:pw@127.0.0.1/db" }).catch((e: unknown) => e)
    expect(mysql).toBeInstanceOf(InvalidConfig)
    expect(String(mysql)).toContain("DATABASE_URL")
    expect(String(mysql)).not.toContain("pw")

    const client = await Client.createClient(connection())
    const rejected = await client.enqueue("noop", {}, { priority: 11 }).catch((e: unknown) => e)
    expect(rejected).toBeInstanceOf(PayloadRejected)
    expect(String(rejected)).toContain("priority")
    await client.close()
  })
})
