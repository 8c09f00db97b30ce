import { describe, expect, it } from "@effect/vitest"
import { Cause, Redacted, Schema } from "effect"
import * as ErrorText from "../src/ErrorText.ts"

describe("ErrorText.redact", () => {
  const cases: ReadonlyArray<[string, string]> = [
    ["connect postgres://app:hunter2@db:5432/prod", "connect postgres://app:***@db:5432/prod"],
    ["redis://:s3cret@cache:6379 refused", "redis://:***@cache:6379 refused"],
    ["GET https://api.example.com:8443/v1/items?page=2 failed", "GET https://api.example.com:8443/v1/items?page=2 failed"],
    ["host=db password=hunter2 user=app", "host=db password=*** user=app"],
    ["PGPASSWORD=hunter2", "PGPASSWORD=***"],
    ["?access_token=abc123&page=2", "?access_token=***&page=2"],
    ["api_key: k-123, region: eu", "api_key: ***, region: eu"],
    ["x-api-key=k-123", "x-api-key=***"],
    ["client_secret='sh h'", "client_secret='***'"],
    ["Authorization: Bearer eyJhbGciOi.payload.sig", "Authorization: Bearer ***"],
    ["authorization=Basic dXNlcjpwYXNz", "authorization=Basic ***"],
    ["sent header Bearer eyJhbGciOi.payload.sig upstream", "sent header Bearer *** upstream"],
    [`{"password":"hunter2","user":"app"}`, `{"password":"***","user":"app"}`],
    [`{"apiKey":"k-1","secretKey":"k-2","refresh_token":"t","n":1}`, `{"apiKey":"***","secretKey":"***","refresh_token":"***","n":1}`],
    [`{"db":{"Password":"a \\"quoted\\" pw"}}`, `{"db":{"Password":"***"}}`],
    [`{"token":12345}`, `{"token":***}`],
    ["max_tokens=100 tokenizer=bpe", "max_tokens=100 tokenizer=bpe"],
    ["password authentication failed for user \"app\"", "password authentication failed for user \"app\""]
  ]
  for (const [input, expected] of cases) {
    it(`redacts ${JSON.stringify(input)}`, () => {
      expect(ErrorText.redact(input)).toBe(expected)
    })
  }

  it("describeFailure redacts secrets in messages, fields and causes, and Redacted values", () => {
    const error = new Error("dial postgres://u:pw1@h/db", { cause: { _tag: "Auth", token: "tok-9" } })
    expect(ErrorText.describeFailure(error)).toBe(`Error: dial postgres://u:***@h/db (cause: Auth: {"token":"***"})`)
    expect(ErrorText.describeFailure({ _tag: "Conf", url: Redacted.make("postgres://u:pw2@h") })).not.toContain("pw2")
  })
})

describe("ErrorText", () => {
  it("describes a cause: its failure, else its defect, else interruption", () => {
    expect(ErrorText.describeCause(Cause.fail({ _tag: "Nope", n: 1n }))).toBe('Nope: {"n":1n}')
    expect(ErrorText.describeCause(Cause.die(new Error("kaboom")))).toBe("defect: Error: kaboom")
    expect(ErrorText.describeCause(Cause.die("plain"))).toBe("defect: plain")
    expect(ErrorText.describeCause(Cause.interrupt(1))).toBe("interrupted")
  })

  it("caps at the limit it is given, with a marker", () => {
    expect(ErrorText.safeLine("abcdefghij".repeat(10), 40)).toBe("abcdefghijabcdefgh … [82 characters cut]")
    expect(ErrorText.safeLine("short", 40)).toBe("short")
  })

  it("never splits a surrogate pair when it cuts", () => {
    const line = ErrorText.safeLine("😀".repeat(100), 40)
    expect(/\p{Cs}/u.test(line)).toBe(false)
    expect(line.length).toBeLessThanOrEqual(40)
  })

  it.prop(
    "any text becomes one bounded, storable line, and safeLine is idempotent",
    { text: Schema.String, max: Schema.Int.check(Schema.isBetween({ minimum: 60, maximum: 3000 })) },
    ({ max, text }) => {
      const line = ErrorText.safeLine(text, max)
      expect(line.length).toBeLessThanOrEqual(max)
      expect(line).not.toMatch(/[\u0000-\u001f\u007f\u2028\u2029]/)
      expect(/\p{Cs}/u.test(line)).toBe(false)
      expect(ErrorText.safeLine(line, max)).toBe(line)
    },
    { arbitrary: { runs: 500 } }
  )
})
