"""The Python client as a newcomer installs it (pip install clients/python), against a
real conversation-service on a fresh database: calls go through, and a refusal's
ErrorInfo reason is decoded."""

import os
import socket
import subprocess
import time
import unittest
import uuid

import grpc

import chat_v1
from chat_v1 import conversation_pb2 as pb
from chat_v1 import conversation_pb2_grpc, errors

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "..")
BINARY = os.environ.get(
    "CONVERSATION_SERVICE_BIN", os.path.join(ROOT, "target", "debug", "conversation-service")
)


def psql(sql):
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qAtc", sql], check=True
    )


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # The prefix scripts/test.sh sweeps when a run was killed before dropping it.
        cls.database = "cs_test_client_py_" + uuid.uuid4().hex
        psql(f'CREATE DATABASE "{cls.database}"')
        port = free_port()
        env = dict(
            os.environ,
            LISTEN_ADDR=f"127.0.0.1:{port}",
            DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{cls.database}",
            RUST_LOG="warn",
        )
        cls.service = subprocess.Popen([BINARY], env=env, stdout=subprocess.DEVNULL)
        cls.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        cls.stub = conversation_pb2_grpc.ConversationServiceStub(cls.channel)
        deadline = time.monotonic() + 30
        while True:
            try:
                grpc.channel_ready_future(cls.channel).result(timeout=1)
                break
            except grpc.FutureTimeoutError:
                if time.monotonic() > deadline:
                    raise

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.service.kill()
        cls.service.wait()
        psql(f'DROP DATABASE IF EXISTS "{cls.database}" WITH (FORCE)')

    def test_a_conversation_takes_a_message(self):
        created = self.stub.CreateConversation(
            pb.CreateConversationRequest(
                request_id=str(uuid.uuid4()), provider_id="prov-py", session_id=str(uuid.uuid4())
            ),
            timeout=10,
        )
        provider = pb.Participant(role=pb.ROLE_PROVIDER, id="prov-py")
        sent = self.stub.SendMessage(
            pb.SendMessageRequest(
                conversation_id=created.conversation.conversation_id,
                sender=provider,
                body="hello",
                client_message_id="py-1",
            ),
            timeout=10,
        )
        self.assertEqual(sent.message.seq, 1)
        self.assertEqual(type(sent).__module__, "chat_v1.conversation_pb2")
        self.assertIn("site-packages", chat_v1.__file__, "the installed package, not the tree")

    def test_a_refusal_carries_its_error_info_reason(self):
        with self.assertRaises(grpc.RpcError) as refused:
            self.stub.SendMessage(
                pb.SendMessageRequest(
                    conversation_id=str(uuid.uuid4()),
                    sender=pb.Participant(role=pb.ROLE_PROVIDER, id="prov-py"),
                    body="hi",
                ),
                timeout=10,
            )
        self.assertEqual(refused.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertEqual(errors.reason_of(refused.exception), "CONVERSATION_NOT_FOUND")
        self.assertEqual(errors.error_info(refused.exception).domain, errors.DOMAIN)


if __name__ == "__main__":
    unittest.main()
