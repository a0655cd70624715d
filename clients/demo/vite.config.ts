import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

// The gateway serves dist/: index.html at / and the hashed bundles under /assets/ (gateway/http.py).
export default defineConfig({
  plugins: [react()],
  base: "/",
  build: { outDir: "dist", emptyOutDir: true, assetsDir: "assets", reportCompressedSize: false },
});
