#!/usr/bin/env python3
"""The whole groove-destination flow from Python, against a server delivering to groove-sandbox.

Stores a credential, makes and activates a create_ticket destination, streams records (raw_json bytes and a
Struct) with SendRecords while reading their results as they come, lists the failed record, retries it, and
reads the google.rpc.BadRequest of a request the server refuses. The sandbox is scripted to answer the first
create with a 500, so the expected counts are fixed; the script exits non-zero when they differ.

Usage: client.py [--server HOST:PORT] [--sandbox-url URL] [--token TOKEN]
(or GROOVE_DESTINATION_ADDR, GROOVE_SANDBOX_URL, GROOVE_DESTINATION_TOKEN)
"""

import argparse
import importlib
import json
import os
import pathlib
import secrets
import sys
import tempfile
import urllib.request

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

REPO = pathlib.Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "proto"


def generate_stubs():
    """Compiles proto/ into a temporary directory and imports the generated modules from there."""
    import grpc_tools
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="groove-destination-stubs-")
    # grpc_tools ships google/protobuf/*.proto (Struct, Timestamp, ...), which the contract imports.
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    files = sorted(str(path.relative_to(PROTO_ROOT)) for path in PROTO_ROOT.rglob("*.proto"))
    code = protoc.main(
        ["protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}", *files]
    )
    if code != 0:
        sys.exit(f"error: protoc failed on {PROTO_ROOT} with exit code {code}")
    sys.path.insert(0, out)
    names = ["common", "credential", "destination", "delivery"]
    messages = {name: importlib.import_module(f"groove.destination.v1.{name}_pb2") for name in names}
    services = {name: importlib.import_module(f"groove.destination.v1.{name}_pb2_grpc") for name in names[1:]}
    return messages, services


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("GROOVE_DESTINATION_ADDR", "127.0.0.1:50051"))
    parser.add_argument("--sandbox-url", default=os.environ.get("GROOVE_SANDBOX_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--token", default=os.environ.get("GROOVE_DESTINATION_TOKEN"))
    parser.add_argument("--api-key", default=os.environ.get("GROOVE_SANDBOX_API_KEY", "sandbox-key"))
    return parser.parse_args()


def script_sandbox(sandbox_url, script):
    """Replaces the sandbox's faults with `script`: its next calls get these answers, in order."""
    request = urllib.request.Request(
        f"{sandbox_url}/_sandbox/faults",
        data=json.dumps({"script": script}).encode(),
        method="PUT",
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request) as response:
        response.read()


def check(failures, what, got, expected):
    print(f"{what}: {got} (expected {expected})")
    if got != expected:
        failures.append(f"{what}: got {got}, expected {expected}")


def main():
    args = parse_args()
    pb, rpc = generate_stubs()
    common, credential, destination, delivery = (pb[n] for n in ["common", "credential", "destination", "delivery"])
    outcome_name = delivery.Outcome.Name
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
    failures = []

    channel = grpc.insecure_channel(args.server)
    credentials = rpc["credential"].CredentialServiceStub(channel)
    destinations = rpc["destination"].DestinationServiceStub(channel)
    deliveries = rpc["delivery"].DeliveryServiceStub(channel)
    run = secrets.token_hex(4)

    created = credentials.CreateCredential(
        credential.CreateCredentialRequest(
            credential_id=f"py-{run}", display_name="Python example key", api_key=args.api_key
        ),
        metadata=metadata,
    ).credential
    print(f"credential {created.name} ({created.api_key_hint})")

    # A refusal carries a google.rpc.Status in grpc-status-details-bin; its BadRequest names each bad field.
    try:
        destinations.CreateDestination(
            destination.CreateDestinationRequest(
                destination_id=f"py-invalid-{run}",
                destination=destination.Destination(display_name="No config", credential=created.name),
            ),
            metadata=metadata,
        )
        failures.append("an invalid CreateDestination was accepted")
    except grpc.RpcError as error:
        print(f"invalid CreateDestination: {error.code().name}")
        status = rpc_status.from_call(error)
        fields = []
        for detail in status.details if status else []:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                for violation in bad_request.field_violations:
                    print(f"  {violation.field}: {violation.description}")
                    fields.append(violation.field)
        check(failures, "refusal code", error.code(), grpc.StatusCode.INVALID_ARGUMENT)
        check(failures, "fields named in BadRequest", fields, ["destination.config"])

    name = destinations.CreateDestination(
        destination.CreateDestinationRequest(
            destination_id=f"py-tickets-{run}",
            destination=destination.Destination(
                display_name="Tickets from the Python example",
                credential=created.name,
                config=destination.DestinationConfig(
                    template=destination.TemplateEndpoint(template_id="create_ticket")
                ),
            ),
        ),
        metadata=metadata,
    ).destination.name
    destinations.ActivateDestination(destination.ActivateDestinationRequest(name=name), metadata=metadata)
    print(f"destination {name} active")

    # The next Groove call is answered 500: a create that may have reached Groove, so it is kept as a
    # maybe-delivered failed record and not retried on its own.
    script_sandbox(args.sandbox_url, [{"status": 500}])

    def ticket(number):
        return {"body": f"Python example ticket {number}", "from": "ann@example.com", "to": "support@example.com"}

    def requests():
        yield delivery.SendRecordsRequest(start=delivery.StreamStart(destination=name))
        records = [
            common.Record(id=f"rec-{number}", raw_json=json.dumps(ticket(number)).encode()) for number in (1, 2)
        ]
        struct_record = common.Record(id="rec-3")
        struct_record.json.update(ticket(3))
        records.append(struct_record)
        # No body: refused before any call, with the field named.
        records.append(common.Record(id="rec-4", raw_json=b'{"from": "ann@example.com", "to": "support@example.com"}'))
        yield delivery.SendRecordsRequest(records=delivery.RecordBatch(records=records))

    summary = None
    for response in deliveries.SendRecords(requests(), metadata=metadata):
        for result in response.results:
            extra = f" field={result.field}" if result.field else ""
            print(f"  result {','.join(result.record_ids)}: {outcome_name(result.outcome)}{extra}")
        if response.HasField("summary"):
            summary = response.summary
    check(failures, "records received", summary.records_received, 4)
    check(failures, "delivered", summary.delivered, 2)
    check(failures, "failed", summary.failed, 1)
    check(failures, "invalid", summary.invalid, 1)
    check(failures, "unanswered", summary.unanswered, 0)

    failed = deliveries.ListFailedRecords(
        delivery.ListFailedRecordsRequest(destination=name), metadata=metadata
    ).failed_records
    for record in failed:
        print(f"  failed record {record.record.id}: maybe_delivered={record.maybe_delivered} {record.error}")
    check(failures, "failed records kept", len(failed), 1)
    check(failures, "kept as maybe delivered", [r.maybe_delivered for r in failed], [True])

    retried = deliveries.RetryFailedRecords(
        delivery.RetryFailedRecordsRequest(destination=name, all=True), metadata=metadata
    )
    for result in retried.results:
        print(f"  retried {','.join(result.record_ids)}: {outcome_name(result.outcome)}")
    check(failures, "delivered on retry", retried.summary.delivered, 1)
    left = deliveries.ListFailedRecords(delivery.ListFailedRecordsRequest(destination=name), metadata=metadata)
    check(failures, "failed records left", len(left.failed_records), 0)

    if failures:
        print("python example: FAILED\n  " + "\n  ".join(failures), flush=True)
        sys.exit(1)
    print("python example: ok")


if __name__ == "__main__":
    main()
