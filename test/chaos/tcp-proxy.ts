/**
 * A TCP proxy on loopback that can be paused: a network partition that neither side is told about.
 * Paused, it forwards nothing in either direction and holds new connections without dialling the
 * target (a SYN that gets no answer); every byte read meanwhile is kept in order and delivered on
 * `resume()`, as TCP's retransmissions would once the link heals. `cut()` resets every connection.
 *
 *   const proxy = await startTcpProxy({ target: { host: "127.0.0.1", port: 4222 } });
 *   // give the client `nats://127.0.0.1:${proxy.port}`; proxy.pause(); ...; proxy.resume();
 */
import * as net from "node:net";

export interface TcpProxy {
  readonly port: number;
  readonly paused: boolean;
  /** Connections currently open through the proxy. */
  readonly connections: number;
  /** Bytes forwarded from the target to clients so far (e.g. how far a list response has come). */
  readonly bytesFromTarget: number;
  pause(): void;
  resume(): void;
  /** Destroys every open connection (both sides see a reset). */
  cut(): void;
  close(): Promise<void>;
}

export async function startTcpProxy(o: { target: { host: string; port: number } }): Promise<TcpProxy> {
  let paused = false;
  const open = new Set<net.Socket>();
  const clients = new Set<net.Socket>();
  /** Bytes read while paused, per destination, in order; and connections waiting to dial. */
  const held: Array<[net.Socket, Buffer]> = [];
  const waitingToDial: Array<() => void> = [];

  let bytesFromTarget = 0;
  const forward = (from: net.Socket, to: net.Socket, fromTarget: boolean) => {
    from.on("data", (chunk: Buffer) => {
      if (fromTarget) bytesFromTarget += chunk.length;
      if (paused) {
        held.push([to, chunk]);
        from.pause();
        return;
      }
      if (!to.write(chunk)) {
        from.pause();
        to.once("drain", () => {
          if (!paused) from.resume();
        });
      }
    });
    from.on("end", () => to.end());
    from.on("error", () => to.destroy());
    from.on("close", () => {
      open.delete(from);
      to.destroy();
    });
  };

  const server = net.createServer((client) => {
    open.add(client);
    clients.add(client);
    client.once("close", () => clients.delete(client));
    client.pause();
    const dial = () => {
      if (client.destroyed) return;
      const upstream = net.connect(o.target.port, o.target.host);
      open.add(upstream);
      forward(client, upstream, false);
      forward(upstream, client, true);
      upstream.once("connect", () => {
        if (!paused) client.resume();
      });
    };
    client.on("error", () => client.destroy());
    if (paused) waitingToDial.push(dial);
    else dial();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;

  return {
    port,
    get paused() {
      return paused;
    },
    get connections() {
      return clients.size;
    },
    get bytesFromTarget() {
      return bytesFromTarget;
    },
    pause() {
      paused = true;
      for (const s of open) s.pause();
    },
    resume() {
      paused = false;
      for (const [to, chunk] of held.splice(0)) if (!to.destroyed) to.write(chunk);
      for (const dial of waitingToDial.splice(0)) dial();
      for (const s of open) if (!s.destroyed) s.resume();
    },
    cut() {
      held.length = 0;
      for (const s of open) s.resetAndDestroy();
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of open) s.destroy();
        server.close(() => resolve());
      }),
  };
}
