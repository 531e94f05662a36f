#!/usr/bin/env node
// The whole groove-destination flow from Node, against a server delivering to groove-sandbox.
//
// Stores a credential, makes and activates a create_ticket destination, streams records (raw_json bytes and a
// Struct) with SendRecords while reading their results as they come, lists the failed record, retries it, and
// decodes the google.rpc.BadRequest of a request the server refuses. The sandbox is scripted to answer the
// first create with a 500, so the expected counts are fixed; the script exits non-zero when they differ.
//
// Usage: node client.js [--server HOST:PORT] [--sandbox-url URL] [--token TOKEN]
// (or GROOVE_DESTINATION_ADDR, GROOVE_SANDBOX_URL, GROOVE_DESTINATION_TOKEN)
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const REPO = path.resolve(__dirname, '..', '..');
const PROTO_ROOT = path.join(REPO, 'proto');
// google/rpc/status.proto and error_details.proto, vendored from googleapis.
const GOOGLE_RPC_ROOT = path.join(REPO, 'third_party', 'googleapis');
const CONTRACT = ['credential', 'destination', 'delivery'].map(
  (name) => `groove/destination/v1/${name}.proto`,
);

/** A JSON value as a google.protobuf.Value, in proto-loader's object form. */
function toValue(value) {
  if (value === null || value === undefined) return { nullValue: 'NULL_VALUE' };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  switch (typeof value) {
    case 'string':
      return { stringValue: value };
    case 'number':
      return { numberValue: value };
    case 'boolean':
      return { boolValue: value };
    case 'object':
      return { structValue: toStruct(value) };
    default:
      throw new TypeError(`cannot put a ${typeof value} in a google.protobuf.Value`);
  }
}

/** A plain object as a google.protobuf.Struct: `{fields: {body: {stringValue: ...}}}`. */
function toStruct(object) {
  return { fields: Object.fromEntries(Object.entries(object).map(([key, value]) => [key, toValue(value)])) };
}

/** Decoders for google.rpc.Status and its details, from the vendored protos. */
function loadErrorDetails() {
  const root = new protobuf.Root();
  // Resolve imports against the vendored root; google/protobuf/* fall through to protobufjs's bundled copies.
  root.resolvePath = (origin, target) => {
    const vendored = path.join(GOOGLE_RPC_ROOT, target);
    return fs.existsSync(vendored) ? vendored : target;
  };
  // keepCase: the field names as in the .proto files, like protobufjs's own google.protobuf.Any (`type_url`).
  root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
  return root;
}

/** The google.rpc.BadRequest field violations a refusal carries in grpc-status-details-bin. */
function badRequestFields(error, errorDetails) {
  const [encoded] = error.metadata?.get('grpc-status-details-bin') ?? [];
  if (!encoded) return [];
  const status = errorDetails.lookupType('google.rpc.Status').decode(encoded);
  const badRequest = errorDetails.lookupType('google.rpc.BadRequest');
  return status.details
    .filter((any) => any.type_url.endsWith('/google.rpc.BadRequest'))
    .flatMap((any) => badRequest.decode(any.value).field_violations);
}

function options() {
  const { values } = parseArgs({
    options: {
      server: { type: 'string', default: process.env.GROOVE_DESTINATION_ADDR ?? '127.0.0.1:50051' },
      'sandbox-url': { type: 'string', default: process.env.GROOVE_SANDBOX_URL ?? 'http://127.0.0.1:8080' },
      token: { type: 'string', default: process.env.GROOVE_DESTINATION_TOKEN },
      'api-key': { type: 'string', default: process.env.GROOVE_SANDBOX_API_KEY ?? 'sandbox-key' },
    },
  });
  return values;
}

/** Promise form of a unary call. */
function unary(client, method, request, metadata) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

/** Replaces the sandbox's faults with `script`: its next calls get these answers, in order. */
async function scriptSandbox(sandboxUrl, script) {
  const response = await fetch(`${sandboxUrl}/_sandbox/faults`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ script }),
  });
  if (!response.ok) throw new Error(`sandbox refused the fault script: ${response.status}`);
}

async function main() {
  const args = options();
  const definition = protoLoader.loadSync(CONTRACT, {
    includeDirs: [PROTO_ROOT],
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const v1 = grpc.loadPackageDefinition(definition).groove.destination.v1;
  const errorDetails = loadErrorDetails();
  const metadata = new grpc.Metadata();
  if (args.token) metadata.set('authorization', `Bearer ${args.token}`);
  const insecure = grpc.credentials.createInsecure();
  const credentials = new v1.CredentialService(args.server, insecure);
  const destinations = new v1.DestinationService(args.server, insecure);
  const deliveries = new v1.DeliveryService(args.server, insecure);
  const run = crypto.randomBytes(4).toString('hex');
  const failures = [];
  const check = (what, got, expected) => {
    const [gotText, expectedText] = [JSON.stringify(got), JSON.stringify(expected)];
    console.log(`${what}: ${gotText} (expected ${expectedText})`);
    if (gotText !== expectedText) failures.push(`${what}: got ${gotText}, expected ${expectedText}`);
  };

  const { credential } = await unary(credentials, 'CreateCredential', {
    credentialId: `node-${run}`,
    displayName: 'Node example key',
    apiKey: args['api-key'],
  }, metadata);
  console.log(`credential ${credential.name} (${credential.apiKeyHint})`);

  try {
    await unary(destinations, 'CreateDestination', {
      destinationId: `node-invalid-${run}`,
      destination: { displayName: 'No config', credential: credential.name },
    }, metadata);
    failures.push('an invalid CreateDestination was accepted');
  } catch (error) {
    console.log(`invalid CreateDestination: ${grpc.status[error.code]}`);
    const violations = badRequestFields(error, errorDetails);
    for (const violation of violations) console.log(`  ${violation.field}: ${violation.description}`);
    check('refusal code', grpc.status[error.code], 'INVALID_ARGUMENT');
    check('fields named in BadRequest', violations.map((violation) => violation.field), ['destination.config']);
  }

  const { destination } = await unary(destinations, 'CreateDestination', {
    destinationId: `node-tickets-${run}`,
    destination: {
      displayName: 'Tickets from the Node example',
      credential: credential.name,
      config: { template: { templateId: 'create_ticket' } },
    },
  }, metadata);
  await unary(destinations, 'ActivateDestination', { name: destination.name }, metadata);
  console.log(`destination ${destination.name} active`);

  // The next Groove call is answered 500: a create that may have reached Groove, so it is kept as a
  // maybe-delivered failed record and not retried on its own.
  await scriptSandbox(args['sandbox-url'], [{ status: 500 }]);

  const ticket = (number) => ({
    body: `Node example ticket ${number}`,
    from: 'ann@example.com',
    to: 'support@example.com',
  });
  const summary = await new Promise((resolve, reject) => {
    let last;
    const call = deliveries.SendRecords(metadata);
    call.on('data', (response) => {
      for (const result of response.results) {
        const field = result.field ? ` field=${result.field}` : '';
        console.log(`  result ${result.recordIds.join(',')}: ${result.outcome}${field}`);
      }
      if (response.summary) last = response.summary;
    });
    call.on('error', reject);
    call.on('end', () => resolve(last));
    call.write({ start: { destination: destination.name } });
    call.write({
      records: {
        records: [
          { id: 'rec-1', rawJson: Buffer.from(JSON.stringify(ticket(1))) },
          { id: 'rec-2', rawJson: Buffer.from(JSON.stringify(ticket(2))) },
          { id: 'rec-3', json: toStruct(ticket(3)) },
          // No body: refused before any call, with the field named.
          { id: 'rec-4', rawJson: Buffer.from('{"from": "ann@example.com", "to": "support@example.com"}') },
        ],
      },
    });
    call.end();
  });
  check('records received', summary.recordsReceived, 4);
  check('delivered', summary.delivered, 2);
  check('failed', summary.failed, 1);
  check('invalid', summary.invalid, 1);
  check('unanswered', summary.unanswered, 0);

  const { failedRecords } = await unary(deliveries, 'ListFailedRecords', { destination: destination.name }, metadata);
  for (const failed of failedRecords) {
    console.log(`  failed record ${failed.record.id}: maybe_delivered=${failed.maybeDelivered} ${failed.error}`);
  }
  check('failed records kept', failedRecords.length, 1);
  check('kept as maybe delivered', failedRecords.map((failed) => failed.maybeDelivered), [true]);

  const retried = await unary(deliveries, 'RetryFailedRecords', { destination: destination.name, all: true }, metadata);
  for (const result of retried.results) console.log(`  retried ${result.recordIds.join(',')}: ${result.outcome}`);
  check('delivered on retry', retried.summary.delivered, 1);
  const left = await unary(deliveries, 'ListFailedRecords', { destination: destination.name }, metadata);
  check('failed records left', left.failedRecords.length, 0);

  for (const client of [credentials, destinations, deliveries]) client.close();
  if (failures.length > 0) {
    console.log(`node example: FAILED\n  ${failures.join('\n  ')}`);
    process.exit(1);
  }
  console.log('node example: ok');
}

main().catch((error) => {
  console.error(`node example: ${error.stack ?? error}`);
  process.exit(1);
});
