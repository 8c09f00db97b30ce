import { describe, expect, it } from "@effect/vitest"
import { HORIZON_MS, makePrefetch, MAX_AUTO } from "../src/Prefetch.ts"

const after = (durationsMs: ReadonlyArray<number>, concurrency = 10) => {
  const prefetch = makePrefetch("auto", concurrency)
  for (const ms of durationsMs) prefetch.record(ms)
  return prefetch.ahead()
}

describe("Prefetch", () => {
  it("a fixed setting is what it says, whatever the pace", () => {
    const fixed = makePrefetch(30, 10)
    fixed.record(10_000)
    expect(fixed.ahead()).toBe(30)
    expect(makePrefetch(0, 10).ahead()).toBe(0)
  })

  it("auto holds nothing ahead before a job has finished", () => {
    expect(after([])).toBe(0)
  })

  it("auto holds what the slots start within the horizon: none for long jobs, the cap for no-op ones", () => {
    expect(after(Array(20).fill(1000))).toBe(0)
    expect(after(Array(20).fill(200))).toBe(Math.floor((HORIZON_MS * 10) / 200))
    expect(after(Array(20).fill(10))).toBe(50)
    expect(after(Array(20).fill(0.05))).toBe(MAX_AUTO)
    expect(after(Array(20).fill(0))).toBe(MAX_AUTO)
    expect(after(Array(20).fill(10), 1)).toBe(5)
  })

  it("auto follows a change of pace: short jobs turning long stop the prefetch within a few jobs", () => {
    const short = Array(100).fill(0.1)
    expect(after([...short, ...Array(30).fill(2000)])).toBe(0)
    expect(after([...Array(100).fill(2000), ...Array(60).fill(0.1)])).toBeGreaterThan(0)
  })
})
