#!/usr/bin/env python3
"""Interop check: a plain Python gRPC client talks to a running pii-vault.

Generates stubs from proto/ with grpc_tools.protoc into a temporary directory, connects
with mutual TLS using the certificates given, and runs: health check, create tenant,
put, get (values compared), failed calls (their google.rpc ErrorInfo and BadRequest
decoded, reasons checked against the generated ErrorReason enum), audit query (the get is
recorded with its purpose), access report, export and erasure.
Exits 0 and prints "INTEROP OK" on success; any failure raises and exits non-zero.

    python interop.py --addr 127.0.0.1:7443 --proto-dir proto \
        --ca DATA/tls/ca.pem --cert DATA/tls/client.pem --key DATA/tls/client.key
"""

import argparse
import glob
import importlib
import importlib.resources
import json
import os
import sys
import tempfile

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from grpc_tools import protoc


def generate_stubs(proto_dir, out_dir):
    """Compiles every proto/piivault/v1/*.proto into out_dir and makes it importable."""
    protos = sorted(glob.glob(os.path.join(proto_dir, "piivault", "v1", "*.proto")))
    if not protos:
        raise SystemExit(f"no .proto files under {proto_dir}")
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    sys.path.insert(0, out_dir)


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def error_details(error, errors):
    """The ErrorInfo (reason, metadata) and BadRequest field paths of a failed call.

    The reason must be a name of the generated ErrorReason enum and the domain the vault's.
    """
    status = rpc_status.from_call(error)
    check(status is not None, f"{error.code()} carries no google.rpc.Status details")
    info, fields = None, []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
    check(info is not None, f"{error.code()} carries no ErrorInfo")
    check(info.domain == "piivault.v1", f"ErrorInfo domain {info.domain!r}")
    check(info.reason in errors.ErrorReason.keys(), f"reason {info.reason!r} is not an ErrorReason")
    return info.reason, dict(info.metadata), fields


def expect_error(call, code, reason, errors):
    """Runs call(), which must fail with code and ErrorInfo reason; returns the details."""
    try:
        call()
    except grpc.RpcError as e:
        check(e.code() == code, f"expected {code}, got {e.code()}: {e.details()}")
        got, metadata, fields = error_details(e, errors)
        check(got == reason, f"expected reason {reason}, got {got}")
        return metadata, fields
    raise AssertionError(f"expected {code} {reason}, the call succeeded")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", required=True, help="host:port of the vault")
    parser.add_argument("--proto-dir", required=True, help="the repository's proto/ directory")
    parser.add_argument("--ca", required=True, help="CA certificate the server chains to")
    parser.add_argument("--cert", required=True, help="client certificate (PEM)")
    parser.add_argument("--key", required=True, help="client private key (PEM)")
    parser.add_argument("--server-name", default="localhost", help="name in the server certificate")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="piivault-stubs-") as out_dir:
        generate_stubs(args.proto_dir, out_dir)
        common = importlib.import_module("piivault.v1.common_pb2")
        tenant = importlib.import_module("piivault.v1.tenant_pb2")
        tenant_grpc = importlib.import_module("piivault.v1.tenant_pb2_grpc")
        record = importlib.import_module("piivault.v1.record_pb2")
        record_grpc = importlib.import_module("piivault.v1.record_pb2_grpc")
        audit = importlib.import_module("piivault.v1.audit_pb2")
        audit_grpc = importlib.import_module("piivault.v1.audit_pb2_grpc")
        rights = importlib.import_module("piivault.v1.rights_pb2")
        rights_grpc = importlib.import_module("piivault.v1.rights_pb2_grpc")
        errors = importlib.import_module("piivault.v1.errors_pb2")
        tokens = importlib.import_module("piivault.v1.tokens_pb2")
        tokens_grpc = importlib.import_module("piivault.v1.tokens_pb2_grpc")

        def read(path):
            with open(path, "rb") as f:
                return f.read()

        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(args.ca),
            private_key=read(args.key),
            certificate_chain=read(args.cert),
        )
        options = [("grpc.ssl_target_name_override", args.server_name)]
        with grpc.secure_channel(args.addr, credentials, options=options) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)

            health = health_pb2_grpc.HealthStub(channel)
            for service in ["", "piivault.v1.RecordService", "piivault.v1.AuditService"]:
                status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
                check(status == health_pb2.HealthCheckResponse.SERVING, f"health of {service!r}: {status}")
            print("health: SERVING")

            created = tenant_grpc.TenantServiceStub(channel).CreateTenant(
                tenant.CreateTenantRequest(tenant_id="interop"), timeout=10
            )
            check(created.tenant_id == "interop", f"created {created}")
            check(created.key_version >= 1, f"key version {created.key_version}")
            print("create tenant: ok")

            records = record_grpc.RecordServiceStub(channel)
            values = {
                "email": (common.CATEGORY_ACCOUNT, common.Value(text="ada@example.com")),
                "bio": (common.CATEGORY_PROFILE, common.Value(text="Analytical engine, \u00e9t\u00e9")),
                "avatar": (common.CATEGORY_PROFILE, common.Value(bytes=bytes(range(256)))),
            }
            written = records.PutFields(
                record.PutFieldsRequest(
                    tenant_id="interop",
                    subject_id="user-py-1",
                    fields=[
                        record.FieldInput(name=name, category=category, value=value)
                        for name, (category, value) in values.items()
                    ],
                ),
                timeout=10,
            )
            check([f.name for f in written.fields] == list(values), f"written {written}")
            check(all(f.version == 1 for f in written.fields), f"versions {written}")
            print("put: ok")

            request_id = "py-interop-get-1"
            got, call = records.GetFields.with_call(
                record.GetFieldsRequest(tenant_id="interop", subject_id="user-py-1", purpose="support"),
                metadata=[("x-request-id", request_id)],
                timeout=10,
            )
            echoed = dict(call.initial_metadata()).get("x-request-id")
            check(echoed == request_id, f"x-request-id echoed as {echoed!r}")
            by_name = {f.name: f for f in got.fields}
            check(sorted(by_name) == sorted(values), f"fields read: {sorted(by_name)}")
            for name, (category, value) in values.items():
                check(by_name[name].value == value, f"{name} read back differently")
                check(by_name[name].category == category, f"{name} category {by_name[name].category}")
            print("get: ok")

            missing = record.GetFieldsRequest(tenant_id="interop", subject_id="nobody", purpose="support")
            expect_error(
                lambda: records.GetFields(missing, timeout=10),
                grpc.StatusCode.NOT_FOUND,
                "SUBJECT_NOT_FOUND",
                errors,
            )
            print("get missing: NOT_FOUND, reason SUBJECT_NOT_FOUND")

            bad_email = record.FieldInput(
                name="email", category=common.CATEGORY_ACCOUNT, value=common.Value(email="no-at-sign")
            )
            _, fields = expect_error(
                lambda: records.PutFields(
                    record.PutFieldsRequest(tenant_id="interop", subject_id="user-py-1", fields=[bad_email]),
                    timeout=10,
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "INVALID_INPUT",
                errors,
            )
            check(fields == ["fields[0].value"], f"field violations {fields}")
            print("put invalid: INVALID_ARGUMENT, reason INVALID_INPUT, field fields[0].value")

            def nick(value, key):
                field = record.FieldInput(
                    name="nick", category=common.CATEGORY_PROFILE, value=common.Value(text=value)
                )
                return record.PutFieldsRequest(
                    tenant_id="interop", subject_id="user-py-2", fields=[field], idempotency_key=key
                )

            first = records.PutFields(nick("ada", "py-req-1"), timeout=10)
            again = records.PutFields(nick("ada", "py-req-1"), timeout=10)
            check(again == first, f"sent again: {again} after {first}")
            expect_error(
                lambda: records.PutFields(nick("lovelace", "py-req-1"), timeout=10),
                grpc.StatusCode.FAILED_PRECONDITION,
                "IDEMPOTENCY_KEY_REUSED",
                errors,
            )
            print("put with an idempotency key: answered once; another request under it refused")

            # More of the reasons a caller meets, each provoked and decoded from its ErrorInfo.
            # (The others need a failing store or audit log, a key race or tampering inside
            # the server; the Rust tests provoke those, tests/it/error_reasons.rs.)
            def get_of(tenant_id, subject_id, names=()):
                request = record.GetFieldsRequest(
                    tenant_id=tenant_id, subject_id=subject_id, field_names=list(names), purpose="support"
                )
                return lambda: records.GetFields(request, timeout=10)

            stale = record.FieldInput(
                name="nick", category=common.CATEGORY_PROFILE, value=common.Value(text="x"), expected_version=7
            )
            cases = [
                (
                    lambda: tenant_grpc.TenantServiceStub(channel).CreateTenant(
                        tenant.CreateTenantRequest(tenant_id="interop"), timeout=10
                    ),
                    grpc.StatusCode.ALREADY_EXISTS,
                    "TENANT_EXISTS",
                ),
                (get_of("no-such-tenant", "u"), grpc.StatusCode.NOT_FOUND, "TENANT_NOT_FOUND"),
                (get_of("interop", "user-py-2", ["missing"]), grpc.StatusCode.NOT_FOUND, "FIELD_NOT_FOUND"),
                (
                    lambda: tokens_grpc.TokenServiceStub(channel).Detokenize(
                        tokens.DetokenizeRequest(tenant_id="interop", token="tok_" + "0" * 32, purpose="billing"),
                        timeout=10,
                    ),
                    grpc.StatusCode.NOT_FOUND,
                    "TOKEN_NOT_FOUND",
                ),
                (
                    lambda: records.PutFields(
                        record.PutFieldsRequest(tenant_id="interop", subject_id="user-py-2", fields=[stale]),
                        timeout=10,
                    ),
                    grpc.StatusCode.ABORTED,
                    "VERSION_MISMATCH",
                ),
            ]
            for call, code, reason in cases:
                expect_error(call, code, reason, errors)
            rights_grpc.SubjectRightsServiceStub(channel).RestrictSubject(
                rights.RestrictSubjectRequest(tenant_id="interop", subject_id="user-py-2"), timeout=10
            )
            expect_error(
                get_of("interop", "user-py-2"), grpc.StatusCode.FAILED_PRECONDITION, "SUBJECT_RESTRICTED", errors
            )
            print(
                "errors: TENANT_EXISTS, TENANT_NOT_FOUND, FIELD_NOT_FOUND, TOKEN_NOT_FOUND, "
                "VERSION_MISMATCH and SUBJECT_RESTRICTED decoded"
            )

            events = [
                event
                for page in audit_grpc.AuditServiceStub(channel).QueryAuditLog(
                    audit.QueryAuditLogRequest(
                        tenant_id="interop", subject_id="user-py-1", operation="get_fields"
                    ),
                    timeout=10,
                )
                for event in page.events
            ]
            mine = [e for e in events if e.request_id == request_id]
            check(len(mine) == 1, f"audit events for {request_id}: {len(mine)} of {len(events)}")
            event = mine[0]
            check(event.purpose == "support", f"purpose {event.purpose!r}")
            check(event.outcome == audit.OUTCOME_OK, f"outcome {event.outcome}")
            check(sorted(event.field_names) == sorted(values), f"audited fields {list(event.field_names)}")
            check(event.caller != "", "audited caller is empty")
            print("audit query: the get is recorded with purpose support")

            subject_rights = rights_grpc.SubjectRightsServiceStub(channel)
            ids = dict(tenant_id="interop", subject_id="user-py-1")
            report = subject_rights.AccessSubject(rights.AccessSubjectRequest(**ids), timeout=10)
            held = {h.field.name: h for h in report.fields}
            check(sorted(held) == sorted(values), f"access report fields {sorted(held)}")
            for name, (_, value) in values.items():
                check(held[name].field.value == value, f"access report value of {name}")
            readers = [r for r in report.recipients if r.request_id == request_id]
            check(len(readers) == 1, f"recipients with {request_id}: {len(readers)}")
            check(readers[0].purpose == "support", f"recipient purpose {readers[0].purpose!r}")
            check(readers[0].caller == event.caller, f"recipient caller {readers[0].caller!r}")
            print("access report: every field, and the get as a recipient")

            exported = b"".join(
                chunk.data
                for chunk in subject_rights.ExportSubject(
                    rights.ExportSubjectRequest(purpose="support", **ids), timeout=30
                )
            )
            document = json.loads(exported)
            check(document["schema"] == "pii-vault.export/v1", f"schema {document.get('schema')!r}")
            by_field = {f["name"]: f for f in document["fields"]}
            check(sorted(by_field) == sorted(values), f"exported fields {sorted(by_field)}")
            check(by_field["email"]["value"] == "ada@example.com", "exported email value")
            print("export: valid JSON with every field")

            receipt = subject_rights.EraseSubject(rights.EraseSubjectRequest(**ids), timeout=10)
            check(receipt.receipt_id != "" and not receipt.already_erased, f"receipt {receipt}")
            metadata, _ = expect_error(
                lambda: records.GetFields(record.GetFieldsRequest(purpose="support", **ids), timeout=10),
                grpc.StatusCode.NOT_FOUND,
                "SUBJECT_ERASED",
                errors,
            )
            check(metadata.get("receipt_id") == receipt.receipt_id, f"erased metadata {metadata}")
            again = subject_rights.EraseSubject(rights.EraseSubjectRequest(**ids), timeout=10)
            check(again.already_erased and again.receipt_id == receipt.receipt_id, "erase is idempotent")
            print(
                "erase: NOT_FOUND (SUBJECT_ERASED with the receipt id) afterwards; "
                "a second erase returns the first receipt"
            )

    print("INTEROP OK")


if __name__ == "__main__":
    main()
