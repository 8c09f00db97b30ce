/**
 * A PGQ_TASKS module may export the Layer its handlers need (a mailer, an HTTP client, a repository). The worker
 * builds it once at start-up on its handlers' SqlClient; a layer that cannot be built stops the start with a
 * message naming PGQ_TASKS; a handler whose service is still missing (an untyped module) fails its job for good
 * with a message naming the service, instead of dying with a defect that is retried. In TypeScript, a missing
 * service is a compile error: in a module written with `Task.forWorker`, and in a host running `Worker.layer`.
 */
import { assert, describe, expect, it, layer } from "@effect/vitest"
import { Context, Effect, Layer, Schema } from "effect"
import type { SqlClient } from "effect/sql"
import { readFileSync } from "node:fs"
import { join } from "node:path"
import ts from "typescript"
import { InvalidConfig } from "../src/Errors.ts"
import * as Task from "../src/Task.ts"
import { jobContext as job, testDb } from "./support.ts"

class Mailer extends Context.Service<Mailer, { readonly send: (to: string) => Effect.Effect<string> }>()("test/Mailer") {}

const mail = Task.define({
  name: "mail",
  payload: Schema.Struct({ to: Schema.String }),
  handler: ({ to }) => Mailer.use((mailer) => mailer.send(to))
})

const failure = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.flip(effect).pipe(Effect.map((error) => (error instanceof InvalidConfig ? error : assert.fail(String(error)))))

describe("a handler whose service nobody provides", () => {
  it.effect("fails its job for good with a message naming the service (not a defect, retried)", () =>
    Effect.gen(function*() {
      // What an untyped module does: the requirement is cast away.
      const outcome = yield* (mail.execute({ to: "ada@example.com" }, job) as Effect.Effect<Task.Outcome>)
      assert(outcome._tag === "Failed", `expected Failed, got ${outcome._tag}`)
      expect(outcome.action).toBe("dead-letter")
      expect(outcome.error).toContain("test/Mailer")
      expect(outcome.error).toContain("task mail")
      expect(outcome.error).toMatch(/nothing provides/)
    }))
})

describe("Task.fromExports: what the worker accepts from a PGQ_TASKS module", () => {
  const tasks = Task.registry(mail)

  it.effect("a registry without a layer: its handlers get the worker's services only", () =>
    Effect.gen(function*() {
      const module = yield* Task.fromExports("./plain.js", { default: tasks })
      expect([...module.registry.tasks.keys()]).toEqual(["mail"])
    }))

  it.effect("a `layer` that is not a Layer is refused at load, naming PGQ_TASKS and the export", () =>
    Effect.gen(function*() {
      const error = yield* failure(Task.fromExports("./bad.js", { tasks, layer: { send: () => "hi" } }))
      expect(error.message).toContain("PGQ_TASKS")
      expect(error.message).toContain("./bad.js")
      expect(error.message).toContain("layer")
    }))

  it.effect("a layer that fails to build stops the start: PGQ_TASKS, the module and the failure", () =>
    Effect.gen(function*() {
      class SmtpDown extends Schema.TaggedError<SmtpDown>()("SmtpDown", { host: Schema.String }) {}
      const module = yield* Task.fromExports("./down.js", { tasks, layer: Layer.effect(Mailer, Effect.fail(new SmtpDown({ host: "smtp.example" }))) })
      const error = yield* failure(Effect.scoped(Layer.build(module.layer)).pipe(Effect.provide(noSql)))
      expect(error.message).toContain("PGQ_TASKS")
      expect(error.message).toContain("./down.js")
      expect(error.message).toContain("smtp.example")
    }))

  it.effect("a layer that needs a service the worker does not provide names it", () =>
    Effect.gen(function*() {
      class Vault extends Context.Service<Vault, { readonly secret: string }>()("test/Vault") {}
      const needsVault = Layer.effect(
        Mailer,
        Vault.use((v) => Effect.succeed({ send: (to: string) => Effect.succeed(`${v.secret} ${to}`) }))
      )
      const module = yield* Task.fromExports("./vault.js", { tasks, layer: needsVault })
      const error = yield* failure(Effect.scoped(Layer.build(module.layer)).pipe(Effect.provide(noSql)))
      expect(error.message).toContain("PGQ_TASKS")
      expect(error.message).toContain("test/Vault")
    }))
})

/** The module layer's requirement, for tests that never reach the database. */
const noSql = Layer.succeedContext(Context.empty()) as unknown as Layer.Layer<SqlClient.SqlClient>

layer(testDb("task_module"))("Task.loadModule", (it) => {
  it.effect("the module's layer is built on the worker's SqlClient; its handlers get the service", () =>
    Effect.gen(function*() {
      const module = yield* Task.loadModule("./test/fixtures/layer-tasks.mjs")
      const greet = module.registry.tasks.get("greet")!
      const outcome = yield* greet.execute({ name: "ada" }, job).pipe(Effect.provide(module.layer))
      expect(outcome).toEqual({ _tag: "Succeeded", result: "hello ada" })
      const orphan = yield* module.registry.tasks.get("orphan")!.execute({ name: "ada" }, job).pipe(Effect.provide(module.layer))
      assert(orphan._tag === "Failed")
      expect(orphan).toMatchObject({ action: "dead-letter" })
      expect(orphan.error).toContain("fixture/Nobody")
    }))
})

/** Type-check `files` (name → source, under test/) with the project's compiler options; diagnostics by file. */
const typeErrors = (files: Readonly<Record<string, string>>): Readonly<Record<string, ReadonlyArray<string>>> => {
  const root = new URL("..", import.meta.url).pathname
  const config = ts.parseJsonConfigFileContent(
    ts.readConfigFile(join(root, "tsconfig.json"), (path) => readFileSync(path, "utf8")).config,
    ts.sys,
    root
  )
  const paths = new Map(Object.entries(files).map(([name, source]) => [join(root, "test", name), source]))
  const host = ts.createCompilerHost(config.options)
  const { fileExists, readFile, getSourceFile } = host
  host.fileExists = (path) => paths.has(path) || fileExists.call(host, path)
  host.readFile = (path) => paths.get(path) ?? readFile.call(host, path)
  host.getSourceFile = (path, language, onError) => {
    const source = paths.get(path)
    return source === undefined ? getSourceFile.call(host, path, language, onError) : ts.createSourceFile(path, source, language)
  }
  const program = ts.createProgram([...paths.keys()], config.options, host)
  return Object.fromEntries(
    [...paths.keys()].map((path) => [
      path.slice(join(root, "test").length + 1),
      ts.getPreEmitDiagnostics(program, program.getSourceFile(path)).map((d) => ts.flattenDiagnosticMessageText(d.messageText, "\n"))
    ])
  )
}

const prelude = `
import { Context, Effect, Layer, Schema } from "effect"
import { SqlClient } from "effect/sql"
import * as Task from "../src/Task.ts"
import * as Worker from "../src/Worker.ts"
import { ProcessRegistry } from "../src/ProcessRegistry.ts"
import { Queue } from "../src/Queue.ts"
import { Barrier } from "../src/Barrier.ts"
export class Mailer extends Context.Service<Mailer, { readonly send: (to: string) => Effect.Effect<void> }>()("Mailer") {}
export class Clock2 extends Context.Service<Clock2, { readonly now: number }>()("Clock2") {}
const mail = Task.define({
  name: "mail",
  payload: Schema.String,
  handler: (to) => Mailer.use((m) => m.send(to)).pipe(Effect.andThen(SqlClient.SqlClient.use(() => Effect.void)))
})
export const registry = Task.registry(mail)
export const MailerLive = Layer.effect(Mailer, SqlClient.SqlClient.use(() => Effect.succeed({ send: () => Effect.void })))
export const ClockLive = Layer.succeed(Clock2, { now: 0 })
declare const deps: Layer.Layer<Queue | ProcessRegistry | Barrier | SqlClient.SqlClient>
export declare const sql: Layer.Layer<SqlClient.SqlClient>
declare const options: Worker.WorkerOptions
export const launch = <A, E>(layer: Layer.Layer<A, E, never>) => Effect.runPromise(Layer.launch(layer).pipe(Effect.ignore))
export const worker = Worker.Worker.layer(registry, options).pipe(Layer.provide(deps))
`

describe("a missing service is a compile error in the host", () => {
  it("Task.forWorker, Worker.layer and startWorker", { timeout: 60_000 }, () => {
    const errors = typeErrors({
      "__prelude.ts": prelude,
      "__module_ok.ts": `import { MailerLive, registry } from "./__prelude.ts"; import * as Task from "../src/Task.ts"
        export const { tasks, layer } = Task.forWorker(registry, MailerLive)`,
      "__module_missing.ts": `import { ClockLive, registry } from "./__prelude.ts"; import * as Task from "../src/Task.ts"
        export const { tasks, layer } = Task.forWorker(registry, ClockLive)`,
      "__host_ok.ts": `import { Layer } from "effect"; import { launch, MailerLive, sql, worker } from "./__prelude.ts"
        launch(worker.pipe(Layer.provide(MailerLive), Layer.provide(sql)))`,
      "__host_missing.ts": `import { launch, worker } from "./__prelude.ts"
        launch(worker)`,
      "__facade_ok.ts": `import { MailerLive, registry } from "./__prelude.ts"; import { startWorker } from "../src/Client.ts"
        export const w = startWorker({ databaseUrl: "postgres://h/db", tasks: registry, layer: MailerLive })`,
      "__facade_missing.ts": `import { registry } from "./__prelude.ts"; import { startWorker } from "../src/Client.ts"
        export const w = startWorker({ databaseUrl: "postgres://h/db", tasks: registry })`
    })
    expect(errors["__prelude.ts"]).toEqual([])
    expect(errors["__module_ok.ts"]).toEqual([])
    expect(errors["__module_missing.ts"]!.join("\n")).toContain("Mailer")
    expect(errors["__host_ok.ts"]).toEqual([])
    expect(errors["__host_missing.ts"]!.join("\n")).toContain("Mailer")
    expect(errors["__facade_ok.ts"]).toEqual([])
    expect(errors["__facade_missing.ts"]!.join("\n")).toContain("Mailer")
  })
})
