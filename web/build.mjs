// Build the chat page into src/chatd/web: one script, one stylesheet, index.html.
// BUILD.json records a digest of the sources, so a test can tell when the build is stale.
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "src", "chatd", "web");

// The same digest as tests/web/test_build.py computes: sorted paths, each path and its bytes.
function digest() {
  const files = ["build.mjs", "package.json", "package-lock.json"];
  for (const name of readdirSync(join(here, "src")).sort()) files.push("src/" + name);
  const hash = createHash("sha256");
  for (const file of files.sort()) {
    hash.update(file + "\0");
    hash.update(readFileSync(join(here, file)));
    hash.update("\0");
  }
  return hash.digest("hex");
}

rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, "assets"), { recursive: true });
await esbuild.build({
  entryPoints: [join(here, "src", "app.js"), { in: join(here, "src", "style.css"), out: "app" }],
  outdir: join(out, "assets"),
  bundle: true,
  minify: true,
  format: "esm",
  target: ["chrome110", "firefox115", "safari16"],
  legalComments: "external",
  logLevel: "warning",
});
const sha = digest();
const html = readFileSync(join(here, "src", "index.html"), "utf8").replaceAll("__BUILD__", sha.slice(0, 12));
writeFileSync(join(out, "index.html"), html);
writeFileSync(join(out, "BUILD.json"), JSON.stringify({ sources_sha256: sha }, null, 2) + "\n");
console.log(`built ${relative(process.cwd(), out)} (${sha.slice(0, 12)})`);
