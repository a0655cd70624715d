import { defineConfig } from "tsup";

// ESM with types; React and @herald/client stay external (peer / dependency). The banner marks the
// components as client components for React Server Components frameworks; nothing runs at import time.
export default defineConfig({
  entry: { index: "src/index.ts", styles: "src/styles.css" },
  format: ["esm"],
  dts: { entry: { index: "src/index.ts" } },
  target: "es2020",
  sourcemap: true,
  clean: true,
  banner: { js: '"use client";' },
  external: ["react", "react/jsx-runtime", "@herald/client"],
});
