/**
 * Atomic writes of role certificates, role keys and tokens: the content goes to a temporary file in
 * the same directory with its final mode, is fsynced and renamed over the target, and the directory is
 * fsynced, so an application never reads half a file (k8s-athenz-sia `third_party/util/writer.go` does
 * the same write-then-rename, without the fsyncs and with mode 0644).
 *
 * The mode is the point: these files are secrets (a token is a bearer credential, the role key is the
 * identity key). 0600 suits an app running as the SIA's UID, 0640 an app sharing the pod's fsGroup
 * (the volume's setgid directory gives the files that group); nothing is readable by others.
 */
import { randomBytes } from "node:crypto";
import { mkdir, open, rename, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";

/** Writes `data` to `path` atomically with `mode`, creating the directory (0750) when missing. */
export async function writeFileAtomic(path: string, data: string, mode: number): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true, mode: 0o750 });
  const tmp = join(dir, `.${basename(path)}.tmp-${randomBytes(6).toString("hex")}`);
  const fh = await open(tmp, "wx", mode);
  try {
    try {
      await fh.writeFile(data);
      await fh.chmod(mode); // the umask must neither widen nor narrow it
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  const dh = await open(dir, "r");
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}
