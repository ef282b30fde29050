import { type DestinationStream, type LevelWithSilent, type Logger, pino } from "pino";

export type { Logger };

/**
 * Paths that must never reach a log line. Tokens and keys are secrets; we redact them even though
 * the code tries never to log them, as a second line of defence.
 */
const REDACT = [
  "token",
  "*.token",
  "attestationData",
  "*.attestationData",
  "attestation_data",
  "*.attestation_data",
  "key",
  "*.privateKey",
  "privateKey",
  "authorization",
  "*.authorization",
  "headers.authorization",
  "*.headers.authorization",
];

export interface LoggerOptions {
  /** The service name, on every line as `service`. */
  service: string;
  level?: LevelWithSilent;
  /**
   * Where lines go; defaults to stdout. Tests pass a stream to read lines back; the runner passes
   * one destination shared by every service of the process.
   */
  destination?: DestinationStream | NodeJS.WritableStream;
}

/**
 * JSON logs (one object per line) with secrets redacted. Errors go under `err` (`log.error({ err },
 * "...")`): pino's serializer keeps their type, message, stack and cause, and redaction applies.
 */
export function createLogger(opts: LoggerOptions): Logger {
  return pino(
    {
      level: opts.level ?? "info",
      base: { service: opts.service },
      redact: { paths: REDACT, censor: "[redacted]" },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    (opts.destination ?? pino.destination({ sync: false })) as DestinationStream,
  );
}
