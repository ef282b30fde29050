package io.k8sathenzidentity.conformance;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.yahoo.athenz.instance.provider.InstanceConfirmation;
import com.yahoo.athenz.instance.provider.InstanceProvider;
import com.yahoo.athenz.instance.provider.ProviderResourceException;
import com.yahoo.athenz.instance.provider.impl.InstanceHttpProvider;

import javax.net.ssl.KeyManager;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManager;
import javax.net.ssl.TrustManagerFactory;
import java.io.File;
import java.io.FileInputStream;
import java.io.InputStream;
import java.lang.management.ManagementFactory;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.locks.LockSupport;

/**
 * Load driver in ZTS's calling pattern: Athenz's own {@link InstanceHttpProvider}, a new instance per call on
 * one shared {@link SSLContext}, as ZTS's {@code InstanceProviderManager.getProvider} builds one per callback
 * (servers/zts .../InstanceProviderManager.java, libs/java/instance_provider .../InstanceHttpProvider.java and
 * InstanceProviderClient.java: a new Jersey client on the Apache connector per provider instance, closed with it).
 * So every call opens a new TCP connection; the TLS session is resumed when the shared context's client session
 * cache holds one the server accepts.
 *
 * <p>One JVM runs a warm-up (callers back to back, so the JIT has compiled the client: a cold Jersey client costs
 * tens of milliseconds of CPU per call) and then a list of phases, each one of:
 * <ul>
 *   <li>open loop ({@code rate > 0}): calls are started at {@code rate} per second on a fixed schedule, each on a
 *       thread of a pool of {@code threads} (ZTS serves each SIA request on its own thread), whatever the
 *       provider's latency; a call's latency is measured from its scheduled start, so a provider (or a driver)
 *       that falls behind shows it in the percentiles, and a call that cannot even be queued is "dropped";</li>
 *   <li>saturation ({@code rate = 0}): {@code threads} callers back to back.</li>
 * </ul>
 * A phase's {@code resumption: "off"} gives every call a TLS context of its own (same key and trust managers), so
 * no session can be resumed: the full-handshake figures. {@code --pids} names the provider's processes: their CPU
 * time (utime + stime from /proc) over each measured window is reported, and so is this JVM's own. A phase may
 * name its own endpoint and pids, so several providers are measured in turns by one warm JVM (on a shared
 * machine, providers compared should see the same load), and may be quiet (load without a result: a warm-up).
 *
 * <p>Output: per phase, a line {@code {"event":"phase-start","name":...}} when its measured window opens and then
 * its result object (counts, latency percentiles in ms, the achieved rate, CPU figures). Exit 0, or 2 on a usage
 * or set-up error.
 *
 * <p>Usage: {@code java -Dathenz.ssl_key_store=... ZtsLoadDriver --provider <service> --endpoint <https url>
 * --bodies <file: JSON array of InstanceConfirmation> --phases <JSON array of {name, rate, threads, settleMs,
 * durationMs, resumption, endpoint?, pids?, quiet?}> [--call instance|refresh] [--warmup-ms 20000] [--warmup-threads 4]
 * [--tls TLSv1.2|TLSv1.3] [--pids 1,2] [--clk-tck 100]}
 */
public final class ZtsLoadDriver {

    private static final ObjectMapper JSON = new ObjectMapper();

    private ZtsLoadDriver() {
    }

    public static void main(String[] args) {
        int status;
        try {
            run(parse(args));
            status = 0;
        } catch (ProviderClientConformance.UsageException ex) {
            System.err.println("usage error: " + ex.getMessage());
            status = 2;
        } catch (Exception ex) {
            System.err.println("set-up error: " + ex);
            ex.printStackTrace();
            status = 2;
        }
        System.out.flush();
        System.exit(status);
    }

    static final class Phase {
        String name;
        double rate;
        int threads;
        long settleMs;
        long durationMs;
        boolean resumption;
        /** This phase's provider, when not the run's (several providers measured in turns, one warm JVM). */
        String endpoint;
        /** The processes of this phase's provider, when not the run's. */
        long[] pids;
        /** Load without a reported result (warms a provider). */
        boolean quiet;
    }

    static final class Options {
        String provider;
        String endpoint;
        String call = "instance";
        List<InstanceConfirmation> bodies;
        List<Phase> phases = new ArrayList<>();
        long warmupMs = 20000;
        int warmupThreads = 4;
        String tls = "TLSv1.2";
        long[] pids = new long[0];
        /** Clock ticks per second of /proc/<pid>/stat (getconf CLK_TCK). */
        long clkTck = 100;
    }

    private static Options parse(String[] args) throws Exception {
        Map<String, String> flags = new LinkedHashMap<>();
        for (int i = 0; i < args.length; i += 2) {
            if (!args[i].startsWith("--") || i + 1 >= args.length) {
                throw new ProviderClientConformance.UsageException("expected --name value pairs, got " + String.join(" ", args));
            }
            flags.put(args[i].substring(2), args[i + 1]);
        }
        Options o = new Options();
        o.provider = required(flags, "provider");
        o.endpoint = required(flags, "endpoint");
        o.call = flags.getOrDefault("call", o.call);
        if (!o.call.equals("instance") && !o.call.equals("refresh")) {
            throw new ProviderClientConformance.UsageException("--call must be instance or refresh");
        }
        JsonNode bodies = JSON.readTree(new File(required(flags, "bodies")));
        if (!bodies.isArray() || bodies.isEmpty()) {
            throw new ProviderClientConformance.UsageException("--bodies must hold a non-empty JSON array");
        }
        o.bodies = new ArrayList<>();
        for (JsonNode b : bodies) {
            o.bodies.add(JSON.treeToValue(b, InstanceConfirmation.class));
        }
        JsonNode phases = JSON.readTree(required(flags, "phases"));
        if (!phases.isArray() || phases.isEmpty()) {
            throw new ProviderClientConformance.UsageException("--phases must be a non-empty JSON array");
        }
        for (JsonNode p : phases) {
            Phase ph = new Phase();
            ph.name = p.path("name").asText("phase");
            ph.rate = p.path("rate").asDouble(0);
            ph.threads = p.path("threads").asInt(ph.rate > 0 ? 64 : 4);
            ph.settleMs = p.path("settleMs").asLong(2000);
            ph.durationMs = p.path("durationMs").asLong(10000);
            String resumption = p.path("resumption").asText("on");
            if (!resumption.equals("on") && !resumption.equals("off")) {
                throw new ProviderClientConformance.UsageException("phase " + ph.name + ": resumption must be on or off");
            }
            ph.resumption = resumption.equals("on");
            ph.endpoint = p.hasNonNull("endpoint") ? p.get("endpoint").asText() : null;
            if (p.has("pids")) {
                ph.pids = new long[p.get("pids").size()];
                for (int i = 0; i < ph.pids.length; i++) {
                    ph.pids[i] = p.get("pids").get(i).asLong();
                }
            }
            ph.quiet = p.path("quiet").asBoolean(false);
            if (ph.threads < 1 || ph.durationMs < 1 || ph.rate < 0 || ph.settleMs < 0) {
                throw new ProviderClientConformance.UsageException("phase " + ph.name + ": threads and durationMs must be positive, rate and settleMs >= 0");
            }
            o.phases.add(ph);
        }
        o.warmupMs = Long.parseLong(flags.getOrDefault("warmup-ms", String.valueOf(o.warmupMs)));
        o.warmupThreads = Integer.parseInt(flags.getOrDefault("warmup-threads", String.valueOf(o.warmupThreads)));
        o.tls = flags.getOrDefault("tls", o.tls);
        if (!o.tls.equals("TLSv1.2") && !o.tls.equals("TLSv1.3")) {
            throw new ProviderClientConformance.UsageException("--tls must be TLSv1.2 or TLSv1.3");
        }
        o.clkTck = Long.parseLong(flags.getOrDefault("clk-tck", String.valueOf(o.clkTck)));
        String pids = flags.getOrDefault("pids", "");
        o.pids = pids.isEmpty() ? new long[0] : Arrays.stream(pids.split(",")).mapToLong(Long::parseLong).toArray();
        return o;
    }

    private static String required(Map<String, String> flags, String name) throws ProviderClientConformance.UsageException {
        String value = flags.get(name);
        if (value == null || value.isEmpty()) {
            throw new ProviderClientConformance.UsageException("--" + name + " is required");
        }
        return value;
    }

    /** ZTS's key and trust managers, from ZTS's own system properties (as ProviderClientConformance reads them). */
    private static final class Managers {
        final KeyManager[] keys;
        final TrustManager[] trust;

        Managers() throws Exception {
            String password = System.getProperty("athenz.ssl_key_store_password", "");
            KeyStore keyStore = load(System.getProperty("athenz.ssl_key_store"), System.getProperty("athenz.ssl_key_store_type", "PKCS12"), password);
            KeyStore trustStore = load(System.getProperty("athenz.ssl_trust_store"), System.getProperty("athenz.ssl_trust_store_type", "PKCS12"),
                    System.getProperty("athenz.ssl_trust_store_password", ""));
            KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
            kmf.init(keyStore, password.toCharArray());
            TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
            tmf.init(trustStore);
            keys = kmf.getKeyManagers();
            trust = tmf.getTrustManagers();
        }

        private static KeyStore load(String path, String type, String password) throws Exception {
            if (path == null || path.isEmpty()) {
                throw new ProviderClientConformance.UsageException("athenz.ssl_key_store and athenz.ssl_trust_store are required (as for ZTS)");
            }
            KeyStore store = KeyStore.getInstance(type);
            try (InputStream in = new FileInputStream(path)) {
                store.load(in, password.toCharArray());
            }
            return store;
        }

        SSLContext context(String protocol) throws Exception {
            SSLContext context = SSLContext.getInstance(protocol);
            context.init(keys, trust, new SecureRandom());
            return context;
        }
    }

    /** The first few distinct error messages of a phase, for the reader of a run with errors. */
    private static final Map<String, Integer> ERRORS = new java.util.concurrent.ConcurrentHashMap<>();

    private static void noteError(Exception ex) {
        String message = String.valueOf(ex);
        if (ERRORS.size() < 5 || ERRORS.containsKey(message)) {
            ERRORS.merge(message, 1, Integer::sum);
        }
    }

    /** One call as ZTS makes it; returns the outcome name. */
    private static String call(Options o, String endpoint, SSLContext context, InstanceConfirmation body) {
        InstanceProvider client = new InstanceHttpProvider();
        try {
            client.initialize(o.provider, endpoint, context, null);
            InstanceConfirmation answer = o.call.equals("refresh") ? client.refreshInstance(body) : client.confirmInstance(body);
            return answer != null ? "allow" : "forbidden";
        } catch (ProviderResourceException ex) {
            return ex.getCode() == ProviderResourceException.GATEWAY_TIMEOUT ? "gateway-timeout" : "forbidden";
        } catch (Exception ex) {
            noteError(ex);
            return "error";
        } finally {
            try {
                client.close();
            } catch (RuntimeException ignored) {
                // a client that failed to initialize has nothing to close
            }
        }
    }

    /** Latencies (ns) and outcomes of the measured window; calls outside it are not recorded. */
    private static final class Recorder {
        final long[] latencies;
        final AtomicInteger count = new AtomicInteger();
        final Map<String, AtomicInteger> outcomes = new LinkedHashMap<>();
        volatile boolean recording;

        Recorder(int capacity) {
            latencies = new long[capacity];
            for (String k : new String[] {"allow", "forbidden", "gateway-timeout", "error", "dropped"}) {
                outcomes.put(k, new AtomicInteger());
            }
        }

        void record(long latencyNs, String outcome) {
            if (!recording) {
                return;
            }
            outcomes.get(outcome).incrementAndGet();
            // A dropped call never ran: it counts in "dropped", not in the latencies or the CPU per call.
            if (outcome.equals("dropped")) {
                return;
            }
            int i = count.getAndIncrement();
            if (i < latencies.length) {
                latencies[i] = latencyNs;
            }
        }
    }

    private static long procCpuTicks(long pid) {
        try {
            String stat = Files.readString(Path.of("/proc/" + pid + "/stat"), StandardCharsets.US_ASCII);
            String[] f = stat.substring(stat.lastIndexOf(')') + 2).split(" ");
            return Long.parseLong(f[11]) + Long.parseLong(f[12]);
        } catch (Exception ex) {
            throw new IllegalStateException("cannot read the CPU time of pid " + pid + ": " + ex.getMessage(), ex);
        }
    }

    private static long ownCpuNs() {
        return ((com.sun.management.OperatingSystemMXBean) ManagementFactory.getOperatingSystemMXBean()).getProcessCpuTime();
    }

    /** CPU counters at the start of a measured window. */
    private static final class Window {
        final long[] provider;
        final long own;
        final long startNs;

        Window(long[] pids) {
            provider = new long[pids.length];
            for (int i = 0; i < pids.length; i++) {
                provider[i] = procCpuTicks(pids[i]);
            }
            own = ownCpuNs();
            startNs = System.nanoTime();
        }
    }

    private static void run(Options o) throws Exception {
        Managers managers = new Managers();
        SSLContext shared = managers.context(o.tls);
        AtomicLong next = new AtomicLong();
        if (o.warmupMs > 0) {
            Phase warmup = new Phase();
            warmup.name = "warm-up";
            warmup.threads = o.warmupThreads;
            warmup.durationMs = o.warmupMs;
            warmup.resumption = true;
            runPhase(o, warmup, managers, shared, next, false);
        }
        for (Phase phase : o.phases) {
            ERRORS.clear();
            ObjectNode result = runPhase(o, phase, managers, shared, next, !phase.quiet);
            if (!phase.quiet) {
                System.out.println(JSON.writeValueAsString(result));
                System.out.flush();
            }
        }
    }

    private static ObjectNode runPhase(Options o, Phase ph, Managers managers, SSLContext shared, AtomicLong next, boolean report) throws Exception {
        Recorder rec = new Recorder(ph.rate > 0 ? (int) Math.min(50_000_000, ph.rate * ph.durationMs / 1000 * 2 + 1000) : 2_000_000);
        String endpoint = ph.endpoint != null ? ph.endpoint : o.endpoint;
        long[] pids = ph.pids != null ? ph.pids : o.pids;
        // One call: the body cycles through the file (a distinct pod per call), the context is the shared one
        // unless resumption is off.
        java.util.function.LongConsumer oneCall = (scheduledNs) -> {
            InstanceConfirmation body = o.bodies.get((int) (next.getAndIncrement() % o.bodies.size()));
            SSLContext context;
            try {
                context = ph.resumption ? shared : managers.context(o.tls);
            } catch (Exception ex) {
                noteError(ex);
                rec.record(System.nanoTime() - scheduledNs, "error");
                return;
            }
            String outcome = call(o, endpoint, context, body);
            rec.record(System.nanoTime() - scheduledNs, outcome);
        };
        Runnable opened = () -> {
            if (report) {
                ObjectNode start = JSON.createObjectNode();
                start.put("event", "phase-start");
                start.put("name", ph.name);
                try {
                    System.out.println(JSON.writeValueAsString(start));
                } catch (Exception ex) {
                    throw new IllegalStateException(ex);
                }
                System.out.flush();
            }
        };

        Window window = null;
        long endNs;
        long t0 = System.nanoTime();
        long measureFrom = t0 + TimeUnit.MILLISECONDS.toNanos(ph.settleMs);
        long measureTo = measureFrom + TimeUnit.MILLISECONDS.toNanos(ph.durationMs);
        if (ph.rate > 0) {
            // Open loop: the schedule does not wait for answers. A call that finds 4x the pool already queued
            // is dropped (the provider or the driver is far behind; the figure says so).
            ExecutorService pool = Executors.newFixedThreadPool(ph.threads);
            try {
                long intervalNs = (long) (1e9 / ph.rate);
                AtomicInteger inFlight = new AtomicInteger();
                long slot = t0;
                while (slot < measureTo) {
                    long now = System.nanoTime();
                    if (now < slot) {
                        LockSupport.parkNanos(slot - now);
                        continue;
                    }
                    if (window == null && slot >= measureFrom) {
                        opened.run();
                        window = new Window(pids);
                        rec.recording = true;
                    }
                    final long scheduled = slot;
                    if (inFlight.get() >= ph.threads * 4) {
                        rec.record(System.nanoTime() - scheduled, "dropped");
                    } else {
                        inFlight.incrementAndGet();
                        pool.execute(() -> {
                            try {
                                oneCall.accept(scheduled);
                            } finally {
                                inFlight.decrementAndGet();
                            }
                        });
                    }
                    slot += intervalNs;
                }
                // Calls scheduled in the window finish before the figures are read.
                pool.shutdown();
                pool.awaitTermination(120, TimeUnit.SECONDS);
            } finally {
                pool.shutdownNow();
            }
            rec.recording = false;
            endNs = System.nanoTime();
        } else {
            // Saturation: every thread calls back to back; the window is a time window.
            List<Thread> threads = new ArrayList<>();
            for (int i = 0; i < ph.threads; i++) {
                Thread t = new Thread(() -> {
                    while (System.nanoTime() < measureTo) {
                        oneCall.accept(System.nanoTime());
                    }
                });
                t.start();
                threads.add(t);
            }
            long wait = measureFrom - System.nanoTime();
            if (wait > 0) {
                TimeUnit.NANOSECONDS.sleep(wait);
            }
            opened.run();
            window = new Window(pids);
            rec.recording = true;
            long left = measureTo - System.nanoTime();
            if (left > 0) {
                TimeUnit.NANOSECONDS.sleep(left);
            }
            rec.recording = false;
            endNs = System.nanoTime();
            for (Thread t : threads) {
                t.join();
            }
        }
        if (window == null) {
            window = new Window(pids);
        }
        long ownCpu = ownCpuNs() - window.own;
        long[] cpuAfter = new long[pids.length];
        for (int i = 0; i < pids.length; i++) {
            cpuAfter[i] = procCpuTicks(pids[i]);
        }

        int n = Math.min(rec.count.get(), rec.latencies.length);
        long[] lat = Arrays.copyOf(rec.latencies, n);
        Arrays.sort(lat);
        double seconds = (endNs - window.startNs) / 1e9;
        ObjectNode out = JSON.createObjectNode();
        out.put("name", ph.name);
        out.put("endpoint", endpoint);
        out.put("mode", ph.rate > 0 ? "open-loop" : "saturation");
        out.put("offeredPerSecond", ph.rate);
        out.put("threads", ph.threads);
        out.put("tls", o.tls);
        out.put("resumption", ph.resumption);
        out.put("calls", n);
        ObjectNode outcomes = out.putObject("outcomes");
        rec.outcomes.forEach((k, v) -> outcomes.put(k, v.get()));
        ObjectNode errors = out.putObject("errorSamples");
        ERRORS.forEach(errors::put);
        out.put("seconds", seconds);
        out.put("achievedPerSecond", n / seconds);
        out.put("p50Ms", percentile(lat, 50));
        out.put("p90Ms", percentile(lat, 90));
        out.put("p99Ms", percentile(lat, 99));
        out.put("p999Ms", percentile(lat, 99.9));
        out.put("maxMs", n == 0 ? Double.NaN : lat[n - 1] / 1e6);
        out.put("driverCpuMs", ownCpu / 1e6);
        out.put("driverCpuShare", ownCpu / 1e9 / seconds / Runtime.getRuntime().availableProcessors());
        ObjectNode provider = out.putObject("providerCpuMs");
        double total = 0;
        for (int i = 0; i < pids.length; i++) {
            double ms = (cpuAfter[i] - window.provider[i]) * 1000.0 / o.clkTck;
            provider.put(String.valueOf(pids[i]), ms);
            total += ms;
        }
        out.put("providerCpuMsTotal", total);
        out.put("providerCpuUsPerCall", n == 0 ? Double.NaN : total * 1000 / n);
        return out;
    }

    private static double percentile(long[] sorted, double p) {
        if (sorted.length == 0) {
            return Double.NaN;
        }
        int idx = (int) Math.min(sorted.length - 1, Math.max(0, Math.ceil(p / 100 * sorted.length) - 1));
        return sorted[idx] / 1e6;
    }
}
