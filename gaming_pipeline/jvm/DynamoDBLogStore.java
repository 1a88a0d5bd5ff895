package gaming_pipeline.delta;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.FileSystemException;
import java.time.Instant;
import java.time.temporal.ChronoUnit;
import java.util.Iterator;
import java.util.Map;
import java.util.Optional;
import java.util.UUID;
import java.util.concurrent.ConcurrentHashMap;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import io.delta.storage.HadoopFileSystemLogStore;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FSDataOutputStream;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import software.amazon.awssdk.http.apache.ApacheHttpClient;
import software.amazon.awssdk.regions.Region;
import software.amazon.awssdk.services.dynamodb.DynamoDbClient;
import software.amazon.awssdk.services.dynamodb.DynamoDbClientBuilder;
import software.amazon.awssdk.services.dynamodb.model.AttributeDefinition;
import software.amazon.awssdk.services.dynamodb.model.AttributeValue;
import software.amazon.awssdk.services.dynamodb.model.BillingMode;
import software.amazon.awssdk.services.dynamodb.model.ConditionalCheckFailedException;
import software.amazon.awssdk.services.dynamodb.model.KeySchemaElement;
import software.amazon.awssdk.services.dynamodb.model.KeyType;
import software.amazon.awssdk.services.dynamodb.model.PutItemRequest;
import software.amazon.awssdk.services.dynamodb.model.QueryRequest;
import software.amazon.awssdk.services.dynamodb.model.ResourceInUseException;
import software.amazon.awssdk.services.dynamodb.model.ResourceNotFoundException;
import software.amazon.awssdk.services.dynamodb.model.ScalarAttributeType;

/**
 * A Delta log store for S3 that is safe with several writers (drivers) at once.
 *
 * S3 cannot refuse to create an object that exists, so two drivers committing version N of
 * one table could both succeed and one commit would be lost. This store makes a conditional
 * put in a DynamoDB table the point where a commit is won: the first driver to claim
 * (table, N.json) writes N.json; every other gets FileAlreadyExistsException, which Delta
 * turns into its usual conflict check and retry at N+1.
 *
 * A commit goes: actions into a temporary object, the claim (incomplete, naming that object),
 * the copy into N.json, then the claim marked complete. A driver that dies after the claim
 * leaves an incomplete claim; the next writer of N+1, or any reader listing the log, finishes
 * the copy for it, so a claimed commit is never lost.
 *
 * This is the algorithm of Delta's own S3DynamoDBLogStore (delta-storage-s3-dynamodb), which
 * this machine's Maven mirror does not serve; gaming-pipeline fetch-jars compiles this class
 * instead. Its DynamoDB items are laid out as Delta documents for that store, but the two
 * must not share one table's commits: use one or the other for every writer of a table.
 *
 * Hadoop configuration (spark.hadoop.* in Spark):
 *   gaming_pipeline.commits.table     DynamoDB table (created on first use when missing)
 *   gaming_pipeline.commits.region    its region
 *   gaming_pipeline.commits.endpoint  an endpoint other than AWS's (a local stand-in)
 * Credentials come from the AWS SDK's default chain, as s3a's do.
 */
public class DynamoDBLogStore extends HadoopFileSystemLogStore {
    private static final Logger LOG = LoggerFactory.getLogger(DynamoDBLogStore.class);

    public static final String TABLE_KEY = "gaming_pipeline.commits.table";
    public static final String REGION_KEY = "gaming_pipeline.commits.region";
    public static final String ENDPOINT_KEY = "gaming_pipeline.commits.endpoint";

    // A completed claim outlives its commit by a day (DynamoDB's TTL removes it after), so a
    // late writer of the same N still finds the claim rather than relying on S3 alone.
    private static final long CLAIM_RETENTION_SECONDS = ChronoUnit.DAYS.getDuration().getSeconds();
    private static final Pattern COMMIT_FILE = Pattern.compile("^(\\d{20})\\.json$");

    // Delta makes a log store per table log; one client (and one table check) per process.
    private static final Map<String, DynamoDbClient> CLIENTS = new ConcurrentHashMap<>();

    private final String table;
    private final DynamoDbClient dynamo;

    public DynamoDBLogStore(Configuration hadoopConf) {
        super(hadoopConf);
        table = hadoopConf.getTrimmed(TABLE_KEY, "");
        if (table.isEmpty()) {
            throw new IllegalArgumentException(
                DynamoDBLogStore.class.getName() + " needs " + TABLE_KEY + " (set "
                    + "GAMING_PIPELINE_DELTA_COMMIT_TABLE)");
        }
        String region = hadoopConf.getTrimmed(REGION_KEY, "us-east-1");
        String endpoint = hadoopConf.getTrimmed(ENDPOINT_KEY, "");
        dynamo = CLIENTS.computeIfAbsent(
            String.join("|", table, region, endpoint),
            key -> ensureTable(client(region, endpoint), table));
    }

    /** A claim on one commit file of one table. tempPath is relative to _delta_log. */
    private record Claim(String tablePath, String fileName, String tempPath, boolean complete) {
        Path logDir() {
            return new Path(tablePath, "_delta_log");
        }

        Path commitFile() {
            return new Path(logDir(), fileName);
        }

        Path tempFile() {
            return new Path(logDir(), tempPath);
        }
    }

    @Override
    public void write(Path path, Iterator<String> actions, Boolean overwrite, Configuration hadoopConf)
            throws IOException {
        FileSystem fs = path.getFileSystem(hadoopConf);
        Matcher commit = COMMIT_FILE.matcher(path.getName());
        if (overwrite || !commit.matches()) {
            // Checkpoints, _last_checkpoint and checksums are not contended: write them as is.
            writeLines(fs, path, actions, overwrite);
            return;
        }
        if (fs.exists(path)) {
            throw new FileAlreadyExistsException(path.toString());
        }
        Path qualified = withoutUserInfo(fs.makeQualified(path));
        String tablePath = qualified.getParent().getParent().toString();
        long version = Long.parseLong(commit.group(1));
        if (version > 0) {
            requirePrevious(fs, tablePath, qualified.getParent(), version - 1);
        } else if (getClaim(tablePath, qualified.getName()).filter(Claim::complete).isPresent()) {
            // No 0.json, yet version 0 was settled: the table was deleted and made again
            // within a day, and its old claims would refuse every commit as a conflict. (An
            // unsettled claim is another driver creating the table: the put below refuses us.)
            throw new FileSystemException(
                "the Delta table " + tablePath + " was deleted but its commits are still claimed in "
                    + "DynamoDB table " + table + ": delete the items whose tablePath is "
                    + tablePath + " before writing it again");
        }

        Claim claim = new Claim(
            tablePath, qualified.getName(), ".tmp/" + qualified.getName() + "." + UUID.randomUUID(),
            false);
        writeLines(fs, claim.tempFile(), actions, true);
        try {
            putClaim(claim, false); // the commit is won or lost here
        } catch (FileAlreadyExistsException lost) {
            // The SDK retries a put whose answer it missed, and the retry's condition then
            // fails on our own claim: it is ours only if it names our temporary object.
            // Otherwise removing that object would strand the claim (no one could copy it).
            Optional<Claim> winner = getClaim(tablePath, qualified.getName());
            if (winner.isEmpty() || !winner.get().tempPath().equals(claim.tempPath())) {
                removeQuietly(fs, claim.tempFile());
                throw lost;
            }
        }
        try {
            finish(fs, claim);
        } catch (IOException | RuntimeException e) {
            // The commit is ours and durable in the claim: whoever lists the log next copies it.
            LOG.warn("commit {} claimed but not yet copied; the next reader finishes it", claim, e);
        }
    }

    @Override
    public Iterator<FileStatus> listFrom(Path path, Configuration hadoopConf) throws IOException {
        FileSystem fs = path.getFileSystem(hadoopConf);
        Path logDir = withoutUserInfo(fs.makeQualified(path)).getParent();
        Optional<Claim> latest = latestClaim(logDir.getParent().toString());
        if (latest.isPresent() && !latest.get().complete()) {
            finish(fs, latest.get());
        }
        return super.listFrom(path, hadoopConf);
    }

    @Override
    public Boolean isPartialWriteVisible(Path path, Configuration hadoopConf) {
        return false; // an S3 object appears whole or not at all
    }

    private void requirePrevious(FileSystem fs, String tablePath, Path logDir, long previous)
            throws IOException {
        String name = String.format("%020d.json", previous);
        Optional<Claim> claim = getClaim(tablePath, name);
        if (claim.isPresent() && !claim.get().complete()) {
            finish(fs, claim.get());
        } else if (!fs.exists(new Path(logDir, name))) {
            throw new FileSystemException(
                "previous commit " + new Path(logDir, name) + " is missing: refusing to commit after a gap");
        }
    }

    /** Copy the claim's actions into its commit file (unless there already) and mark it done. */
    private void finish(FileSystem fs, Claim claim) throws IOException {
        if (!fs.exists(claim.commitFile())) {
            copy(fs, claim);
        }
        putClaim(new Claim(claim.tablePath(), claim.fileName(), claim.tempPath(), true), true);
        removeQuietly(fs, claim.tempFile());
    }

    /**
     * The claim's temporary object into its commit file, whole or not at all. Several drivers
     * may copy one claim at once (its winner, and readers or the next writer recovering it):
     * they all write the same bytes, so whichever PUT lands last is harmless, as long as none
     * writes a part. An s3a output stream uploads on close, so it is closed only once every
     * byte is in it, and the temporary object is read whole before N.json is even created.
     */
    private static void copy(FileSystem fs, Claim claim) throws IOException {
        byte[] actions;
        try (InputStream in = fs.open(claim.tempFile())) {
            actions = in.readAllBytes();
        } catch (IOException | RuntimeException unreadable) {
            // Another driver copied the claim, marked it complete and removed the temporary
            // object. s3a opens lazily, so that shows at open or at the first read, as a
            // FileNotFoundException or wrapped in another exception: whatever the type, an
            // existing commit file means the copy is done.
            if (fs.exists(claim.commitFile())) {
                return;
            }
            throw unreadable;
        }
        FSDataOutputStream out;
        try {
            // Not atomic on s3a (a HEAD, then a PUT at close), hence the same bytes only.
            out = fs.create(claim.commitFile(), false);
        } catch (org.apache.hadoop.fs.FileAlreadyExistsException copied) {
            return;
        }
        try {
            out.write(actions);
        } catch (IOException | RuntimeException e) {
            out.abort(); // never out.close(): it would publish the part written
            throw e;
        }
        out.close();
    }

    private static void removeQuietly(FileSystem fs, Path path) {
        try {
            fs.delete(path, false);
        } catch (IOException e) {
            LOG.warn("could not remove {} (harmless: nothing reads it once its claim is settled)", path, e);
        }
    }

    private static void writeLines(FileSystem fs, Path path, Iterator<String> lines, boolean overwrite)
            throws IOException {
        try (OutputStream out = fs.create(path, overwrite)) {
            while (lines.hasNext()) {
                out.write((lines.next() + "\n").getBytes(StandardCharsets.UTF_8));
            }
        }
    }

    // ---- DynamoDB ------------------------------------------------------------------------

    private void putClaim(Claim claim, boolean overwrite) throws IOException {
        Map<String, AttributeValue> item = new java.util.HashMap<>(Map.of(
            "tablePath", text(claim.tablePath()),
            "fileName", text(claim.fileName()),
            "tempPath", text(claim.tempPath()),
            "complete", text(Boolean.toString(claim.complete()))));
        if (claim.complete()) {
            long expires = Instant.now().getEpochSecond() + CLAIM_RETENTION_SECONDS;
            item.put("expireTime", AttributeValue.builder().n(Long.toString(expires)).build());
        }
        PutItemRequest.Builder put = PutItemRequest.builder().tableName(table).item(item);
        if (!overwrite) {
            put.conditionExpression("attribute_not_exists(fileName)");
        }
        try {
            dynamo.putItem(put.build());
        } catch (ConditionalCheckFailedException lost) {
            throw new FileAlreadyExistsException(claim.commitFile().toString());
        }
    }

    private Optional<Claim> getClaim(String tablePath, String fileName) {
        return query(QueryRequest.builder()
            .keyConditionExpression("tablePath = :t AND fileName = :f")
            .expressionAttributeValues(Map.of(":t", text(tablePath), ":f", text(fileName))));
    }

    private Optional<Claim> latestClaim(String tablePath) {
        // Commit file names are zero-padded versions, so the greatest sort key is the latest.
        return query(QueryRequest.builder()
            .keyConditionExpression("tablePath = :t")
            .expressionAttributeValues(Map.of(":t", text(tablePath)))
            .scanIndexForward(false));
    }

    private Optional<Claim> query(QueryRequest.Builder request) {
        return dynamo.query(request.tableName(table).consistentRead(true).limit(1).build())
            .items().stream().findFirst()
            .map(item -> new Claim(
                item.get("tablePath").s(), item.get("fileName").s(), item.get("tempPath").s(),
                Boolean.parseBoolean(item.get("complete").s())));
    }

    private static AttributeValue text(String value) {
        return AttributeValue.builder().s(value).build();
    }

    private static DynamoDbClient client(String region, String endpoint) {
        DynamoDbClientBuilder builder = DynamoDbClient.builder()
            .region(Region.of(region))
            // The SDK bundle carries several HTTP clients; say which, or it refuses to choose.
            .httpClientBuilder(ApacheHttpClient.builder());
        if (!endpoint.isEmpty()) {
            builder.endpointOverride(URI.create(endpoint));
        }
        return builder.build();
    }

    private static DynamoDbClient ensureTable(DynamoDbClient dynamo, String table) {
        try {
            dynamo.describeTable(request -> request.tableName(table));
            return dynamo;
        } catch (ResourceNotFoundException missing) {
            LOG.info("creating DynamoDB table {} for Delta commits", table);
        }
        try {
            dynamo.createTable(request -> request
                .tableName(table)
                .billingMode(BillingMode.PAY_PER_REQUEST)
                .attributeDefinitions(
                    AttributeDefinition.builder().attributeName("tablePath")
                        .attributeType(ScalarAttributeType.S).build(),
                    AttributeDefinition.builder().attributeName("fileName")
                        .attributeType(ScalarAttributeType.S).build())
                .keySchema(
                    KeySchemaElement.builder().attributeName("tablePath").keyType(KeyType.HASH).build(),
                    KeySchemaElement.builder().attributeName("fileName").keyType(KeyType.RANGE).build()));
            dynamo.waiter().waitUntilTableExists(request -> request.tableName(table));
            dynamo.updateTimeToLive(request -> request
                .tableName(table)
                .timeToLiveSpecification(ttl -> ttl.attributeName("expireTime").enabled(true)));
        } catch (ResourceInUseException createdByAnotherDriver) {
            dynamo.waiter().waitUntilTableExists(request -> request.tableName(table));
        }
        return dynamo;
    }

    private static Path withoutUserInfo(Path path) {
        URI uri = path.toUri();
        if (uri.getUserInfo() == null) {
            return path;
        }
        try {
            return new Path(new URI(uri.getScheme(), null, uri.getHost(), uri.getPort(),
                uri.getPath(), uri.getQuery(), uri.getFragment()));
        } catch (java.net.URISyntaxException e) {
            throw new IllegalArgumentException(e);
        }
    }
}
