// Bundles the page for the bot: `npm ci && npm run build` (Node 20).
//
// Output (committed, so the bot needs no npm at run or setup time):
//   src/pipecat_vibevoice/bot/static/sdk/index.html
//   src/pipecat_vibevoice/bot/static/sdk/sdk-client.js   one IIFE, es2020, minified
//
// `@daily-co/daily-js` (a dependency of websocket-transport, used only by its
// DailyMediaManager) is replaced by a stub that throws: this page never uses Daily,
// and Daily's manager would fetch its call-machine bundle from Daily's CDN.

import { copyFile, mkdir, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "..", "src", "pipecat_vibevoice", "bot", "static", "sdk");

const noDaily = {
  name: "no-daily",
  setup(build) {
    build.onResolve({ filter: /^@daily-co\/daily-js$/ }, () => ({ path: "daily-js", namespace: "stub" }));
    build.onLoad({ filter: /.*/, namespace: "stub" }, () => ({
      contents:
        "const unsupported = () => { throw new Error('Daily is not bundled in this page'); };\n" +
        "export default { getCallInstance: () => null, createCallObject: unsupported };\n",
      loader: "js",
    }));
  },
};

await mkdir(out, { recursive: true });
await esbuild.build({
  entryPoints: [join(here, "src", "main.js")],
  bundle: true,
  format: "iife",
  target: "es2020",
  minify: true,
  legalComments: "eof",
  banner: { js: "/* Built by web/sdk-client/build.mjs from web/sdk-client/src: do not edit. */" },
  plugins: [noDaily],
  outfile: join(out, "sdk-client.js"),
  logLevel: "warning",
});
await copyFile(join(here, "src", "index.html"), join(out, "index.html"));
for (const name of ["index.html", "sdk-client.js"]) {
  const { size } = await stat(join(out, name));
  console.log(`${name.padEnd(14)} ${(size / 1024).toFixed(1)} KiB`);
}
