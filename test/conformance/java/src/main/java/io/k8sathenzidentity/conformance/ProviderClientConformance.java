package io.k8sathenzidentity.conformance;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.yahoo.athenz.instance.provider.InstanceConfirmation;
import com.yahoo.athenz.instance.provider.InstanceProvider;
import com.yahoo.athenz.instance.provider.ProviderResourceException;
import com.yahoo.athenz.instance.provider.impl.InstanceHttpProvider;

import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;
import java.io.File;
import java.io.FileInputStream;
import java.io.InputStream;
import java.security.KeyStore;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Drives a Copper Argos provider through Athenz's own HTTPS provider client, the way ZTS does.
 *
 * <p>ZTS side, reproduced here:
 * <ul>
 *   <li>TLS client context: ZTS builds it from the system properties {@code athenz.ssl_key_store},
 *       {@code athenz.ssl_key_store_password}, {@code athenz.ssl_key_store_type} (default PKCS12) and the
 *       matching {@code athenz.ssl_trust_store*} ones, as an {@code SSLContext} of protocol TLSv1.2 with the
 *       platform's default key and trust manager algorithms. This program reads the same properties.</li>
 *   <li>One {@link InstanceHttpProvider} per request: {@code initialize(provider, endpoint, sslContext, keyStore)},
 *       one {@code confirmInstance} (register) or {@code refreshInstance} (refresh), then {@code close()}.
 *       The client's own timeouts come from {@code athenz.instance.provider.client.connect_timeout} /
 *       {@code read_timeout} (milliseconds, 30000 by default), read by InstanceHttpProvider itself.</li>
 *   <li>Outcome mapping (ZTS's register and refresh handlers): a returned confirmation is success; a
 *       {@link ProviderResourceException} with code 504 becomes 504 for the SIA ("gateway-timeout"); any other
 *       code, and any other exception (an unparsable body, for one), becomes 403 ("forbidden").</li>
 * </ul>
 *
 * <p>Usage: {@code java -Dathenz.ssl_key_store=... -Dathenz.ssl_trust_store=... ProviderClientConformance
 * --provider <service> --endpoint <https url> --cases <file.json>}
 *
 * <p>Cases file: {@code {"cases": [{"name", "call": "instance"|"refresh", "provider"?: hostname-verifier name
 * override, "confirmation": InstanceConfirmation JSON, "expect": {"outcome": "allow"|"forbidden"|"gateway-timeout",
 * "providerCode"?: int, "attributes"?: {k: v}, "absentAttributes"?: [k], "messageContains"?: string}}]}}.
 *
 * <p>Output: one JSON object per case on stdout, then the line {@code N passed, N failed}. Exit status 0 when
 * every case met its expectation, 1 when one did not, 2 on a usage or set-up error.
 */
public final class ProviderClientConformance {

    private static final ObjectMapper JSON = new ObjectMapper();

    private ProviderClientConformance() {
    }

    public static void main(String[] args) {
        int status;
        try {
            status = run(args);
        } catch (UsageException ex) {
            System.err.println("usage error: " + ex.getMessage());
            status = 2;
        } catch (Exception ex) {
            System.err.println("set-up error: " + ex);
            status = 2;
        }
        System.out.flush();
        System.exit(status);
    }

    static final class UsageException extends Exception {
        private static final long serialVersionUID = 1L;

        UsageException(String message) {
            super(message);
        }
    }

    private static int run(String[] args) throws Exception {
        Map<String, String> flags = parseFlags(args);
        String provider = required(flags, "provider");
        String endpoint = required(flags, "endpoint");
        File casesFile = new File(required(flags, "cases"));

        SSLContext sslContext = ztsProviderSslContext();
        JsonNode cases = JSON.readTree(casesFile).path("cases");
        if (!cases.isArray() || cases.isEmpty()) {
            throw new UsageException(casesFile + " has no \"cases\" array");
        }

        int passed = 0;
        int failed = 0;
        for (JsonNode c : cases) {
            ObjectNode line = runCase(c, provider, endpoint, sslContext);
            if (line.path("ok").asBoolean()) {
                passed++;
            } else {
                failed++;
            }
            System.out.println(JSON.writeValueAsString(line));
        }
        System.out.println(passed + " passed, " + failed + " failed");
        return failed == 0 ? 0 : 1;
    }

    private static Map<String, String> parseFlags(String[] args) throws UsageException {
        Map<String, String> flags = new LinkedHashMap<>();
        for (int i = 0; i < args.length; i += 2) {
            if (!args[i].startsWith("--") || i + 1 >= args.length) {
                throw new UsageException("expected --name value pairs, got " + String.join(" ", args));
            }
            flags.put(args[i].substring(2), args[i + 1]);
        }
        return flags;
    }

    private static String required(Map<String, String> flags, String name) throws UsageException {
        String value = flags.get(name);
        if (value == null || value.isEmpty()) {
            throw new UsageException("--" + name + " is required");
        }
        return value;
    }

    private static String requiredProperty(String name) throws UsageException {
        String value = System.getProperty(name);
        if (value == null || value.isEmpty()) {
            throw new UsageException("system property " + name + " is required (as for ZTS)");
        }
        return value;
    }

    /** The TLS client context ZTS hands to HTTPS providers, from ZTS's own system property names. */
    static SSLContext ztsProviderSslContext() throws Exception {
        KeyStore keyStore = loadStore(requiredProperty("athenz.ssl_key_store"),
                System.getProperty("athenz.ssl_key_store_type", "PKCS12"),
                System.getProperty("athenz.ssl_key_store_password", ""));
        KeyStore trustStore = loadStore(requiredProperty("athenz.ssl_trust_store"),
                System.getProperty("athenz.ssl_trust_store_type", "PKCS12"),
                System.getProperty("athenz.ssl_trust_store_password", ""));

        KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        kmf.init(keyStore, System.getProperty("athenz.ssl_key_store_password", "").toCharArray());
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(trustStore);

        SSLContext context = SSLContext.getInstance("TLSv1.2");
        context.init(kmf.getKeyManagers(), tmf.getTrustManagers(), new SecureRandom());
        return context;
    }

    private static KeyStore loadStore(String path, String type, String password) throws Exception {
        KeyStore store = KeyStore.getInstance(type);
        try (InputStream in = new FileInputStream(path)) {
            store.load(in, password.toCharArray());
        }
        if (store.size() == 0) {
            throw new UsageException(path + " holds no entries");
        }
        return store;
    }

    private static ObjectNode runCase(JsonNode c, String defaultProvider, String endpoint, SSLContext sslContext) {
        String name = c.path("name").asText("(unnamed)");
        String call = c.path("call").asText("instance");
        String provider = c.path("provider").asText(defaultProvider);
        JsonNode expect = c.path("expect");

        ObjectNode line = JSON.createObjectNode();
        line.put("name", name);
        line.put("call", call);

        String outcome;
        Integer providerCode = null;
        String message = null;
        InstanceConfirmation answer = null;
        long start = System.nanoTime();

        InstanceProvider client = new InstanceHttpProvider();
        try {
            InstanceConfirmation request = JSON.treeToValue(c.path("confirmation"), InstanceConfirmation.class);
            client.initialize(provider, endpoint, sslContext, null);
            if ("refresh".equals(call)) {
                answer = client.refreshInstance(request);
            } else if ("instance".equals(call)) {
                answer = client.confirmInstance(request);
            } else {
                throw new IllegalArgumentException("unknown call " + call);
            }
            outcome = "allow";
        } catch (ProviderResourceException ex) {
            providerCode = ex.getCode();
            outcome = ex.getCode() == ProviderResourceException.GATEWAY_TIMEOUT ? "gateway-timeout" : "forbidden";
            message = ex.getMessage();
        } catch (Exception ex) {
            outcome = "forbidden";
            message = ex.toString();
        } finally {
            try {
                client.close();
            } catch (RuntimeException ignored) {
                // a client that failed to initialize has nothing to close
            }
        }

        line.put("outcome", outcome);
        if (providerCode != null) {
            line.put("providerCode", providerCode);
        }
        if (message != null) {
            line.put("message", message);
        }
        if (answer != null) {
            line.set("confirmation", JSON.valueToTree(answer));
        }
        line.put("millis", (System.nanoTime() - start) / 1_000_000);

        List<String> problems = check(expect, outcome, providerCode, message, answer);
        line.put("ok", problems.isEmpty());
        if (!problems.isEmpty()) {
            line.put("problems", String.join("; ", problems));
        }
        return line;
    }

    private static List<String> check(JsonNode expect, String outcome, Integer providerCode, String message,
            InstanceConfirmation answer) {
        List<String> problems = new ArrayList<>();
        String wantOutcome = expect.path("outcome").asText("");
        if (!wantOutcome.equals(outcome)) {
            problems.add("outcome " + outcome + ", want " + wantOutcome);
        }
        if (expect.has("providerCode")) {
            int want = expect.path("providerCode").asInt();
            if (providerCode == null || providerCode != want) {
                problems.add("provider code " + providerCode + ", want " + want);
            }
        }
        if (expect.has("messageContains")) {
            String want = expect.path("messageContains").asText();
            if (message == null || !message.contains(want)) {
                problems.add("message " + (message == null ? "(none)" : "'" + message + "'") + " lacks '" + want + "'");
            }
        }
        Map<String, String> attributes = answer == null || answer.getAttributes() == null
                ? Map.of() : answer.getAttributes();
        for (Map.Entry<String, JsonNode> e : expect.path("attributes").properties()) {
            String got = attributes.get(e.getKey());
            if (!e.getValue().asText().equals(got)) {
                problems.add("attribute " + e.getKey() + "=" + got + ", want " + e.getValue().asText());
            }
        }
        for (JsonNode absent : expect.path("absentAttributes")) {
            if (attributes.containsKey(absent.asText())) {
                problems.add("attribute " + absent.asText() + " present, want absent");
            }
        }
        return problems;
    }
}
