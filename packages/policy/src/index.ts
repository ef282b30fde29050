export * from "./activation.js";
export * from "./cel.js";
export * from "./cost.js";
export * from "./model.js";
export * from "./selector.js";
export * from "./snapshot.js";
