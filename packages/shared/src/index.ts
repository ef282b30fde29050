export * from "./config.js";
export * from "./errors.js";
export * from "./violations.js";
export * from "./logger.js";
export * from "./metrics.js";
export * from "./server.js";
export * from "./client.js";
export * from "./main.js";
