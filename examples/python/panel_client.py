#!/usr/bin/python3
"""How a Python application (the DebVisor web panel) calls debvisor-rpcd.

Uses Debian's python3-grpcio and python3-grpc-tools only. The stubs are compiled from the
daemon's proto/ at run time (see README.md): mTLS, WhoAmI, ListVms, a VM snapshot created
with a request_id, waiting for an operation, and the google.rpc details of a refused call
(RetryInfo, QuotaFailure, BadRequest) decoded from the grpc-status-details-bin trailer.

Exit status: 0 when every call succeeded, 1 when the daemon refused or failed a call
(its code and decoded details are printed on stderr), 2 for a usage error.
"""

import argparse
import atexit
import glob
import importlib
import os
import shutil
import sys
import tempfile
import uuid

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO_DIR = os.path.normpath(os.path.join(HERE, '..', '..', 'proto'))
DEADLINE_SECONDS = 15

# What the client needs from proto/: the API and the google.rpc error details. Not
# proto/grpc/ (its grpc/ package would shadow grpcio's) nor the test-only service.
PROTO_GLOBS = ('debvisor/v1/*.proto', 'google/rpc/*.proto')


def compile_protos(proto_dir, out_dir):
    """Compiles the API into out_dir as the packages debvisor.v1 and google.rpc.

    The generated modules import each other absolutely (``from debvisor.v1 import ...``),
    so out_dir itself goes on sys.path: no __init__.py files are written, the packages are
    namespace packages and merge with Debian's google.protobuf.
    """
    sources = sorted(
        os.path.relpath(path, proto_dir)
        for pattern in PROTO_GLOBS
        for path in glob.glob(os.path.join(proto_dir, pattern))
    )
    if not sources:
        raise SystemExit(f'panel_client: no .proto files under {proto_dir}')
    well_known = os.path.join(os.path.dirname(protoc.__file__), '_proto')
    args = ['protoc', f'-I{proto_dir}', f'-I{well_known}', f'--python_out={out_dir}', f'--grpc_python_out={out_dir}', *sources]
    if protoc.main(args) != 0:
        raise SystemExit('panel_client: protoc failed (see above)')


def load_api(proto_dir, build_dir):
    """Compiles (unless build_dir already holds the stubs) and imports the API modules."""
    if build_dir is None:
        build_dir = tempfile.mkdtemp(prefix='debvisor-pb-')
        atexit.register(shutil.rmtree, build_dir, ignore_errors=True)
    if not os.path.exists(os.path.join(build_dir, 'debvisor', 'v1', 'access_pb2.py')):
        os.makedirs(build_dir, exist_ok=True)
        compile_protos(proto_dir, build_dir)
    sys.path.insert(0, build_dir)
    names = ['access_pb2', 'access_pb2_grpc', 'vm_pb2', 'vm_pb2_grpc', 'operation_pb2', 'operation_pb2_grpc']
    api = {name: importlib.import_module(f'debvisor.v1.{name}') for name in names}
    api['status_pb2'] = importlib.import_module('google.rpc.status_pb2')
    api['error_details_pb2'] = importlib.import_module('google.rpc.error_details_pb2')
    return argparse.Namespace(**api)


def status_details(api, error):
    """The typed details of a refused call, as lines of text.

    The daemon sends a google.rpc.Status in the binary trailer grpc-status-details-bin;
    its details are Any messages: RetryInfo (when to retry), QuotaFailure (which quota),
    BadRequest (which request field, as a path such as spec.disks[2].size_bytes).
    """
    trailers = dict(error.trailing_metadata() or ())
    raw = trailers.get('grpc-status-details-bin')
    if raw is None:
        return []
    status = api.status_pb2.Status.FromString(raw)
    details = api.error_details_pb2
    lines = []
    for detail in status.details:
        if detail.Is(details.RetryInfo.DESCRIPTOR):
            info = details.RetryInfo()
            detail.Unpack(info)
            delay = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            lines.append(f'RetryInfo: retry_delay={delay:.3f}s (retry-after trailer: {trailers.get("retry-after")})')
        elif detail.Is(details.QuotaFailure.DESCRIPTOR):
            failure = details.QuotaFailure()
            detail.Unpack(failure)
            for violation in failure.violations:
                lines.append(f'QuotaFailure: subject={violation.subject} description={violation.description}')
        elif detail.Is(details.BadRequest.DESCRIPTOR):
            bad = details.BadRequest()
            detail.Unpack(bad)
            for violation in bad.field_violations:
                lines.append(f'BadRequest: field={violation.field} description={violation.description}')
        else:
            lines.append(f'detail of type {detail.TypeName()}')
    return lines


def report(api, error):
    print(f'error: {error.code().name}: {error.details()}', file=sys.stderr)
    for line in status_details(api, error):
        print(f'  {line}', file=sys.stderr)


def mtls_channel(target, ca, cert, key):
    """A channel that verifies the daemon against the DebVisor CA and presents a client certificate."""
    with open(ca, 'rb') as f_ca, open(cert, 'rb') as f_cert, open(key, 'rb') as f_key:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=f_ca.read(), private_key=f_key.read(), certificate_chain=f_cert.read()
        )
    return grpc.secure_channel(target, credentials)


def terminal(api, state):
    states = api.operation_pb2
    return state in (states.OPERATION_STATE_SUCCEEDED, states.OPERATION_STATE_FAILED, states.OPERATION_STATE_CANCELLED)


def wait_for_operation(api, channel, operation):
    """Follows an operation on WatchOperation until it ends, printing its progress."""
    operations = api.operation_pb2_grpc.OperationServiceStub(channel)
    name = api.operation_pb2.OperationState.Name
    if terminal(api, operation.state):
        return operation
    stream = operations.WatchOperation(api.operation_pb2.WatchOperationRequest(operation_id=operation.id), timeout=300)
    for update in stream:
        operation = update.operation
        print(f'operation {operation.id}: {name(operation.state)} {operation.progress_percent}% {operation.stage}')
        if terminal(api, operation.state):
            stream.cancel()
            break
    return operation


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--target', required=True, help='HOST:PORT of debvisor-rpcd')
    parser.add_argument('--ca', required=True, help='PEM file of the DebVisor CA')
    parser.add_argument('--cert', required=True, help='PEM client certificate')
    parser.add_argument('--key', required=True, help='PEM private key of the client certificate')
    parser.add_argument('--vm', help='VM to snapshot and shut down')
    parser.add_argument('--snapshot', help='create this VM snapshot of --vm, with a request_id')
    parser.add_argument('--shutdown', action='store_true', help='shut --vm down and wait for the operation')
    parser.add_argument('--burst', type=int, default=0, help='call WhoAmI this many times in a row (shows RetryInfo once the rate limit refuses)')
    parser.add_argument('--proto-dir', default=DEFAULT_PROTO_DIR, help='the daemon\'s proto/ directory')
    parser.add_argument('--build-dir', help='keep the compiled stubs here (compiled once) instead of a temp dir')
    args = parser.parse_args()
    if (args.snapshot or args.shutdown) and not args.vm:
        parser.error('--snapshot and --shutdown need --vm')

    api = load_api(args.proto_dir, args.build_dir)
    channel = mtls_channel(args.target, args.ca, args.cert, args.key)
    access = api.access_pb2_grpc.AccessServiceStub(channel)
    vms = api.vm_pb2_grpc.VmServiceStub(channel)
    try:
        me = access.WhoAmI(api.access_pb2.WhoAmIRequest(), timeout=DEADLINE_SECONDS)
        print(f'whoami: {me.principal_id} auth={me.auth_method} roles={",".join(me.roles) or "-"}')

        if args.burst:
            for _ in range(args.burst):
                access.WhoAmI(api.access_pb2.WhoAmIRequest(), timeout=DEADLINE_SECONDS)
            print(f'burst: {args.burst} WhoAmI calls answered')

        listed = vms.ListVms(api.vm_pb2.ListVmsRequest(), timeout=DEADLINE_SECONDS)
        for vm in listed.vms:
            print(f'vm: {vm.name} {api.vm_pb2.VmState.Name(vm.state)}')

        if args.snapshot:
            # One request_id per intended snapshot: a retry after a lost reply (UNAVAILABLE,
            # a deadline) sends the same one and gets the first reply, not a second snapshot.
            request = api.vm_pb2.CreateVmSnapshotRequest(vm_name=args.vm, snapshot_name=args.snapshot, request_id=str(uuid.uuid4()))
            created = vms.CreateVmSnapshot(request, timeout=DEADLINE_SECONDS)
            print(f'snapshot: {created.snapshot.vm_name}/{created.snapshot.name} request_id={request.request_id}')
            again = vms.CreateVmSnapshot(request, timeout=DEADLINE_SECONDS)
            same = 'same reply' if again == created else 'a DIFFERENT reply'
            print(f'snapshot retried with the same request_id: {again.snapshot.vm_name}/{again.snapshot.name} ({same})')

        if args.shutdown:
            reply = vms.ShutdownVm(api.vm_pb2.ShutdownVmRequest(vm_name=args.vm, wait=True, force_after_timeout=True, request_id=str(uuid.uuid4())), timeout=DEADLINE_SECONDS)
            operation = wait_for_operation(api, channel, reply.operation)
            state = api.operation_pb2.OperationState.Name(operation.state)
            print(f'operation {operation.id} done: {state}')
            if operation.state != api.operation_pb2.OPERATION_STATE_SUCCEEDED:
                print(f'error: operation {state}: {operation.error.message}', file=sys.stderr)
                return 1
    except grpc.RpcError as error:
        report(api, error)
        return 1
    finally:
        channel.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
