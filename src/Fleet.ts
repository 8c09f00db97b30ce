/**
 * The prefork supervisor's bookkeeping as pure functions of its state and the time (milliseconds): which
 * slot has a live child, when a dead slot may be forked again, whether the fleet is crash-looping, and how
 * old its oldest poll is. No processes and no clock here: the supervisor (Supervisor.ts) feeds it events
 * (forked, beat, recycled, exited) and reads its verdicts (due, view).
 *
 * Rules (the reference's §11.4–11.5, plus recovery): a death within 10 s of its fork is a quick death; a
 * slot's `crashes` counts quick deaths in a row, and a longer life resets it. A dead slot waits
 * `min(2 × max(1, crashes), 30)` s before its re-fork. A child that announces it is recycling leaves its
 * slot at once (it drains outside the fleet) and the slot is due at once: no crash, no backoff. Any slot with 3 quick deaths in a row makes the fleet crash-looping, until a child
 * in that slot has polled freshly for 10 s. The fleet's age is the oldest poll over every slot, dead or
 * waiting ones included: a re-forked child inherits its slot's last poll and earns freshness by polling.
 */

/** A death this soon after its fork is a quick death (a crash). */
export const CRASH_WINDOW_MS = 10_000
/** This many quick deaths in a row make a slot, and so the fleet, crash-looping. */
export const CRASH_LOOP_AT = 3
/** A crash-looping slot recovers once its child has polled freshly for this long. */
export const RECOVERY_MS = 10_000

/** Seconds a dead slot waits before its re-fork, after `crashes` quick deaths in a row. */
export const restartBackoffSeconds = (crashes: number): number => Math.min(2 * Math.max(1, crashes), 30)

export interface ChildExit {
  readonly code: number | null
  readonly signal: string | null
}

export interface LastExit extends ChildExit {
  readonly pid: number
  readonly uptimeSeconds: number
  /** It left to drain on purpose (PGQ_MAX_JOBS_PER_PROCESS, PGQ_MAX_RSS_MB); code and signal are null. */
  readonly recycled: boolean
}

export interface Slot {
  /** The live child's pid; null while the slot is dead (waiting for its re-fork, or stopped). */
  readonly pid: number | null
  readonly forkedAt: number
  /** The slot's last poll as reported by its children; seeded when the fleet is made, never on a fork. */
  readonly polledAt: number
  /** Start of the current run of fresh heartbeats of the live child; null when the last one was not fresh. */
  readonly freshSince: number | null
  /** Quick deaths in a row. */
  readonly crashes: number
  /** When a dead slot may be forked again; null while alive, and once the fleet is stopping. */
  readonly restartAt: number | null
  readonly restarts: number
  readonly lastExit: LastExit | null
}

export interface Fleet {
  readonly slots: ReadonlyArray<Slot>
  readonly stopping: boolean
  /** A heartbeat reporting a poll at most this old counts towards recovery from a crash loop. */
  readonly freshSeconds: number
}

export interface SlotView {
  readonly slot: number
  readonly pid: number | null
  readonly secondsSincePoll: number
  readonly crashes: number
  readonly restarts: number
  readonly lastExit: LastExit | null
}

export interface FleetView {
  readonly processes: number
  readonly alive: number
  readonly crashLooping: boolean
  /** Oldest poll over all slots, in seconds. */
  readonly oldestSeconds: number
  /** What liveness goes by: the oldest age, or null when crash-looping (never Infinity). */
  readonly ageSeconds: number | null
  readonly slots: ReadonlyArray<SlotView>
}

/** N empty slots, each seeded as having polled `now`. */
export const make = (processes: number, now: number, freshSeconds: number): Fleet => ({
  slots: Array.from({ length: processes }, () => ({
    pid: null,
    forkedAt: now,
    polledAt: now,
    freshSince: null,
    crashes: 0,
    restartAt: null,
    restarts: 0,
    lastExit: null
  })),
  stopping: false,
  freshSeconds
})

const slotAt = (fleet: Fleet, slot: number): Slot => {
  const found = fleet.slots[slot]
  if (!Number.isInteger(slot) || found === undefined) {
    throw new RangeError(`slot ${slot} is out of range: the fleet has slots 0..${fleet.slots.length - 1}`)
  }
  return found
}

const update = (fleet: Fleet, slot: number, f: (s: Slot) => Slot): Fleet => {
  const current = slotAt(fleet, slot)
  return { ...fleet, slots: fleet.slots.map((s, i) => (i === slot ? f(current) : s)) }
}

/** A child was forked into `slot`. Its poll age is not reset: it has not polled yet. */
export const forked = (fleet: Fleet, slot: number, pid: number, now: number): Fleet =>
  update(fleet, slot, (s) => ({
    ...s,
    pid,
    forkedAt: now,
    freshSince: null,
    restartAt: null,
    restarts: s.lastExit === null ? s.restarts : s.restarts + 1
  }))

/** The child `pid` of `slot` reported a heartbeat: its loop last polled `ageSeconds` ago. */
export const beat = (fleet: Fleet, slot: number, pid: number, ageSeconds: number, now: number): Fleet =>
  update(fleet, slot, (s) => {
    if (s.pid !== pid) return s
    const fresh = ageSeconds <= fleet.freshSeconds
    const freshSince = fresh ? (s.freshSince ?? now) : null
    const recovered = freshSince !== null && now - freshSince >= RECOVERY_MS
    return {
      ...s,
      polledAt: Math.max(s.polledAt, now - ageSeconds * 1000),
      freshSince,
      crashes: recovered ? 0 : s.crashes
    }
  })

/**
 * The child `pid` of `slot` is draining to be recycled: it leaves the slot now (its own exit will change
 * nothing) and the slot is due at once, its crash count untouched.
 */
export const recycled = (fleet: Fleet, slot: number, pid: number, now: number): Fleet =>
  update(fleet, slot, (s) => {
    if (s.pid !== pid) return s
    const lastExit: LastExit = { pid, code: null, signal: null, uptimeSeconds: (now - s.forkedAt) / 1000, recycled: true }
    return { ...s, pid: null, freshSince: null, restartAt: fleet.stopping ? null : now, lastExit }
  })

/**
 * The child `pid` of `slot` exited. An exit of a child the slot no longer has (already reaped) changes
 * nothing. While stopping, nothing is scheduled.
 */
export const exited = (fleet: Fleet, slot: number, pid: number, exit: ChildExit, now: number): Fleet =>
  update(fleet, slot, (s) => {
    if (s.pid !== pid) return s
    const uptimeMs = now - s.forkedAt
    const lastExit: LastExit = { ...exit, pid, uptimeSeconds: uptimeMs / 1000, recycled: false }
    const crashes = uptimeMs < CRASH_WINDOW_MS ? s.crashes + 1 : 0
    const restartAt = fleet.stopping ? null : now + restartBackoffSeconds(crashes) * 1000
    return { ...s, pid: null, freshSince: null, crashes, restartAt, lastExit }
  })

/** No more re-forks. */
export const stop = (fleet: Fleet): Fleet => ({
  ...fleet,
  stopping: true,
  slots: fleet.slots.map((s) => ({ ...s, restartAt: null }))
})

/** Dead slots whose backoff has passed, the longest-waiting first; none while stopping. */
export const due = (fleet: Fleet, now: number): ReadonlyArray<number> =>
  fleet.stopping ? [] : fleet.slots
    .flatMap((s, slot) => (s.pid === null && s.restartAt !== null && s.restartAt <= now ? [{ slot, at: s.restartAt }] : []))
    .sort((a, b) => a.at - b.at || a.slot - b.slot)
    .map(({ slot }) => slot)

export const isCrashLooping = (fleet: Fleet): boolean => fleet.slots.some((s) => s.crashes >= CRASH_LOOP_AT)

export const view = (fleet: Fleet, now: number): FleetView => {
  const slots = fleet.slots.map((s, slot): SlotView => ({
    slot,
    pid: s.pid,
    secondsSincePoll: Math.max(0, now - s.polledAt) / 1000,
    crashes: s.crashes,
    restarts: s.restarts,
    lastExit: s.lastExit
  }))
  const oldestSeconds = Math.max(0, ...slots.map((s) => s.secondsSincePoll))
  const crashLooping = isCrashLooping(fleet)
  return {
    processes: fleet.slots.length,
    alive: fleet.slots.filter((s) => s.pid !== null).length,
    crashLooping,
    oldestSeconds,
    ageSeconds: crashLooping ? null : oldestSeconds,
    slots
  }
}
