/**
 * Ports for child processes (etcd, kube-apiserver, nats-server, our services) to listen on.
 *
 * A port the kernel picked with listen(0) and released lies in Linux's ephemeral range (32768-60999,
 * `net.ipv4.ip_local_port_range`): before the child binds it, it can become the local port of any
 * process's outgoing connection, and the child then fails with EADDRINUSE (seen: etcd's peer port in
 * the chaos tier, identityd in the footprint bench). So ports come from 20000-31999, are checked free
 * by binding them, and are handed out once per process. Processes pick at random, so two test files
 * running at once collide only if they draw the same port in the same instant.
 */
import { createServer } from "node:net";

const FIRST = 20000;
const COUNT = 12000;
const handedOut = new Set<number>();

/** A free loopback TCP port below the ephemeral range, never returned twice by this process. */
export async function freePort(): Promise<number> {
  for (let tries = 0; tries < COUNT; tries++) {
    const port = FIRST + Math.floor(Math.random() * COUNT);
    if (handedOut.has(port)) continue;
    handedOut.add(port);
    const free = await new Promise<boolean>((resolve) => {
      const srv = createServer();
      srv.once("error", () => resolve(false));
      srv.listen(port, "127.0.0.1", () => srv.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error(`no free loopback port in ${FIRST}-${FIRST + COUNT - 1}`);
}
