"""Sans-I/O RFC 3261 §17 non-INVITE transactions with an injected clock."""

from presenced.transaction.layer import (
    T1, T2, T4, Address, ClientTransaction, ServerTransaction, TransactionLayer, new_branch, server_key,
)
from presenced.transaction.timers import TimerHandle, TimerHeap

__all__ = [
    "T1", "T2", "T4", "Address", "ClientTransaction", "ServerTransaction", "TimerHandle", "TimerHeap",
    "TransactionLayer", "new_branch", "server_key",
]
