"""A client that knows nothing of our Rust code: it learns chat.v1 from server
reflection (v1alpha, like grpcurl 1.8.6), builds message classes at runtime and calls
the service. Prints a JSON report for the Rust test to check."""

import json
import sys
import uuid

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

SERVICE = "chat.v1.ConversationService"


def load_pool(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)
    pool = descriptor_pool.DescriptorPool()
    seen = set()
    pending = []
    for response in stub.ServerReflectionInfo(iter([request])):
        for raw in response.file_descriptor_response.file_descriptor_proto:
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
            pending.append(fd)
    # Add dependencies before dependants.
    while pending:
        progressed = False
        for fd in list(pending):
            if all(dep in seen or dep.startswith("google/protobuf/") for dep in fd.dependency):
                for dep in fd.dependency:
                    if dep.startswith("google/protobuf/") and dep not in seen:
                        from google.protobuf import timestamp_pb2, duration_pb2  # noqa: F401
                        builtin = descriptor_pool.Default().FindFileByName(dep)
                        proto = descriptor_pb2.FileDescriptorProto()
                        builtin.CopyToProto(proto)
                        pool.Add(proto)
                        seen.add(dep)
                pool.Add(fd)
                seen.add(fd.name)
                pending.remove(fd)
                progressed = True
        if not progressed:
            raise RuntimeError("unresolvable descriptors")
    return pool


def main():
    channel = grpc.insecure_channel(sys.argv[1])
    pool = load_pool(channel)
    service = pool.FindServiceByName(SERVICE)

    def call(method_name, **fields):
        method = service.methods_by_name[method_name]
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        rpc = channel.unary_unary(
            f"/{SERVICE}/{method_name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_cls.FromString,
        )
        return rpc(request_cls(**fields), timeout=10)

    provider = {"role": 1, "id": "py-provider"}
    created = call("CreateConversation", request_id=str(uuid.uuid4()), provider_id="py-provider")
    conversation_id = created.conversation.conversation_id
    seqs = []
    for body in ("hello from python", "second"):
        sent = call("SendMessage", conversation_id=conversation_id, sender=provider, body=body)
        seqs.append(sent.message.seq)
    try:
        call("SendMessage", conversation_id="not-a-uuid", sender=provider, body="x")
        bad = "OK"
    except grpc.RpcError as error:
        bad = error.code().name
    try:
        call("GetConversation", conversation_id=str(uuid.uuid4()))
        missing = "OK"
    except grpc.RpcError as error:
        missing = error.code().name
    listed = call("ListConversations", participant=provider)
    print(json.dumps({
        "seqs": seqs,
        "bad_argument_code": bad,
        "not_found_code": missing,
        "listed": len(listed.conversations),
    }))


if __name__ == "__main__":
    main()
