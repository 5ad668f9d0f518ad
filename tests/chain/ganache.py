"""A real local EVM chain for the tests: ganache 7.9.2 (node_modules/, from package.json) on a free
loopback port, and TestUSDT, an ERC-20 of our own with 6 decimals, compiled with solc-js.

Transactions are sent with `eth_sendTransaction` from ganache's unlocked accounts, so no test
signs anything; calls are ABI-encoded here by hand (selectors by keccak, 32-byte words)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from Crypto.Hash import keccak

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
GANACHE_CLI = ROOT / "node_modules" / "ganache" / "dist" / "node" / "cli.js"
SOLC_PACKAGE = ROOT / "node_modules" / "solc" / "package.json"
TOKEN_SOURCE = HERE / "TestUSDT.sol"
COMPILER = HERE / "compile.js"

# The well-known development mnemonic: accounts[0] is 0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266.
MNEMONIC = "test test test test test test test test test test test junk"
CHAIN_ID = 1337
START_TIMEOUT = 30.0
RPC_TIMEOUT = 30.0


def keccak256(data: bytes) -> bytes:
    return keccak.new(digest_bits=256, data=data).digest()


TRANSFER_TOPIC = "0x" + keccak256(b"Transfer(address,address,uint256)").hex()


class RpcError(Exception):
    """A JSON-RPC error answer: its code, message and data as ganache sent them."""

    def __init__(self, method: str, error: dict[str, Any]) -> None:
        super().__init__(f"{method}: {error.get('message')} (code {error.get('code')})")
        self.code = error.get("code")
        self.message = error.get("message")
        self.data = error.get("data")


class TxFailed(AssertionError):
    """A mined transaction whose receipt says it reverted."""


@dataclass(frozen=True)
class Tx:
    """A sent transaction and the block it landed in (None while it waits in the pool)."""

    hash: str
    block_number: int | None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Nothing listens there: a new listener could bind it (SO_REUSEADDR ignores TIME_WAIT leftovers)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class Chain:
    """One ganache process: instamine (each transaction mined in its own block as it is sent), chain id
    1337, ten unlocked accounts from MNEMONIC with 1000 ETH each. Stopped by `stop()` or the `with` block."""

    def __init__(self, log_path: Path | None = None, accounts: int = 10) -> None:
        self.total_accounts = accounts
        self._own_log = log_path is None
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="ganache-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.accounts: list[str] = []
        self._ids = itertools.count(1)
        # No proxy from the environment for loopback calls.
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Chain:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = START_TIMEOUT) -> Chain:
        """Starts ganache on a free port and returns once `eth_chainId` answers. The port is picked
        before ganache binds it (ganache refuses port 0), so a port taken in between is retried."""
        for _ in range(3):
            self.port = free_port()
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    ["node", str(GANACHE_CLI),
                     "--server.host", "127.0.0.1", "--server.port", str(self.port),
                     "--chain.chainId", str(CHAIN_ID),
                     "--wallet.mnemonic", MNEMONIC, "--wallet.totalAccounts", str(self.total_accounts),
                     "--miner.blockTime", "0", "--miner.instamine", "eager",
                     "--chain.vmErrorsOnRPCResponse", "true",  # a reverting eth_sendTransaction is an RPC error
                     "--logging.quiet"],
                    cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                )
            if self._wait_ready(timeout):
                break
            if "EADDRINUSE" not in self.log():
                raise RuntimeError(f"ganache did not start:\n{self.log()}")
        else:
            raise RuntimeError(f"ganache found no free port:\n{self.log()}")
        self.accounts = self.rpc("eth_accounts")
        return self

    def _wait_ready(self, timeout: float) -> bool:
        """True once eth_chainId answers 1337; False if ganache exited first; an error at the deadline."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            try:
                chain_id = int(self.rpc("eth_chainId", timeout=1.0), 16)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    log = self.log()
                    self.stop()
                    raise TimeoutError(f"ganache did not answer within {timeout}s:\n{log}") from None
                time.sleep(0.02)
                continue
            if chain_id != CHAIN_ID:
                self.stop()
                raise RuntimeError(f"ganache answered chain id {chain_id}, not {CHAIN_ID}")
            return True
        return False

    def stop(self) -> None:
        """Terminates ganache (kills it if it lingers) and waits until its port is free."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        deadline = time.monotonic() + 5
        while not port_is_free(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {self.port} still taken after ganache stopped")
            time.sleep(0.02)
        if self._own_log:
            self.log_path.unlink(missing_ok=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- JSON-RPC ---------------------------------------------------------------------------------

    def rpc(self, method: str, params: Sequence[Any] = (), timeout: float = RPC_TIMEOUT) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)})
        request = urllib.request.Request(self.url, body.encode(), {"Content-Type": "application/json"})
        with self._http.open(request, timeout=timeout) as response:
            answer = json.loads(response.read())
        if "error" in answer:
            raise RpcError(method, answer["error"])
        return answer["result"]

    def block_number(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    def block_hash(self, number: int) -> str:
        block = self.rpc("eth_getBlockByNumber", [hex(number), False])
        if block is None:
            raise LookupError(f"no block {number}")
        return str(block["hash"])

    def mine(self, blocks: int = 1) -> int:
        """Mines `blocks` empty-or-pending blocks at once; returns the new head's number."""
        self.rpc("evm_mine", [{"blocks": blocks}])
        return self.block_number()

    def snapshot(self) -> str:
        return str(self.rpc("evm_snapshot"))

    def revert(self, snapshot_id: str) -> None:
        """Back to the snapshot: later blocks, transactions and logs are gone (ganache sends no
        `removed: true` logs; they simply stop being returned). A snapshot can be reverted once."""
        if self.rpc("evm_revert", [snapshot_id]) is not True:
            raise RuntimeError(f"evm_revert({snapshot_id}) failed")

    def set_automine(self, on: bool) -> None:
        """Instamine on or off. ganache 7.9.2 has no `evm_setAutomine` (that is Hardhat's); miner_stop
        leaves sent transactions in the pool, and miner_start always mines one block at once: the pool's
        transactions, or an empty block if there are none."""
        self.rpc("miner_start" if on else "miner_stop")

    @contextmanager
    def one_block(self) -> Iterator[None]:
        """Transactions sent inside land together in exactly one new block, mined on exit (also when
        the body failed); instamine is back on afterwards."""
        head = self.block_number()
        self.set_automine(False)
        try:
            yield
        finally:
            self.set_automine(True)  # mines the pool as one block (evm_mine first would add an empty one)
        if self.block_number() != head + 1:
            raise RuntimeError(f"one_block mined {self.block_number() - head} blocks, not 1")

    def get_logs(self, log_filter: dict[str, Any]) -> list[dict[str, Any]]:
        return list(self.rpc("eth_getLogs", [log_filter]))

    # -- transactions -----------------------------------------------------------------------------

    def send(self, sender: str, to: str | None, data: bytes, gas: int = 200_000) -> Tx:
        """eth_sendTransaction from an unlocked account; with automine on, the transaction is mined (and
        checked) before this returns, else its Tx has no block yet (see landed())."""
        tx: dict[str, Any] = {"from": sender, "data": "0x" + data.hex(), "gas": hex(gas)}
        if to is not None:
            tx["to"] = to
        tx_hash = str(self.rpc("eth_sendTransaction", [tx]))
        receipt = self.receipt(tx_hash)
        return Tx(tx_hash, None) if receipt is None else Tx(tx_hash, _mined_block(receipt))

    def receipt(self, tx_hash: str) -> dict[str, Any] | None:
        receipt: dict[str, Any] | None = self.rpc("eth_getTransactionReceipt", [tx_hash])
        return receipt

    def landed(self, tx: Tx) -> Tx:
        """The same transaction with the block it landed in, once it is mined."""
        receipt = self.receipt(tx.hash)
        if receipt is None:
            raise LookupError(f"transaction {tx.hash} is not mined")
        return Tx(tx.hash, _mined_block(receipt))


def _mined_block(receipt: dict[str, Any]) -> int:
    if receipt["status"] != "0x1":
        raise TxFailed(f"transaction {receipt['transactionHash']} reverted")
    return int(receipt["blockNumber"], 16)


# -- ABI encoding, by hand: enough for the token's calls ------------------------------------------

def selector(signature: str) -> bytes:
    """The 4-byte function selector of e.g. `transfer(address,uint256)`."""
    return keccak256(signature.encode())[:4]


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def encode_args(types: Sequence[str], values: Sequence[Any]) -> bytes:
    """ABI encoding of static uintN, bool and address values, and dynamic string values."""
    head: list[bytes] = []
    tail = b""
    for kind, value in zip(types, values, strict=True):
        if kind == "address":
            head.append(bytes(12) + bytes.fromhex(value.removeprefix("0x")))
        elif kind.startswith("uint") or kind == "bool":
            head.append(_word(int(value)))
        elif kind == "string":
            raw = value.encode()
            head.append(_word(32 * len(types) + len(tail)))
            tail += _word(len(raw)) + raw + bytes(-len(raw) % 32)
        else:
            raise NotImplementedError(f"ABI type {kind}")
    return b"".join(head) + tail


def encode_call(signature: str, *args: Any) -> bytes:
    types = [t for t in signature[signature.index("(") + 1:-1].split(",") if t]
    return selector(signature) + encode_args(types, args)


def address_topic(address: str) -> str:
    """An indexed address as a log topic: 32 bytes, lower-case hex."""
    return "0x" + address.lower().removeprefix("0x").rjust(64, "0")


def decode_transfer(log: dict[str, Any]) -> tuple[str, str, int]:
    """A Transfer log's (from, to, value); addresses in lower case."""
    topics = log["topics"]
    if topics[0] != TRANSFER_TOPIC:
        raise ValueError("not a Transfer log")
    return "0x" + topics[1][-40:], "0x" + topics[2][-40:], int(log["data"], 16)


# -- the token ------------------------------------------------------------------------------------

@cache
def compile_token() -> dict[str, Any]:
    """TestUSDT's ABI and creation bytecode. Cached in the temp dir under a hash of the source, the
    compile script and the solc version, so only the first run after a change pays for solc-js (~3 s)."""
    key = hashlib.sha256(TOKEN_SOURCE.read_bytes() + COMPILER.read_bytes() + SOLC_PACKAGE.read_bytes()).hexdigest()
    cached = Path(tempfile.gettempdir()) / "tokentoll-solc" / f"TestUSDT-{key[:24]}.json"
    compiled: dict[str, Any]
    if cached.exists():
        compiled = json.loads(cached.read_text())
        return compiled
    run = subprocess.run(["node", str(COMPILER), str(TOKEN_SOURCE), "TestUSDT"], cwd=ROOT,
                         capture_output=True, timeout=120)
    if run.returncode != 0:
        raise RuntimeError(f"solc-js failed: {run.stderr.decode(errors='replace')}")
    compiled = json.loads(run.stdout)
    cached.parent.mkdir(exist_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}.tmp")
    partial.write_bytes(run.stdout)
    os.replace(partial, cached)  # whole or absent, also with two test runs at once
    return compiled


@dataclass(frozen=True)
class Token:
    """A deployed TestUSDT. Amounts are in base units (10**decimals per token)."""

    chain: Chain
    address: str
    deployer: str
    deploy_tx: Tx

    def mint(self, to: str, amount: int) -> Tx:
        return self.chain.send(self.deployer, self.address, encode_call("mint(address,uint256)", to, amount))

    def transfer(self, frm: str, to: str, amount: int) -> Tx:
        return self.chain.send(frm, self.address, encode_call("transfer(address,uint256)", to, amount))

    def call(self, signature: str, *args: Any) -> bytes:
        """eth_call at the latest block; the raw return data."""
        data = "0x" + encode_call(signature, *args).hex()
        return bytes.fromhex(self.chain.rpc("eth_call", [{"to": self.address, "data": data}, "latest"])[2:])

    def read_uint(self, signature: str, *args: Any) -> int:
        return int.from_bytes(self.call(signature, *args)[:32], "big")

    def read_string(self, signature: str) -> str:
        raw = self.call(signature)
        offset = int.from_bytes(raw[:32], "big")
        length = int.from_bytes(raw[offset:offset + 32], "big")
        return raw[offset + 32:offset + 32 + length].decode()

    def balance_of(self, address: str) -> int:
        return self.read_uint("balanceOf(address)", address)

    def decimals(self) -> int:
        return self.read_uint("decimals()")


def deploy_token(chain: Chain, decimals: int = 6, name: str = "Tether USD (test)", symbol: str = "USDT",
                 deployer: str | None = None) -> Token:
    """Deploys a fresh TestUSDT from `deployer` (accounts[0] by default), the only account that may mint."""
    compiled = compile_token()
    sender = deployer or chain.accounts[0]
    code = bytes.fromhex(compiled["bytecode"][2:]) + encode_args(["string", "string", "uint8"],
                                                                   [name, symbol, decimals])
    tx = chain.send(sender, None, code, gas=3_000_000)
    receipt = chain.receipt(tx.hash)
    if tx.block_number is None or receipt is None:
        raise RuntimeError("deploy_token needs automine on (not inside Chain.one_block())")
    return Token(chain, receipt["contractAddress"], sender, tx)
