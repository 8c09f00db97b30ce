/**
 * `node bench/readme-table.ts [results.json]`: rewrites README.md's benchmark table (between the
 * `<!-- bench:peers:start -->` / `<!-- bench:peers:end -->` markers) from a `npm run bench -- --peers` result
 * (bench/results/peers-<timestamp>.json), kept as bench/peers/last-run.json; without an argument, from that file.
 */
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { fromJson, rewriteReadme } from "./ratios.ts"

const root = new URL("..", import.meta.url).pathname
const file = process.argv[2] ?? join(root, "bench", "peers", "last-run.json")
const result = fromJson(readFileSync(file, "utf8"))
if (result.mode !== "peers") throw new Error(`${file}: not a \`npm run bench -- --peers\` result`)
rewriteReadme(join(root, "README.md"), result)
console.log(`README.md: benchmark table rewritten from ${file}`)
