package gaming_pipeline_tests.jvm;

import java.io.IOException;
import java.io.InputStream;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.util.Map;

import gaming_pipeline.delta.DynamoDBLogStore;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FSDataInputStream;
import org.apache.hadoop.fs.FSDataOutputStream;
import org.apache.hadoop.fs.FSInputStream;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.s3a.S3AFileSystem;
import software.amazon.awssdk.http.apache.ApacheHttpClient;
import software.amazon.awssdk.regions.Region;
import software.amazon.awssdk.services.dynamodb.DynamoDbClient;
import software.amazon.awssdk.services.dynamodb.model.AttributeValue;

/**
 * Two drivers finishing one claim, interleaved deterministically (test_delta_on_s3.py runs it).
 *
 * An incomplete claim on 0.json names a temporary object, as a driver leaves it between its
 * claim and its copy. Driver A recovers it through listFrom, on an s3a that pauses A at a
 * chosen point of its read of the temporary object; there driver B recovers the same claim
 * whole (copy into 0.json, claim complete, temporary object removed). Then A goes on. A must
 * neither fail nor leave 0.json other than the temporary object's actions.
 *
 *   java ... FinishRace MOMENT TABLE_URI key=value...   (MOMENT: first-read or close; the
 *   key=value pairs are the Hadoop configuration: s3a's and the log store's)
 */
public final class FinishRace {
    private static final String ACTIONS =
        "{\"commitInfo\":{\"operation\":\"WRITE\",\"engineInfo\":\"finish race\"}}\n"
            + "{\"add\":{\"path\":\"part-0.parquet\",\"size\":1,\"dataChange\":true}}\n";

    /** s3a whose streams on .tmp/ objects run HOOK once: before their first read, or at close. */
    public static final class PausingS3AFileSystem extends S3AFileSystem {
        static volatile String moment = "first-read";
        static volatile IoAction hook;

        @Override
        public FSDataInputStream open(Path path, int bufferSize) throws IOException {
            FSDataInputStream in = super.open(path, bufferSize);
            return path.toString().contains("/.tmp/") ? new FSDataInputStream(new Pausing(in)) : in;
        }

        static void fire(String at) throws IOException {
            IoAction run = hook;
            if (run != null && moment.equals(at)) {
                hook = null;
                run.run();
            }
        }
    }

    interface IoAction {
        void run() throws IOException;
    }

    private static final class Pausing extends FSInputStream {
        private final FSDataInputStream in;

        Pausing(FSDataInputStream in) {
            this.in = in;
        }

        @Override
        public int read() throws IOException {
            PausingS3AFileSystem.fire("first-read");
            return in.read();
        }

        @Override
        public int read(byte[] buffer, int offset, int length) throws IOException {
            PausingS3AFileSystem.fire("first-read");
            try {
                int n = in.read(buffer, offset, length);
                System.out.println("A read(" + length + ") of the temporary object: " + n);
                return n;
            } catch (IOException e) {
                System.out.println("A read(" + length + ") of the temporary object threw " + e);
                throw e;
            }
        }

        @Override
        public void seek(long position) throws IOException {
            in.seek(position);
        }

        @Override
        public long getPos() throws IOException {
            return in.getPos();
        }

        @Override
        public boolean seekToNewSource(long target) {
            return false;
        }

        @Override
        public void close() throws IOException {
            in.close();
            PausingS3AFileSystem.fire("close");
        }
    }

    public static void main(String[] args) throws Exception {
        String moment = args[0];
        String table = args[1];
        Configuration plain = new Configuration();
        plain.set("fs.s3a.impl", S3AFileSystem.class.getName());
        for (int i = 2; i < args.length; i++) {
            String[] pair = args[i].split("=", 2);
            plain.set(pair[0], pair[1]);
        }
        plain.setBoolean("fs.s3a.impl.disable.cache", true);
        Configuration pausing = new Configuration(plain);
        pausing.set("fs.s3a.impl", PausingS3AFileSystem.class.getName());

        Path log = new Path(table, "_delta_log");
        Path commit = new Path(log, "00000000000000000000.json");
        String tempPath = ".tmp/00000000000000000000.json.finish-race";
        Path temp = new Path(log, tempPath);
        FileSystem fs = commit.getFileSystem(plain);
        try (FSDataOutputStream out = fs.create(temp, true)) {
            out.write(ACTIONS.getBytes(StandardCharsets.UTF_8));
        }

        DynamoDBLogStore driverA = new DynamoDBLogStore(pausing);
        DynamoDBLogStore driverB = new DynamoDBLogStore(plain);
        claim(plain, table, tempPath);

        PausingS3AFileSystem.moment = moment;
        PausingS3AFileSystem.hook = () -> {
            System.out.println("A paused at " + moment + " of " + temp + ": B finishes the claim");
            driverB.listFrom(commit, plain);
        };
        boolean failed = false;
        StringBuilder problems = new StringBuilder();
        try {
            driverA.listFrom(commit, pausing);
        } catch (Exception e) {
            e.printStackTrace(System.out);
            StringBuilder chain = new StringBuilder("A failed: " + e);
            for (Throwable cause = e.getCause(); cause != null; cause = cause.getCause()) {
                chain.append("\n  caused by ").append(cause);
            }
            problems.append(chain).append('\n');
            failed = true;
        }
        if (PausingS3AFileSystem.hook != null) {
            problems.append("the pause never came: A did not read " + temp + "\n");
            failed = true;
        }
        String written;
        try (InputStream in = fs.open(commit)) {
            written = new String(in.readAllBytes(), StandardCharsets.UTF_8);
        }
        if (!written.equals(ACTIONS)) {
            problems.append(commit + " holds " + written.length() + " bytes, not the claim's actions: "
                + written + "\n");
            failed = true;
        }
        if (fs.exists(temp)) {
            problems.append(temp + " is left behind\n");
            failed = true;
        }
        System.out.println(problems + (failed ? "FAILED" : "OK"));
        System.exit(failed ? 1 : 0);
    }

    /** The incomplete claim a driver leaves between its claim and its copy. */
    private static void claim(Configuration conf, String table, String tempPath) {
        var builder = DynamoDbClient.builder()
            .region(Region.of(conf.get("gaming_pipeline.commits.region", "us-east-1")))
            .httpClientBuilder(ApacheHttpClient.builder());
        String endpoint = conf.get("gaming_pipeline.commits.endpoint", "");
        if (!endpoint.isEmpty()) {
            builder.endpointOverride(URI.create(endpoint));
        }
        try (DynamoDbClient dynamo = builder.build()) {
            dynamo.putItem(request -> request.tableName(conf.get("gaming_pipeline.commits.table")).item(Map.of(
                "tablePath", AttributeValue.builder().s(table).build(),
                "fileName", AttributeValue.builder().s("00000000000000000000.json").build(),
                "tempPath", AttributeValue.builder().s(tempPath).build(),
                "complete", AttributeValue.builder().s("false").build())));
        }
    }
}
