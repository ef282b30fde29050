/**
 * The SIA's settings for role certificates, tokens and the token server: the environment variables,
 * defaults and cross-setting rules of AthenZ/k8s-athenz-sia v3.6.0, so that a pod spec written for
 * it works unchanged. Sources (AthenZ/k8s-athenz-sia v3.6.0):
 * - `pkg/config/config.go` (`loadFromENV`, `loadFromFlag`, `validateAndInit`): names, flags, parsing;
 * - `pkg/config/default.go` (`DefaultIdentityConfig`): defaults;
 * - `pkg/config/derived-target-domain-roles.go`, `derived-role-cert.go`, `derived-token-file.go`,
 *   `derived-token-server.go`: what each combination turns on, and which combinations are errors;
 * - `pkg/util/path-generator.go` (`GeneratePath`): the `{{domain}}{{delimiter}}{{role}}` naming formats.
 *
 * `tokenSpec` is spread into the SIA's own spec (config.ts); {@link resolveTokenFeatures} derives what
 * runs from the parsed values. Where we are stricter than k8s-athenz-sia (a value it would silently
 * ignore), the difference is named in the setting's description and in k8s/sia/README.md.
 */
import { isIP } from "node:net";
import { join } from "node:path";
import { bool, ConfigError, type ConfigOf, int, optionalStr, parseGoDuration, type Setting, str } from "@k8s-athenz-identity/shared/config";

/** Athenz DomainName (`core/zts/src/main/rdl/Names.tdl`): dot-separated SimpleNames. */
export const DOMAIN_NAME = /^(?:[a-zA-Z0-9_][a-zA-Z0-9_-]*\.)*[a-zA-Z0-9_][a-zA-Z0-9_-]*$/;
/** Athenz EntityName (`Names.tdl`): what a role name is. */
export const ENTITY_NAME = /^(?:[a-zA-Z0-9_][a-zA-Z0-9_-]*\.)*[a-zA-Z0-9_][a-zA-Z0-9_-]*$/;
/** Athenz EntityList (`Names.tdl`): comma-separated EntityNames (the `role` of a token request). */
export const ENTITY_LIST =
  /^(?:[a-zA-Z0-9_][a-zA-Z0-9_-]*\.)*[a-zA-Z0-9_][a-zA-Z0-9_-]*(?:,(?:[a-zA-Z0-9_][a-zA-Z0-9_-]*\.)*[a-zA-Z0-9_][a-zA-Z0-9_-]*)*$/;

/** A target of TARGET_DOMAIN_ROLES. `role` is "" for a bare domain (tokens for every role of it). */
export interface DomainRole {
  domain: string;
  role: string;
}

/** `<domain>:role.<role>`, Athenz's role resource name (k8s-athenz-sia `DomainRole.String`). */
export function roleName(t: DomainRole): string {
  return `${t.domain}:role.${t.role}`;
}

const goDuration = (o: Omit<Setting<number>, "parse">): Setting<number> => ({ ...o, parse: parseGoDuration });

/**
 * TARGET_DOMAIN_ROLES as k8s-athenz-sia reads it (`derivedTargetDomainRoles`, `SplitRoleName` of
 * AthenZ/athenz `libs/go/sia/util`): comma-separated; an item with exactly one `:role.` and both sides
 * non-empty is a role; any other item is a bare domain. We also trim spaces and check every name
 * against Athenz's patterns (k8s-athenz-sia would send a bad name to ZTS and fail there).
 */
export function parseTargetDomainRoles(raw: string): DomainRole[] {
  const out: DomainRole[] = [];
  for (const item of raw.split(",").map((s) => s.trim())) {
    if (item === "") continue;
    const parts = item.split(":role.");
    const t: DomainRole =
      parts.length === 2 && parts[0] !== "" && parts[1] !== "" ? { domain: parts[0]!, role: parts[1]! } : { domain: item, role: "" };
    if (!DOMAIN_NAME.test(t.domain)) throw new Error(`${JSON.stringify(item)}: ${JSON.stringify(t.domain)} is not an Athenz domain name`);
    if (t.role !== "" && !ENTITY_NAME.test(t.role)) throw new Error(`${JSON.stringify(item)}: ${JSON.stringify(t.role)} is not an Athenz role name`);
    if (!out.some((o) => o.domain === t.domain && o.role === t.role)) out.push(t);
  }
  return out;
}

/** The token types of TOKEN_TYPE (k8s-athenz-sia `pkg/token/type.go` `newType`: substring match). */
export interface TokenTypes {
  access: boolean;
  role: boolean;
}

/** Parses TOKEN_TYPE like k8s-athenz-sia (contains "accesstoken" / "roletoken"); refuses a value with neither. */
export function parseTokenType(raw: string): TokenTypes {
  const t = { access: raw.includes("accesstoken"), role: raw.includes("roletoken") };
  if (!t.access && !t.role) throw new Error(`must be accesstoken, roletoken or roletoken+accesstoken, got ${JSON.stringify(raw)}`);
  return t;
}

/** A Go listen address (`net.Listen`): ":8880", "127.0.0.1:8880", "[::1]:8880", "localhost:8880". */
export interface ListenAddress {
  /** Undefined: every interface (Go's empty host). */
  host: string | undefined;
  port: number;
}

export function parseListenAddress(raw: string): ListenAddress {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(raw.trim());
  if (!m) throw new Error(`must be host:port or :port, got ${JSON.stringify(raw)}`);
  const port = Number(m[3]);
  if (port > 65535) throw new Error(`port ${port} is out of range`);
  const host = m[1] ?? m[2];
  if (m[1] !== undefined && isIP(m[1]) !== 6) throw new Error(`${JSON.stringify(m[1])} is not an IPv6 address`);
  return { host: host === "" ? undefined : host, port };
}

const PLACEHOLDER = /\{\{\s*(domain|role|delimiter)\s*\}\}/g;

/**
 * A file path from a naming format: k8s-athenz-sia `pkg/util/path-generator.go` `GeneratePath`.
 * `{{domain}}`, `{{role}}` and `{{delimiter}}` are replaced; when the role is empty the delimiter is
 * dropped too. Any other `{{...}}` action is refused (k8s-athenz-sia runs a Go template; the three
 * functions are the only ones it defines, so anything else fails there as well).
 */
export function generatePath(format: string, domain: string, role: string, delimiter: string): string {
  if (format === "") throw new Error("naming format is empty");
  if (domain === "") throw new Error("domain is empty");
  const values: Record<string, string> = { domain, role, delimiter: role === "" ? "" : delimiter };
  const out = format.replace(PLACEHOLDER, (_m, name: string) => values[name]!);
  if (out.includes("{{")) throw new Error(`naming format ${JSON.stringify(format)} has an action other than {{domain}}, {{role}}, {{delimiter}}`);
  return out;
}

const naming = (o: Omit<Setting<string | undefined>, "parse" | "default">): Setting<string | undefined> => ({
  ...optionalStr(o),
  parse: (raw) => {
    generatePath(raw, "domain", "role", ":role.");
    return raw;
  },
});

const fileMode = (o: Omit<Setting<number>, "parse">): Setting<number> => ({
  ...o,
  parse: (raw) => {
    const allowed: Record<string, number> = { "600": 0o600, "640": 0o640, "400": 0o400, "440": 0o440 };
    const mode = allowed[raw.replace(/^0o?/, "")];
    if (mode === undefined) throw new Error(`must be 0600, 0640, 0400 or 0440 (never readable by others), got ${JSON.stringify(raw)}`);
    return mode;
  },
});

/** Role certificate, token and token-server settings (names, flags and defaults of k8s-athenz-sia v3.6.0). */
export const tokenSpec = {
  targetDomainRoles: {
    env: "TARGET_DOMAIN_ROLES",
    flag: "target-domain-roles",
    description: "comma-separated <domain>:role.<role> (role certificates and tokens) or <domain> (tokens for every role of it)",
    default: [] as DomainRole[],
    parse: parseTargetDomainRoles,
  } satisfies Setting<DomainRole[]>,
  roleCertDir: optionalStr({
    env: "ROLECERT_DIR",
    flag: "rolecert-dir",
    description: "directory for role certificates: <domain><delimiter><role>.cert.pem",
  }),
  roleCertFilenameDelimiter: str({
    env: "ROLE_CERT_FILENAME_DELIMITER",
    flag: "role-cert-filename-delimiter",
    description: "what separates domain and role in role certificate file names",
    default: ":role.",
  }),
  roleCertKeyFileOutput: bool({
    env: "ROLE_CERT_KEY_FILE_OUTPUT",
    flag: "rolecert-key-file-output",
    description: "also write the key of each role certificate (the identity key) as <domain><delimiter><role>.key.pem in ROLECERT_DIR",
    default: false,
  }),
  roleCertNamingFormat: naming({
    env: "ROLE_CERT_NAMING_FORMAT",
    flag: "role-cert-naming-format",
    description: "role certificate path format with {{domain}} {{delimiter}} {{role}} (instead of ROLECERT_DIR)",
  }),
  roleCertKeyNamingFormat: naming({
    env: "ROLE_CERT_KEY_NAMING_FORMAT",
    flag: "role-cert-key-naming-format",
    description: "role certificate key path format with {{domain}} {{delimiter}} {{role}} (instead of ROLECERT_DIR)",
  }),
  roleAuthHeader: str({
    env: "ROLE_AUTH_HEADER",
    description: "header that carries the role token in the token server's header mode",
    default: "Athenz-Role-Auth",
    pattern: /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/,
  }),
  tokenType: {
    env: "TOKEN_TYPE",
    flag: "token-type",
    description: "tokens to fetch: accesstoken, roletoken or roletoken+accesstoken",
    default: { access: true, role: false } as TokenTypes,
    parse: parseTokenType,
  } satisfies Setting<TokenTypes>,
  tokenRefreshInterval: goDuration({
    env: "TOKEN_REFRESH_INTERVAL",
    flag: "token-refresh-interval",
    description: "how often cached tokens are fetched again (Go duration); a token is also fetched again before it expires",
    default: 30 * 60_000,
  }),
  tokenExpiry: goDuration({
    env: "TOKEN_EXPIRY",
    flag: "token-expiry",
    description: "token lifetime asked of ZTS (Go duration; 0 = ZTS's default): expires_in of access tokens, minExpiryTime of role tokens",
    default: 0,
  }),
  tokenServerAddr: {
    env: "TOKEN_SERVER_ADDR",
    flag: "token-server-addr",
    description: "listen address of the token server, e.g. :8880 or 127.0.0.1:8880; unset: no token server",
    default: undefined,
    parse: parseListenAddress,
  } satisfies Setting<ListenAddress | undefined>,
  tokenServerRestApi: bool({
    env: "TOKEN_SERVER_REST_API",
    flag: "token-server-rest-api",
    description: "serve POST /accesstoken and POST /roletoken",
    default: false,
  }),
  tokenServerTimeout: goDuration({
    env: "TOKEN_SERVER_TIMEOUT",
    flag: "token-server-timeout",
    description: "deadline of one token server request (Go duration); 503 after it",
    default: 3000,
  }),
  tokenServerTlsCaPath: optionalStr({
    env: "TOKEN_SERVER_TLS_CA_PATH",
    flag: "token-server-tls-ca-path",
    description: "CA bundle for client certificates: the token server then requires one",
  }),
  tokenServerTlsCertPath: optionalStr({
    env: "TOKEN_SERVER_TLS_CERT_PATH",
    flag: "token-server-tls-cert-path",
    description: "token server certificate (PEM): serve HTTPS",
  }),
  tokenServerTlsKeyPath: optionalStr({ env: "TOKEN_SERVER_TLS_KEY_PATH", flag: "token-server-tls-key-path", description: "token server key (PEM)" }),
  tokenDir: optionalStr({
    env: "TOKEN_DIR",
    flag: "token-dir",
    description: "directory for token files: <domain><delimiter><role>.accesstoken / .roletoken",
  }),
  accessTokenNamingFormat: naming({
    env: "ACCESS_TOKEN_NAMING_FORMAT",
    flag: "access-token-naming-format",
    description: "access token file path format with {{domain}} {{delimiter}} {{role}} (instead of TOKEN_DIR)",
  }),
  accessTokenFilenameDelimiter: str({
    env: "ACCESS_TOKEN_FILENAME_DELIMITER",
    flag: "access-token-filename-delimiter",
    description: "what separates domain and role in access token file names",
    default: ":role.",
  }),
  roleTokenNamingFormat: naming({
    env: "ROLE_TOKEN_NAMING_FORMAT",
    flag: "role-token-naming-format",
    description: "role token file path format with {{domain}} {{delimiter}} {{role}} (instead of TOKEN_DIR)",
  }),
  roleTokenFilenameDelimiter: str({
    env: "ROLE_TOKEN_FILENAME_DELIMITER",
    flag: "role-token-filename-delimiter",
    description: "what separates domain and role in role token file names",
    default: ":role.",
  }),
  useTokenServer: bool({
    env: "USE_TOKEN_SERVER",
    flag: "use-token-server",
    description: "serve the header mode: X-Athenz-Domain and X-Athenz-Role in, Authorization and ROLE_AUTH_HEADER out",
    default: false,
  }),
  // SHUTDOWN_TIMEOUT is the SIA's own (config.ts): the token server finishes requests in flight within it.
  shutdownDelay: goDuration({
    env: "SHUTDOWN_DELAY",
    flag: "shutdown-delay",
    description: "how long the token server keeps answering after SIGTERM before it stops accepting (Go duration; counts within SHUTDOWN_TIMEOUT)",
    default: 0,
  }),
  // ---- ours (not in k8s-athenz-sia) ----
  tokenCacheSize: int({
    env: "TOKEN_CACHE_SIZE",
    flag: "token-cache-size",
    description: "tokens kept for REST requests outside TARGET_DOMAIN_ROLES (least recently used dropped first)",
    default: 256,
    min: 0,
    max: 100_000,
  }),
  tokenServerMaxConnections: int({
    env: "TOKEN_SERVER_MAX_CONNECTIONS",
    flag: "token-server-max-connections",
    description: "open connections the token server accepts at once; more are closed",
    default: 256,
    min: 1,
    max: 65_535,
  }),
  outputFileMode: fileMode({
    env: "OUTPUT_FILE_MODE",
    flag: "output-file-mode",
    description: "mode of role certificate, role key and token files: 0600 (app runs as the SIA's UID) or 0640 (app shares the pod's fsGroup)",
    default: 0o600,
  }),
} satisfies Record<string, Setting<unknown>>;

export type TokenSettings = ConfigOf<typeof tokenSpec>;

/** Where the files of one kind of credential go. */
export interface FileOutput {
  /** Path format with {{domain}} {{delimiter}} {{role}}. */
  format: string;
  delimiter: string;
}

/** Role certificates to fetch (k8s-athenz-sia `DerivedRoleCert`). */
export interface RoleCertFeature {
  targets: DomainRole[];
  cert: FileOutput;
  /** Where the key goes; undefined: no key file. */
  key: FileOutput | undefined;
}

/** The token server (k8s-athenz-sia `DerivedTokenServer`). */
export interface TokenServerFeature {
  address: ListenAddress;
  /** USE_TOKEN_SERVER: X-Athenz-Domain / X-Athenz-Role. */
  headerMode: boolean;
  /** TOKEN_SERVER_REST_API: POST /accesstoken, /roletoken. */
  restApi: boolean;
  roleAuthHeader: string;
  timeoutMs: number;
  shutdownDelayMs: number;
  shutdownTimeoutMs: number;
  maxConnections: number;
  /** HTTPS when set; `caPath` makes it mutual TLS. */
  tls: { certPath: string; keyPath: string; caPath: string | undefined } | undefined;
}

/** What runs, derived from the settings. */
export interface TokenFeatures {
  roleCerts: RoleCertFeature | undefined;
  /** Every target, role or bare domain: the tokens kept fresh in the cache. */
  tokenTargets: DomainRole[];
  tokenTypes: TokenTypes;
  /** Token files per type; undefined when that type is not written. */
  tokenFiles: { access: FileOutput | undefined; role: FileOutput | undefined };
  tokenServer: TokenServerFeature | undefined;
  tokenRefreshMs: number;
  /** 0: ZTS's default. */
  tokenExpirySeconds: number;
  tokenCacheSize: number;
  fileMode: number;
}

/** Whether tokens are fetched at all: some consumer (a file or the token server) and a type. */
export function tokensWanted(f: TokenFeatures): boolean {
  return f.tokenServer !== undefined || f.tokenFiles.access !== undefined || f.tokenFiles.role !== undefined;
}

/**
 * Derives the features from the settings with k8s-athenz-sia's rules; throws {@link ConfigError}
 * naming the settings of a conflicting combination (its error cases, same wording).
 */
export function resolveTokenFeatures(s: TokenSettings, mode: "init" | "refresh" | "run", shutdownTimeoutMs = 5000): TokenFeatures {
  const init = mode === "init";
  // validateAndInit: a refresh interval at or above the expiry lets tokens lapse between refreshes.
  if (!init && s.tokenExpiry !== 0 && s.tokenRefreshInterval >= s.tokenExpiry) {
    throw new ConfigError(
      "--token-refresh-interval/TOKEN_REFRESH_INTERVAL",
      `Invalid TokenRefresh[${s.tokenRefreshInterval}ms] >= TokenExpiry[${s.tokenExpiry}ms]: it must be shorter than TOKEN_EXPIRY`,
    );
  }

  // derived-role-cert.go
  let roleCerts: RoleCertFeature | undefined;
  const roleTargets = s.targetDomainRoles.filter((t) => t.role !== "");
  if (roleTargets.length > 0 && (s.roleCertDir !== undefined || s.roleCertNamingFormat !== undefined)) {
    if (s.roleCertDir !== undefined && s.roleCertNamingFormat !== undefined) {
      throw new ConfigError("ROLECERT_DIR/ROLE_CERT_NAMING_FORMAT", "Both ROLECERT_DIR and ROLE_CERT_NAMING_FORMAT are set: set only one of them");
    }
    if (s.roleCertDir !== undefined && s.roleCertKeyNamingFormat !== undefined) {
      throw new ConfigError(
        "ROLECERT_DIR/ROLE_CERT_KEY_NAMING_FORMAT",
        "Both ROLECERT_DIR and ROLE_CERT_KEY_NAMING_FORMAT are set: set only one of them",
      );
    }
    if (s.roleCertKeyFileOutput && s.roleCertKeyNamingFormat === undefined && s.roleCertDir === undefined) {
      throw new ConfigError("ROLE_CERT_KEY_FILE_OUTPUT", "is enabled but neither ROLE_CERT_KEY_NAMING_FORMAT nor ROLECERT_DIR is set");
    }
    const delimiter = s.roleCertFilenameDelimiter;
    const dir = s.roleCertDir;
    roleCerts = {
      targets: roleTargets,
      cert: { format: dir === undefined ? s.roleCertNamingFormat! : join(dir, "{{domain}}{{delimiter}}{{role}}.cert.pem"), delimiter },
      key:
        dir === undefined
          ? s.roleCertKeyNamingFormat === undefined
            ? undefined
            : { format: s.roleCertKeyNamingFormat, delimiter }
          : s.roleCertKeyFileOutput
            ? { format: join(dir, "{{domain}}{{delimiter}}{{role}}.key.pem"), delimiter }
            : undefined,
    };
  }

  // derived-token-file.go
  let tokenFiles: TokenFeatures["tokenFiles"] = { access: undefined, role: undefined };
  if (s.tokenDir !== undefined || s.accessTokenNamingFormat !== undefined || s.roleTokenNamingFormat !== undefined) {
    if (s.tokenDir !== undefined && s.accessTokenNamingFormat !== undefined) {
      throw new ConfigError("TOKEN_DIR/ACCESS_TOKEN_NAMING_FORMAT", "Both TOKEN_DIR and ACCESS_TOKEN_NAMING_FORMAT are set: set only one of them");
    }
    if (s.tokenDir !== undefined && s.roleTokenNamingFormat !== undefined) {
      throw new ConfigError("TOKEN_DIR/ROLE_TOKEN_NAMING_FORMAT", "Both TOKEN_DIR and ROLE_TOKEN_NAMING_FORMAT are set: set only one of them");
    }
    // With only one *_NAMING_FORMAT set, the other type has no path: k8s-athenz-sia would join "" and
    // write into the working directory; we write no file for it.
    const dirFormat = (ext: string) => (s.tokenDir === undefined ? undefined : join(s.tokenDir, `{{domain}}{{delimiter}}{{role}}.${ext}`));
    const access = s.accessTokenNamingFormat ?? dirFormat("accesstoken");
    const role = s.roleTokenNamingFormat ?? dirFormat("roletoken");
    tokenFiles = {
      access: s.tokenType.access && access !== undefined ? { format: access, delimiter: s.accessTokenFilenameDelimiter } : undefined,
      role: s.tokenType.role && role !== undefined ? { format: role, delimiter: s.roleTokenFilenameDelimiter } : undefined,
    };
  }

  // derived-token-server.go: never in init mode; needs an address.
  let tokenServer: TokenServerFeature | undefined;
  if (!init && s.tokenServerAddr !== undefined) {
    const certPath = s.tokenServerTlsCertPath;
    const keyPath = s.tokenServerTlsKeyPath;
    if ((certPath === undefined) !== (keyPath === undefined)) {
      throw new ConfigError("TOKEN_SERVER_TLS_CERT_PATH/TOKEN_SERVER_TLS_KEY_PATH", "set both (HTTPS) or neither (HTTP)");
    }
    if (s.tokenServerTlsCaPath !== undefined && certPath === undefined) {
      throw new ConfigError(
        "TOKEN_SERVER_TLS_CA_PATH",
        "needs TOKEN_SERVER_TLS_CERT_PATH and TOKEN_SERVER_TLS_KEY_PATH (client certificates need HTTPS)",
      );
    }
    tokenServer = {
      address: s.tokenServerAddr,
      headerMode: s.useTokenServer,
      restApi: s.tokenServerRestApi,
      roleAuthHeader: s.roleAuthHeader,
      timeoutMs: s.tokenServerTimeout,
      // Both within SHUTDOWN_TIMEOUT, so the runner's hard deadline is never hit by the token server.
      shutdownDelayMs: Math.min(s.shutdownDelay, shutdownTimeoutMs),
      shutdownTimeoutMs: Math.max(0, shutdownTimeoutMs - Math.min(s.shutdownDelay, shutdownTimeoutMs)),
      maxConnections: s.tokenServerMaxConnections,
      tls: certPath !== undefined && keyPath !== undefined ? { certPath, keyPath, caPath: s.tokenServerTlsCaPath } : undefined,
    };
  }

  return {
    roleCerts,
    tokenTargets: s.targetDomainRoles,
    tokenTypes: s.tokenType,
    tokenFiles,
    tokenServer,
    tokenRefreshMs: s.tokenRefreshInterval,
    tokenExpirySeconds: Math.floor(s.tokenExpiry / 1000),
    tokenCacheSize: s.tokenCacheSize,
    fileMode: s.outputFileMode,
  };
}
