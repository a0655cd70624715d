// The size a browser downloads for @herald/react + @herald/client: one ESM bundle of the built package
// with React left out, minified and gzipped, and its stylesheet. Fails when the JS is over the budget.
import { gzipSync } from "node:zlib";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { readFileSync } from "node:fs";

import { build } from "esbuild";

const BUDGET_KIB = 25;
const root = dirname(dirname(fileURLToPath(import.meta.url)));
const kib = (bytes) => `${(bytes / 1024).toFixed(1)} KiB`;

const bundled = await build({
  entryPoints: [resolve(root, "react/dist/index.js")],
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2020",
  external: ["react", "react/jsx-runtime", "react-dom"],
  write: false,
  logLevel: "error",
});
const js = bundled.outputFiles[0].contents;
const css = readFileSync(resolve(root, "react/dist/styles.css"));
const minCss = (await build({ stdin: { contents: css.toString(), loader: "css" }, minify: true, write: false })).outputFiles[0]
  .contents;
const jsGzip = gzipSync(js, { level: 9 }).length;
const cssGzip = gzipSync(minCss, { level: 9 }).length;
console.log(`@herald/react + @herald/client, without React: ${kib(js.length)} minified, ${kib(jsGzip)} gzipped (budget ${BUDGET_KIB} KiB)`);
console.log(`@herald/react/styles.css: ${kib(minCss.length)} minified, ${kib(cssGzip)} gzipped`);
if (jsGzip > BUDGET_KIB * 1024) {
  console.error(`bundle over budget: ${kib(jsGzip)} > ${BUDGET_KIB} KiB`);
  process.exit(1);
}
