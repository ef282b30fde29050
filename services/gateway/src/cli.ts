#!/usr/bin/env -S node --import tsx
/**
 * The `athenz-identity` executable. It only runs the CLI (operator-cli.ts holds it) and is never
 * imported, so it needs no "am I the main module?" check: that check (import.meta.url against
 * argv[1]) fails through npm's bin symlink, where argv[1] is the link and not the file.
 */
import { runCli } from "./operator-cli.js";

process.exitCode = await runCli(process.argv.slice(2), {
  out: (s) => process.stdout.write(s),
  err: (s) => process.stderr.write(s),
  env: process.env,
});
