// tsc emits src/bin/*.ts to dist/bin/*.js; the documented commands are `node dist/<name>.js`.
import { readdirSync, writeFileSync } from "node:fs"

for (const file of readdirSync("dist/bin").filter((f) => f.endsWith(".js"))) {
  writeFileSync(`dist/${file}`, `import "./bin/${file}"\n`)
}
