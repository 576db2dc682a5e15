#!/usr/bin/python3
"""An independent gRPC client for xdpctld: gRPC's C core (Debian's python3-grpcio)
and protobuf (python3-protobuf), driven by server reflection only.

No generated stubs and no .proto files of xdpctl: the reflection protocol's own
two messages are declared below as a FileDescriptorProto built in code; every
other type (xdpctl.v1.*, grpc.health.v1.*, well-known types) is learnt from the
daemon's reflection answers into a fresh DescriptorPool. So what this client
proves is what any reflection client (grpcurl, Postman, Evans) sees.

Usage:
  reflection_client.py TARGET STEPS_JSON [--ca F --cert F --key F --authority NAME]

TARGET is "host:port", "[::1]:port", "ipv4:127.0.0.1:port" or "unix:/path".
STEPS_JSON is a JSON list of steps, each an object with "op":
  {"op": "list", "version": "v1"|"v1alpha"}          list_services
  {"op": "describe_all", "version": ...}            file_containing_symbol for every listed service,
                                                     then every method's input and output resolved
  {"op": "unary", "method": "pkg.Svc/Method", "request": {...}, "timeout": 10}
  {"op": "stream", "method": ..., "request": {...}, "count": N, "timeout": 10}
  {"op": "pages", "method": ..., "request": {...}, "tally": {"rules": "name"}}
                                                     a paged List/Get: calls again with pageToken =
                                                     the last nextPageToken until it is empty
  {"op": "health", "service": ""}                    grpc.health.v1.Health/Check
  {"op": "health_watch", "service": "", "count": N, "timeout": 10}
A request is proto3 JSON (json_format), as grpcurl takes it. The channel has gRPC's
defaults (a 4 MiB receive limit). With "tally" (a map from a repeated field's path, e.g.
"counters.backends", to a field of its elements, e.g. "rule"), a pages or stream step
does not return the messages but, per page or message, its encoded size and how many
elements each path held ("parts"), and per path how many elements had each value of
the field ("tally"; for a stream, per whole sample: the parts up to one whose
"continued" is false; "count" then counts whole samples).

Output: one JSON line per step on stdout, {"step": i, "op": ..., "ok": true, ...}
or {"ok": false, "code": "PERMISSION_DENIED", "details": "..."}; a stream step
gives "messages" (JSON, int64 as strings: exact) and "at" (seconds since the
call started, per message). A readable transcript goes to stderr. Exit 0 when
every step ran (failed calls are results, not errors); 2 on bad usage.
"""

import json
import sys
import time

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

F = descriptor_pb2.FieldDescriptorProto


def _message_class(pool, full_name):
    desc = pool.FindMessageTypeByName(full_name)
    if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4.22
        return message_factory.GetMessageClass(desc)
    return message_factory.MessageFactory(pool).GetPrototype(desc)


def _reflection_file(package):
    """grpc.reflection.<package> ServerReflectionRequest/Response (the fields this client uses)."""
    fd = descriptor_pb2.FileDescriptorProto(name=f"xdpctl-test/{package}/reflection.proto", package=package,
                                            syntax="proto3")

    def message(name, fields, oneof=None):
        m = fd.message_type.add(name=name)
        if oneof:
            m.oneof_decl.add(name=oneof)
        for fname, number, ftype, label, type_name, in_oneof in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = f".{package}.{type_name}"
            if in_oneof:
                f.oneof_index = 0
        return m

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message("ServerReflectionRequest", [
        ("host", 1, F.TYPE_STRING, opt, None, False),
        ("file_by_filename", 3, F.TYPE_STRING, opt, None, True),
        ("file_containing_symbol", 4, F.TYPE_STRING, opt, None, True),
        ("list_services", 7, F.TYPE_STRING, opt, None, True),
    ], oneof="message_request")
    message("FileDescriptorResponse", [("file_descriptor_proto", 1, F.TYPE_BYTES, rep, None, False)])
    message("ServiceResponse", [("name", 1, F.TYPE_STRING, opt, None, False)])
    message("ListServiceResponse", [("service", 1, F.TYPE_MESSAGE, rep, "ServiceResponse", False)])
    message("ErrorResponse", [
        ("error_code", 1, F.TYPE_INT32, opt, None, False),
        ("error_message", 2, F.TYPE_STRING, opt, None, False),
    ])
    message("ServerReflectionResponse", [
        ("valid_host", 1, F.TYPE_STRING, opt, None, False),
        ("original_request", 2, F.TYPE_MESSAGE, opt, "ServerReflectionRequest", False),
        ("file_descriptor_response", 4, F.TYPE_MESSAGE, opt, "FileDescriptorResponse", True),
        ("list_services_response", 6, F.TYPE_MESSAGE, opt, "ListServiceResponse", True),
        ("error_response", 7, F.TYPE_MESSAGE, opt, "ErrorResponse", True),
    ], oneof="message_response")
    return fd


CODES = {c.value[0]: c.name for c in grpc.StatusCode}


class ReflectionError(Exception):
    """An error_response in a reflection answer (e.g. NOT_FOUND "symbol not found")."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code_name = CODES.get(code, str(code))


class ReflectionClient:
    def __init__(self, channel):
        self.channel = channel
        self.pool = descriptor_pool.DescriptorPool()  # only what the daemon describes
        self.proto_pool = descriptor_pool.DescriptorPool()  # the reflection protocol itself
        self.rpc = {}
        for version in ("v1", "v1alpha"):
            package = f"grpc.reflection.{version}"
            self.proto_pool.Add(_reflection_file(package))
            req = _message_class(self.proto_pool, f"{package}.ServerReflectionRequest")
            res = _message_class(self.proto_pool, f"{package}.ServerReflectionResponse")
            call = channel.stream_stream(f"/{package}.ServerReflection/ServerReflectionInfo",
                                         request_serializer=lambda m: m.SerializeToString(),
                                         response_deserializer=res.FromString)
            self.rpc[version] = (req, call)
        self.files = {}

    def ask(self, version, timeout=10, **request):
        req, call = self.rpc[version]
        answers = list(call(iter([req(**request)]), timeout=timeout))
        if len(answers) != 1:
            raise RuntimeError(f"{len(answers)} reflection answers to one request")
        answer = answers[0]
        kind = answer.WhichOneof("message_response")
        if kind == "error_response":
            raise ReflectionError(answer.error_response.error_code, answer.error_response.error_message)
        return kind, answer

    def list_services(self, version="v1"):
        _, answer = self.ask(version, list_services="")
        return [s.name for s in answer.list_services_response.service]

    def _add_files(self, blobs):
        protos = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in blobs]
        by_name = {p.name: p for p in protos}

        def add(p):
            if p.name in self.files:
                return
            for dep in p.dependency:
                if dep not in self.files:
                    if dep not in by_name:
                        raise LookupError(f"{p.name} imports {dep}, not in the answer")
                    add(by_name[dep])
            self.pool.Add(p)
            self.files[p.name] = p

        for p in protos:
            add(p)

    def describe(self, symbol, version="v1"):
        _, answer = self.ask(version, file_containing_symbol=symbol)
        self._add_files(answer.file_descriptor_response.file_descriptor_proto)
        return self.pool.FindServiceByName(symbol)

    def method(self, path):
        service, name = path.split("/")
        desc = self.describe(service) if service not in self._services() else self.pool.FindServiceByName(service)
        m = desc.methods_by_name[name]
        return m, _message_class(self.pool, m.input_type.full_name), _message_class(self.pool, m.output_type.full_name)

    def _services(self):
        out = set()
        for p in self.files.values():
            out.update(f"{p.package}.{s.name}" if p.package else s.name for s in p.service)
        return out

    def _callable(self, path, kind):
        m, req, res = self.method(path)
        make = getattr(self.channel, kind)
        return m, req, make(f"/{path}", request_serializer=lambda x: x.SerializeToString(),
                            response_deserializer=res.FromString)


def to_json(msg):
    return json_format.MessageToDict(msg, preserving_proto_field_name=False)


def _path(msg, path):
    for name in path.split(".")[:-1]:
        msg = getattr(msg, name)
    return getattr(msg, path.split(".")[-1])


def _part(msg, tally, into):
    """Size and element counts of one message; its elements tallied into `into`."""
    counts = {}
    for path, key in tally.items():
        items = _path(msg, path)
        counts[path] = len(items)
        seen = into.setdefault(path, {})
        for item in items:
            k = str(getattr(item, key))
            seen[k] = seen.get(k, 0) + 1
    return {"bytes": msg.ByteSize(), "counts": counts}


def error_result(e):
    if isinstance(e, ReflectionError):
        return {"ok": False, "code": e.code_name, "details": str(e), "reflection": True}
    if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
        return {"ok": False, "code": e.code().name, "details": e.details()}
    return {"ok": False, "code": "CLIENT", "details": f"{type(e).__name__}: {e}"}


def run_step(client, step, log):
    op = step["op"]
    version = step.get("version", "v1")
    timeout = step.get("timeout", 10)
    if op == "list":
        names = client.list_services(version)
        log(f"list ({version}): {', '.join(names)}")
        return {"ok": True, "services": names}
    if op == "describe_all":
        described = {}
        for name in client.list_services(version):
            desc = client.describe(name, version)
            methods = []
            for m in desc.methods:
                # Both ends must resolve to message classes in the pool the answers built.
                _message_class(client.pool, m.input_type.full_name)
                _message_class(client.pool, m.output_type.full_name)
                stream = ("stream " if m.server_streaming else "")
                methods.append(f"{m.name}({m.input_type.full_name}) returns ({stream}{m.output_type.full_name})")
            described[name] = {"file": desc.file.name, "methods": methods}
            log(f"describe ({version}) {name} [{desc.file.name}]")
            for line in methods:
                log(f"    rpc {line}")
        return {"ok": True, "described": described}
    if op == "unary":
        _, req, call = client._callable(step["method"], "unary_unary")
        request = json_format.ParseDict(step.get("request", {}), req())
        log(f"call {step['method']} {json.dumps(step.get('request', {}))}")
        response = call(request, timeout=timeout)
        out = to_json(response)
        log(f"  -> {json.dumps(out)[:400]}")
        return {"ok": True, "response": out}
    if op == "pages":
        _, req, call = client._callable(step["method"], "unary_unary")
        body = dict(step.get("request", {}))
        tally, parts, token = step.get("tally", {}), [], ""
        seen = {}
        log(f"pages {step['method']} {json.dumps(body)[:200]}")
        while True:
            body["pageToken"] = token
            response = call(json_format.ParseDict(body, req()), timeout=timeout)
            parts.append(_part(response, tally, seen))
            token = response.next_page_token
            log(f"  page {len(parts)}: {parts[-1]['bytes']} bytes {json.dumps(parts[-1]['counts'])}")
            if not token:
                break
        return {"ok": True, "parts": parts, "tally": seen}
    if op == "stream" and "tally" in step:
        _, req, call = client._callable(step["method"], "unary_stream")
        body = step.get("request", {})
        tally, count = step["tally"], step.get("count", 1)
        log(f"stream {step['method']} {json.dumps(body)} (first {count} whole samples)")
        start = time.monotonic()
        parts, samples, seen = [], [], {}
        responses = call(json_format.ParseDict(body, req()), timeout=timeout)
        try:
            for msg in responses:
                part = _part(msg, tally, seen)
                part.update(continued=msg.continued, time=to_json(msg.counters).get("time"),
                            at=round(time.monotonic() - start, 4))
                parts.append(part)
                log(f"  +{part['at']:.3f}s {part['bytes']} bytes {json.dumps(part['counts'])}"
                    f"{' (continued)' if msg.continued else ''}")
                if not msg.continued:
                    samples.append(seen)
                    seen = {}
                    if len(samples) >= count:
                        break
        except grpc.RpcError as e:
            r = error_result(e)
            r.update(parts=parts, samples=samples)
            log(f"  ended {r['code']}: {r['details']}")
            return r
        responses.cancel()
        return {"ok": True, "parts": parts, "samples": samples}
    if op in ("stream", "health_watch"):
        method = step.get("method", "grpc.health.v1.Health/Watch")
        body = step.get("request", {"service": step.get("service", "")})
        _, req, call = client._callable(method, "unary_stream")
        request = json_format.ParseDict(body, req())
        count = step.get("count", 1)
        log(f"stream {method} {json.dumps(body)} (first {count})")
        start = time.monotonic()
        messages, at = [], []
        responses = call(request, timeout=timeout)
        try:
            for msg in responses:
                at.append(round(time.monotonic() - start, 4))
                messages.append(to_json(msg))
                log(f"  +{at[-1]:.3f}s {json.dumps(messages[-1])[:300]}")
                if len(messages) >= count:
                    break
        except grpc.RpcError as e:
            r = error_result(e)
            r.update(messages=messages, at=at, endedAt=round(time.monotonic() - start, 4))
            log(f"  ended {r['code']}: {r['details']} at +{r['endedAt']:.3f}s")
            return r
        responses.cancel()
        return {"ok": True, "messages": messages, "at": at}
    if op == "health":
        _, req, call = client._callable("grpc.health.v1.Health/Check", "unary_unary")
        response = call(req(service=step.get("service", "")), timeout=timeout)
        out = to_json(response)
        log(f"health {json.dumps(step.get('service', ''))}: {out.get('status', 'UNKNOWN')}")
        return {"ok": True, "response": out}
    raise ValueError(f"unknown op {op!r}")


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    target, steps = argv[1], json.loads(argv[2])
    opts = dict(zip(argv[3::2], argv[4::2]))
    read = lambda k: open(opts[k], "rb").read() if k in opts else None
    options = [("grpc.ssl_target_name_override", opts["--authority"])] if "--authority" in opts else []
    if "--ca" in opts:
        creds = grpc.ssl_channel_credentials(read("--ca"), read("--key"), read("--cert"))
        channel = grpc.secure_channel(target, creds, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    log = lambda line: print(line, file=sys.stderr, flush=True)
    log(f"# python3-grpcio {grpc.__version__} -> {target}")
    client = ReflectionClient(channel)
    for i, step in enumerate(steps):
        try:
            result = run_step(client, step, log)
        except Exception as e:  # a failed call is a result
            result = error_result(e)
            log(f"  {step['op']} failed: {result['code']}: {result['details']}")
        result.update(step=i, op=step["op"])
        print(json.dumps(result), flush=True)
    channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
