import { cleanup, configure } from "@testing-library/react";
import { afterEach } from "vitest";

// findBy*/waitFor poll until this deadline: generous, since a shared 2-core machine can be slow; a
// passing condition returns at once.
configure({ asyncUtilTimeout: 10000 });

afterEach(() => cleanup());
