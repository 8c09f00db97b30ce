/** The entrypoints' bound on their own shutdown. */
import { Duration, Effect } from "effect"

/**
 * The last resort of an entrypoint's shutdown: when the finalizers have not finished `seconds` after it
 * began (a database that swallows every packet leaves a driver waiting on a socket forever), log it and
 * exit non-zero. Add it as the last finalizer of the program's scope, so it is armed first.
 */
export const exitIfShutdownHangs = (seconds: number, program: string) =>
  Effect.addFinalizer(() =>
    Effect.sleep(Duration.seconds(seconds)).pipe(
      Effect.andThen(Effect.logError(
        `${program}: shutdown did not finish within ${seconds} s (is the database reachable?); exiting`
      )),
      Effect.andThen(Effect.sync(() => process.exit(1))),
      Effect.forkDetach,
      Effect.asVoid
    )
  )
