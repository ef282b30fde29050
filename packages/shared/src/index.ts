export * from "./client.js";
export * from "./config.js";
export * from "./errors.js";
export * from "./logger.js";
export * from "./metrics.js";
export * from "./runner.js";
export * from "./server.js";
export * from "./violations.js";
