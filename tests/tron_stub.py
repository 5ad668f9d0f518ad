"""A stub of a TRON node's Ethereum-style JSON-RPC (TronGrid's /jsonrpc): blocks whose hashes begin with their
number (as TRON's do), and TRC-20 Transfer logs with 20-byte hex addresses, the shape the real node answers in."""

from __future__ import annotations

import threading
from typing import Any

import orjson
from aiohttp import web

from billing.recharge.evm import TRANSFER_TOPIC, address_topic
from tests.loopback import LoopbackServer


class TronStub(LoopbackServer):
    name = "TRON JSON-RPC stub"

    def __init__(self) -> None:
        super().__init__()
        self.head = 60_000_000
        self.logs: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.base_url + "/jsonrpc"

    def block_hash(self, number: int) -> str:
        return "0x" + f"{number:016x}" + "ab" * 24  # TRON: the first 8 bytes are the block number

    def mine(self, blocks: int = 1) -> None:
        with self._lock:
            self.head += blocks

    def transfer(self, contract_hex: str, to_hex: str, amount: int) -> str:
        """A TRC-20 Transfer in a new block; returns its transaction hash."""
        with self._lock:
            self.head += 1
            tx = "0x" + f"{len(self.logs) + 1:064x}"
            self.logs.append({
                "address": contract_hex, "blockNumber": hex(self.head), "blockHash": self.block_hash(self.head),
                "transactionHash": tx, "transactionIndex": "0x0", "logIndex": "0x0", "removed": False,
                "topics": [TRANSFER_TOPIC, address_topic("0x" + "11" * 20), address_topic(to_hex)],
                "data": "0x" + f"{amount:064x}"})
            return tx

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/jsonrpc", self._rpc)

    async def _rpc(self, request: web.Request) -> web.Response:
        call = orjson.loads(await request.read())
        method, params = call.get("method"), call.get("params") or []
        with self._lock:
            if method == "eth_blockNumber":
                result: Any = hex(self.head)
            elif method == "eth_chainId":
                result = "0x2b6653dc"
            elif method == "eth_getBlockByNumber":
                number = int(params[0], 16)
                result = {"number": hex(number), "hash": self.block_hash(number)} if number <= self.head else None
            elif method == "eth_getLogs":
                f = params[0]
                lo, hi = int(f["fromBlock"], 16), int(f["toBlock"], 16)
                wanted = f.get("topics", [None, None, None])[2]
                wanted = set(wanted) if isinstance(wanted, list) else None
                result = [log for log in self.logs if lo <= int(log["blockNumber"], 16) <= hi
                          and log["address"] == f.get("address", log["address"]).lower()
                          and (wanted is None or log["topics"][2] in wanted)]
            else:
                return web.json_response({"jsonrpc": "2.0", "id": call.get("id"),
                                          "error": {"code": -32601, "message": f"the method {method} does not exist"}})
        return web.json_response({"jsonrpc": "2.0", "id": call.get("id"), "result": result})
