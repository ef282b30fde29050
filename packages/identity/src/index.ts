export * from "./ip.js";
export * from "./names.js";
export * from "./naming.js";
export * from "./san.js";
