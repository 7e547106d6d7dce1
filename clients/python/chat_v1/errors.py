"""ErrorInfo of a failed call: callers branch on its reason, never on message text."""

from typing import Optional

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

#: The ErrorInfo domain of both services.
DOMAIN = "chat.v1"


def error_info(error: grpc.RpcError) -> Optional[error_details_pb2.ErrorInfo]:
    """The ErrorInfo in the call's grpc-status-details-bin trailer, if there is one."""
    status = rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def reason_of(error: grpc.RpcError) -> Optional[str]:
    """The stable UPPER_SNAKE reason (e.g. CONVERSATION_CLOSED), if the error has one."""
    info = error_info(error)
    return info.reason if info is not None else None
