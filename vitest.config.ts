import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["./test/globalSetup.ts"],
    hookTimeout: 120_000,
    testTimeout: 60_000,
    // Tests that spawn processes and hold connections: keep the 2-core machine unsaturated.
    maxWorkers: 2
  }
})
