import { fileURLToPath } from "node:url";

import { defineConfig } from "vitest/config";

// The documented snippets import the package by name: point it at the sources, so no build is needed.
export default defineConfig({
  resolve: {
    alias: [
      { find: /^@herald\/react\/styles\.css$/, replacement: fileURLToPath(new URL("src/styles.css", import.meta.url)) },
      { find: /^@herald\/react$/, replacement: fileURLToPath(new URL("src/index.ts", import.meta.url)) },
    ],
  },
  test: {
    environment: "jsdom",
    include: ["test/**/*.test.{ts,tsx}"],
    setupFiles: ["test/setup.ts"],
    restoreMocks: true,
    testTimeout: 30000,
  },
});
