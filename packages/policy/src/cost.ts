/**
 * A static cost bound for a CEL expression, since neither JavaScript CEL library has CEL's runtime
 * cost model. The estimator walks the parsed AST with the declared maximum size of every input
 * (sizes.ts) and returns an upper bound of the work an evaluation can do, in the units of
 * Kubernetes' CEL cost model (cel-go `checker/cost.go`): 1 per node, 0.1 per character a string
 * function traverses, and a comprehension's body priced once per element of its range.
 *
 * It is also the allow-list: a function or macro it does not know is refused, so a library upgrade
 * cannot bring an unpriced function into rules. `matches()` is refused: cel-js runs it with
 * JavaScript's backtracking RegExp (exponential on hostile input); `matchesRe2()` runs RE2 (linear)
 * and takes only a literal pattern, compiled once.
 */
import { RE2JS } from "re2js";
import { ROOTS, type Size, scalar, str } from "./sizes.js";

/** Per-rule limit; the Kubernetes CEL default per-expression limit is 1e6, our evaluator is slower per unit. */
export const RULE_COST_LIMIT = 100_000;
/** Comprehensions (all, exists, exists_one, map, filter) nested in one another. */
export const MAX_COMPREHENSION_NESTING = 2;
/** Comprehensions in one expression. */
export const MAX_COMPREHENSIONS = 8;

/** An expression the estimator refuses (unknown function, literal required, nesting), with the reason. */
export class CostError extends Error {
  override readonly name = "CostError";
}

/** The AST node shape of @marcbachmann/cel-js (its `ASTNode`), as far as the estimator reads it. */
interface Node {
  readonly op: string;
  readonly args: unknown;
}

export interface Estimate {
  cost: number;
  size: Size;
}

const strCost = (chars: number) => 1 + Math.ceil(chars / 10);

const CONVERSIONS = new Set(["int", "uint", "double", "bool", "timestamp", "duration"]);
/** Traverse the receiver. */
const STRING_SEARCH = new Set(["contains", "indexOf", "lastIndexOf"]);
/** Compare at most the argument's length. */
const STRING_AFFIX = new Set(["startsWith", "endsWith"]);
const STRING_TRANSFORM = new Set(["lowerAscii", "upperAscii", "trim", "substring"]);
const TIME_GETTERS = new Set([
  "getFullYear",
  "getMonth",
  "getDayOfMonth",
  "getDate",
  "getDayOfWeek",
  "getDayOfYear",
  "getHours",
  "getMinutes",
  "getSeconds",
  "getMilliseconds",
]);
const COMPREHENSIONS = new Set(["all", "exists", "exists_one", "map", "filter"]);

function union(a: Size, b: Size): Size {
  if (a.t === "string" && b.t === "string") return str(Math.max(a.max, b.max));
  if (a.t === "list" && b.t === "list") return { t: "list", max: Math.max(a.max, b.max), elem: union(a.elem, b.elem) };
  if (a.t === "map" && b.t === "map") return { t: "map", max: Math.max(a.max, b.max), key: union(a.key, b.key), value: union(a.value, b.value) };
  if (a.t === "scalar") return b;
  if (b.t === "scalar") return a;
  return a;
}

/** Characters (strings) or elements (collections) a value can hold, for pricing a traversal. */
function extent(s: Size): number {
  switch (s.t) {
    case "string":
      return s.max;
    case "list":
      return s.max * Math.max(1, extent(s.elem));
    case "map":
      return s.max * Math.max(1, extent(s.key) + extent(s.value));
    default:
      return 1;
  }
}

/** Cost of comparing two values of these sizes (==, !=, <, in). */
function compareCost(a: Size, b: Size): number {
  if (a.t === "string" || b.t === "string") return strCost(Math.min(extent(a), extent(b)));
  if (a.t === "list" || a.t === "map" || b.t === "list" || b.t === "map") return 1 + Math.ceil(Math.min(extent(a), extent(b)) / 10);
  return 1;
}

function isNode(v: unknown): v is Node {
  return typeof v === "object" && v !== null && "op" in v && "args" in v;
}

function identName(n: unknown): string {
  if (!isNode(n) || n.op !== "id" || typeof n.args !== "string") throw new CostError("a comprehension's variable must be a plain name");
  return n.args;
}

/** Walks the AST. */
class Estimator {
  comprehensions = 0;
  readonly regexes: string[] = [];

  walk(n: Node, scope: ReadonlyMap<string, Size>, nesting: number): Estimate {
    const args = n.args as unknown[];
    switch (n.op) {
      case "value": {
        const v = n.args;
        return { cost: 1, size: typeof v === "string" ? str(v.length) : scalar };
      }
      case "id": {
        const name = n.args as string;
        return { cost: 1, size: scope.get(name) ?? ROOTS[name] ?? scalar };
      }
      case ".":
      case ".?": {
        const recv = this.walk(args[0] as Node, scope, nesting);
        const field = args[1] as string;
        const s = recv.size;
        const size = s.t === "object" ? (s.fields[field] ?? scalar) : s.t === "map" ? s.value : scalar;
        return { cost: recv.cost + 1, size };
      }
      case "[]":
      case "[?]": {
        const recv = this.walk(args[0] as Node, scope, nesting);
        const idx = this.walk(args[1] as Node, scope, nesting);
        const s = recv.size;
        const size = s.t === "list" ? s.elem : s.t === "map" ? s.value : scalar;
        return { cost: recv.cost + idx.cost + 1 + (s.t === "map" ? strCost(extent(idx.size)) - 1 : 0), size };
      }
      case "call":
        return this.call(args[0] as string, args[1] as Node[], scope, nesting);
      case "rcall":
        return this.rcall(args[0] as string, args[1] as Node, args[2] as Node[], scope, nesting);
      case "list": {
        let cost = 1;
        let elem: Size = scalar;
        for (const e of args as Node[]) {
          const r = this.walk(e, scope, nesting);
          cost += r.cost;
          elem = union(elem, r.size);
        }
        return { cost, size: { t: "list", max: args.length, elem } };
      }
      case "map": {
        let cost = 1;
        let key: Size = scalar;
        let value: Size = scalar;
        for (const [k, v] of args as [Node, Node][]) {
          const rk = this.walk(k, scope, nesting);
          const rv = this.walk(v, scope, nesting);
          cost += rk.cost + rv.cost;
          key = union(key, rk.size);
          value = union(value, rv.size);
        }
        return { cost, size: { t: "map", max: args.length, key, value } };
      }
      case "?:": {
        const c = this.walk(args[0] as Node, scope, nesting);
        const a = this.walk(args[1] as Node, scope, nesting);
        const b = this.walk(args[2] as Node, scope, nesting);
        return { cost: c.cost + Math.max(a.cost, b.cost) + 1, size: union(a.size, b.size) };
      }
      case "||":
      case "&&": {
        const a = this.walk(args[0] as Node, scope, nesting);
        const b = this.walk(args[1] as Node, scope, nesting);
        return { cost: a.cost + b.cost + 1, size: scalar };
      }
      case "!_":
      case "-_": {
        const a = this.walk(n.args as Node, scope, nesting);
        return { cost: a.cost + 1, size: scalar };
      }
      default:
        return this.binary(n.op, args[0] as Node, args[1] as Node, scope, nesting);
    }
  }

  binary(op: string, l: Node, r: Node, scope: ReadonlyMap<string, Size>, nesting: number): Estimate {
    const a = this.walk(l, scope, nesting);
    const b = this.walk(r, scope, nesting);
    const base = a.cost + b.cost;
    switch (op) {
      case "+":
        if (a.size.t === "string" && b.size.t === "string")
          return { cost: base + strCost(a.size.max + b.size.max), size: str(a.size.max + b.size.max) };
        if (a.size.t === "list" && b.size.t === "list")
          return {
            cost: base + 1 + a.size.max + b.size.max,
            size: { t: "list", max: a.size.max + b.size.max, elem: union(a.size.elem, b.size.elem) },
          };
        return { cost: base + 1, size: scalar };
      case "in":
        if (b.size.t === "list") return { cost: base + b.size.max * compareCost(a.size, b.size.elem), size: scalar };
        if (b.size.t === "map") return { cost: base + strCost(extent(a.size)), size: scalar };
        return { cost: base + compareCost(a.size, b.size), size: scalar };
      case "==":
      case "!=":
      case "<":
      case "<=":
      case ">":
      case ">=":
        return { cost: base + compareCost(a.size, b.size), size: scalar };
      case "-":
      case "*":
      case "/":
      case "%":
        return { cost: base + 1, size: scalar };
      default:
        throw new CostError(`operator ${op} is not supported in identity policy rules`);
    }
  }

  call(name: string, args: Node[], scope: ReadonlyMap<string, Size>, nesting: number): Estimate {
    const ests = args.map((a) => this.walk(a, scope, nesting));
    const cost = ests.reduce((s, e) => s + e.cost, 1);
    const first = ests[0]?.size ?? scalar;
    if (name === "has" || name === "size") return { cost, size: scalar };
    if (name === "string") return { cost: cost + strCost(extent(first)), size: first.t === "string" ? first : str(Math.max(32, extent(first))) };
    if (name === "dyn") return { cost, size: first };
    if (CONVERSIONS.has(name)) return { cost: cost + strCost(extent(first)), size: scalar };
    throw new CostError(`function ${name}() is not available in identity policy rules`);
  }

  rcall(name: string, recvNode: Node, args: Node[], scope: ReadonlyMap<string, Size>, nesting: number): Estimate {
    if (isNode(recvNode) && recvNode.op === "id" && recvNode.args === "cel") {
      if (name !== "bind" || args.length !== 3) throw new CostError(`cel.${name}() is not available in identity policy rules`);
      const v = identName(args[0]);
      const init = this.walk(args[1]!, scope, nesting);
      const inner = new Map(scope);
      inner.set(v, init.size);
      const body = this.walk(args[2]!, inner, nesting);
      return { cost: init.cost + body.cost + 1, size: body.size };
    }
    if (COMPREHENSIONS.has(name)) return this.comprehension(name, recvNode, args, scope, nesting);
    if (name === "matches")
      throw new CostError(
        "matches() is not available: this CEL library runs it with a backtracking regular expression engine; use matchesRe2() with a literal RE2 pattern",
      );

    const recv = this.walk(recvNode, scope, nesting);
    const ests = args.map((a) => this.walk(a, scope, nesting));
    const base = ests.reduce((s, e) => s + e.cost, recv.cost + 1);
    const rs = recv.size;
    const rlen = extent(rs);
    if (STRING_SEARCH.has(name)) return { cost: base + strCost(rlen + extent(ests[0]?.size ?? scalar)), size: scalar };
    if (STRING_AFFIX.has(name)) return { cost: base + strCost(Math.min(rlen, extent(ests[0]?.size ?? scalar))), size: scalar };
    if (STRING_TRANSFORM.has(name)) return { cost: base + strCost(rlen), size: str(rlen) };
    if (name === "split") return { cost: base + strCost(rlen), size: { t: "list", max: rlen + 1, elem: str(rlen) } };
    if (name === "join") {
      const sep = extent(ests[0]?.size ?? str(0));
      const total = rs.t === "list" ? rs.max * (extent(rs.elem) + sep) : rlen;
      return { cost: base + strCost(total), size: str(total) };
    }
    if (name === "size") return { cost: base, size: scalar };
    if (TIME_GETTERS.has(name)) return { cost: base, size: scalar };
    if (name === "matchesRe2") {
      const pattern = args[0];
      if (args.length !== 1 || !isNode(pattern) || pattern.op !== "value" || typeof pattern.args !== "string")
        throw new CostError("matchesRe2() takes one literal string pattern");
      try {
        RE2JS.compile(pattern.args);
      } catch (err) {
        throw new CostError(`matchesRe2(): invalid RE2 pattern: ${(err as Error).message}`);
      }
      this.regexes.push(pattern.args);
      // RE2's NFA simulation is linear in the input, with a factor of the program's size.
      return { cost: base + strCost(rlen * Math.max(1, pattern.args.length)), size: scalar };
    }
    throw new CostError(`function ${name}() is not available in identity policy rules`);
  }

  comprehension(name: string, recvNode: Node, args: Node[], scope: ReadonlyMap<string, Size>, nesting: number): Estimate {
    this.comprehensions++;
    if (this.comprehensions > MAX_COMPREHENSIONS) throw new CostError(`more than ${MAX_COMPREHENSIONS} comprehensions in one rule`);
    if (nesting + 1 > MAX_COMPREHENSION_NESTING) throw new CostError(`comprehensions nested deeper than ${MAX_COMPREHENSION_NESTING}`);
    const range = this.walk(recvNode, scope, nesting);
    const r = range.size;
    const elem = r.t === "list" ? r.elem : r.t === "map" ? r.key : scalar;
    const n = r.t === "list" || r.t === "map" ? r.max : 1;
    const v = identName(args[0]);
    const inner = new Map(scope);
    inner.set(v, elem);
    const bodies = args.slice(1).map((a) => this.walk(a, inner, nesting + 1));
    const per = bodies.reduce((s, b) => s + b.cost, 1);
    const cost = range.cost + 1 + n * per;
    if (name === "filter") return { cost, size: { t: "list", max: n, elem } };
    if (name === "map") return { cost, size: { t: "list", max: n, elem: bodies[bodies.length - 1]?.size ?? scalar } };
    return { cost, size: scalar };
  }
}

/** The cost bound of a parsed expression, and the RE2 patterns it uses. Throws {@link CostError} for a construct refused. */
export function estimateCost(ast: unknown): { cost: number; regexes: string[] } {
  if (!isNode(ast)) throw new CostError("not a parsed expression");
  const e = new Estimator();
  const r = e.walk(ast, new Map(), 0);
  return { cost: r.cost, regexes: e.regexes };
}
