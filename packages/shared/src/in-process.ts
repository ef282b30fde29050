/**
 * A Connect transport that calls a service's implementation in this process without serializing:
 * for co-located services (identityd), where Connect's `createRouterTransport` would encode every
 * message to protobuf bytes, emulate the HTTP exchange (URL, header objects, body streams, an
 * envelope) and decode it again, only to hand the callee an equal message.
 *
 * Same contract as the port, built only from Connect's public API:
 * - the same routes function registers the same implementations (a recording `ConnectRouter`);
 * - the same server interceptors run (metrics, error mapping), outermost first;
 * - the callee gets a handler context with the call's deadline, its cancellation and the server's
 *   shutdown signal, and a copy of the request message (it cannot alter the caller's);
 * - the caller gets a `ConnectError` for any failure, a non-Connect error becoming `internal` as it
 *   would on the wire, and the callee's response headers and trailers.
 * Unary methods only (what co-located callers use); a streaming method answers `unimplemented`.
 *
 * bench/transport.bench.ts measures it against createRouterTransport and the network transports.
 */
import {
  clone,
  create,
  type DescMessage,
  type DescMethod,
  type DescMethodUnary,
  type DescService,
  isMessage,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type ConnectRouter,
  createContextValues,
  createServiceImplSpec,
  type HandlerContext,
  type Interceptor,
  type MethodImplSpec,
  type ServiceImpl,
  type Transport,
  type UnaryRequest,
  type UnaryResponse,
} from "@connectrpc/connect";

export interface InProcessTransportOptions {
  /** Server interceptors, outermost first (the ones the port runs). */
  interceptors?: Interceptor[];
  /** Aborts every call's handler signal when the service shuts down. */
  shutdownSignal?: AbortSignal;
  /** Upper bound of a call's deadline, as the port's `maxTimeoutMs`. */
  maxTimeoutMs?: number;
}

type UnarySpec = Extract<MethodImplSpec, { kind: "unary" }>;

/** What a finished call's handler signal is aborted with: a constant, so no DOMException is built per call. */
const CALL_ENDED = new ConnectError("in-process call ended", Code.Canceled);

/** Records what a routes function registers. */
function recordRoutes(routes: (router: ConnectRouter) => void): Map<DescMethod, MethodImplSpec> {
  const specs = new Map<DescMethod, MethodImplSpec>();
  const router: ConnectRouter = {
    handlers: [],
    service<T extends DescService>(service: T, implementation: Partial<ServiceImpl<T>>) {
      for (const spec of Object.values(createServiceImplSpec(service, implementation).methods)) specs.set(spec.method, spec);
      return router;
    },
    rpc() {
      throw new Error("in-process transport: register services with router.service()");
    },
  };
  routes(router);
  return specs;
}

/**
 * The handler's context, lighter than `createHandlerContext` (which builds three Headers objects, two
 * linked AbortControllers and a deadline timer per call, most of them unused by our handlers): one
 * AbortController linked to the caller's signal, the shutdown signal and the deadline (a timer only
 * when the caller set one), header objects made when first used.
 */
class InProcessContext implements HandlerContext {
  readonly requestMethod = "POST";
  readonly protocolName = "in-process";
  readonly url: string;
  readonly values: ReturnType<typeof createContextValues>;
  private readonly ac = new AbortController();
  private readonly linked: AbortSignal[] = [];
  private timer: NodeJS.Timeout | undefined;
  private readonly deadlineAt: number | undefined;
  private reqHeader: Headers | undefined;
  private resHeader: Headers | undefined;
  private resTrailer: Headers | undefined;
  private readonly onLinkedAbort = (ev: Event) => this.end((ev.target as AbortSignal).reason);

  constructor(
    readonly service: DescService,
    readonly method: DescMethod,
    private readonly header: ConstructorParameters<typeof Headers>[0] | undefined,
    signals: Array<AbortSignal | undefined>,
    timeoutMs: number | undefined,
    contextValues: ReturnType<typeof createContextValues> | undefined,
  ) {
    this.url = `in-process:///${service.typeName}/${method.name}`;
    this.values = contextValues ?? createContextValues();
    for (const s of signals) {
      if (!s) continue;
      if (s.aborted) {
        this.end(s.reason);
        break;
      }
      s.addEventListener("abort", this.onLinkedAbort);
      this.linked.push(s);
    }
    if (timeoutMs !== undefined && !this.ac.signal.aborted) {
      this.deadlineAt = Date.now() + timeoutMs;
      this.timer = setTimeout(() => this.end(new ConnectError("the operation timed out", Code.DeadlineExceeded)), timeoutMs);
    }
  }

  get signal(): AbortSignal {
    return this.ac.signal;
  }
  get requestHeader(): Headers {
    this.reqHeader ??= new Headers(this.header);
    return this.reqHeader;
  }
  get responseHeader(): Headers {
    this.resHeader ??= new Headers();
    return this.resHeader;
  }
  get responseTrailer(): Headers {
    this.resTrailer ??= new Headers();
    return this.resTrailer;
  }
  timeoutMs = (): number | undefined => (this.deadlineAt === undefined ? undefined : this.deadlineAt - Date.now());

  /** Ends the call's signal (once) and drops the links and the timer. */
  end(reason: unknown): void {
    clearTimeout(this.timer);
    for (const s of this.linked.splice(0)) s.removeEventListener("abort", this.onLinkedAbort);
    if (!this.ac.signal.aborted) this.ac.abort(reason);
  }
}

/** The in-process transport of `routes`. */
export function createInProcessTransport(routes: (router: ConnectRouter) => void, o: InProcessTransportOptions = {}): Transport {
  const specs = recordRoutes(routes);
  const interceptors = o.interceptors ?? [];
  return {
    async unary<I extends DescMessage, O extends DescMessage>(
      method: DescMethodUnary<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: ConstructorParameters<typeof Headers>[0] | undefined,
      input: MessageShape<I> | object,
      contextValues?: ReturnType<typeof createContextValues>,
    ): Promise<UnaryResponse<I, O>> {
      const spec = specs.get(method) as UnarySpec | undefined;
      if (spec?.kind !== "unary") throw new ConnectError(`${method.parent.typeName}/${method.name} is not implemented`, Code.Unimplemented);
      // As a Connect server: the caller's deadline, capped by maxTimeoutMs; none when it sets none.
      const deadline = timeoutMs !== undefined && timeoutMs > 0 ? Math.min(timeoutMs, o.maxTimeoutMs ?? timeoutMs) : undefined;
      const context = new InProcessContext(method.parent, method, header, [signal, o.shutdownSignal], deadline, contextValues);
      // The callee's own message, as it would have decoded one from the wire: a copy of a message, or
      // a new one from an init object (what generated clients pass).
      const message = isMessage(input, method.input)
        ? clone(method.input, input as MessageShape<I>)
        : create(method.input, input as MessageInitShape<I>);
      const impl = async (req: UnaryRequest<I, O>): Promise<UnaryResponse<I, O>> => {
        // An implementation may answer an init object; the wire would have made it a message.
        const out = create(method.output, (await spec.impl(req.message as never, context)) as MessageInitShape<O>);
        return { stream: false, service: method.parent, method, header: context.responseHeader, trailer: context.responseTrailer, message: out };
      };
      let next = impl;
      for (let i = interceptors.length - 1; i >= 0; i--) next = interceptors[i]!(next as never) as unknown as typeof impl;
      // As a network client does, the caller is answered when its call is aborted or its deadline
      // passes, even by a handler that does not watch its signal.
      let onAbort: (() => void) | undefined;
      const ended = new Promise<never>((_, reject) => {
        onAbort = () => reject(context.signal.reason);
        context.signal.addEventListener("abort", onAbort, { once: true });
      });
      ended.catch(() => {});
      try {
        if (context.signal.aborted) throw context.signal.reason;
        const call = next({
          stream: false,
          service: method.parent,
          method,
          requestMethod: "POST",
          url: context.url,
          signal: context.signal,
          header: context.requestHeader,
          contextValues: context.values,
          message,
        });
        return await Promise.race([call, ended]);
      } catch (err) {
        // The caller's own abort, then the deadline or shutdown (the reason Connect gives them), then
        // the handler's error: on the wire, anything but a ConnectError is "internal error" (its
        // detail stays in the server's log).
        if (signal?.aborted) throw ConnectError.from(signal.reason, Code.Canceled);
        if (err instanceof ConnectError) throw err;
        if (context.signal.aborted) throw ConnectError.from(context.signal.reason, Code.Canceled);
        throw new ConnectError("internal error", Code.Internal);
      } finally {
        if (onAbort) context.signal.removeEventListener("abort", onAbort);
        context.end(CALL_ENDED);
      }
    },
    async stream(method) {
      throw new ConnectError(`${method.parent.typeName}/${method.name}: streaming is not offered in process`, Code.Unimplemented);
    },
  } as Transport;
}
